"""Section ``context``: the device memory a process holds beyond its allocator (CUDA context, cuBLAS).

The parent of the check holds no CUDA context and this child runs alone, so device-wide used memory
minus what was used before this process started is this process's. It is the figure the planner's
``PlanOptions.context_reserve_bytes`` guesses.
"""

from __future__ import annotations

import torch

from ...memory.planner import PlanOptions
from .common import dtype_of, skip
from .config import CheckConfig


def run(cfg: CheckConfig, save) -> dict:
    reserve = PlanOptions().context_reserve_bytes
    x = torch.randn(256, 256, device=cfg.device, dtype=dtype_of(cfg))
    (x @ x).sum()  # loads the matmul library (cuBLAS and its workspace on a GPU) as a real call would
    if cfg.device != "cuda":
        return {"planner_reserve": reserve, **skip("the CUDA context exists only on a CUDA device")}
    return _measure(x, reserve)


def _measure(x: torch.Tensor, reserve: int) -> dict:  # GPU only
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    used, allocator = total - free, torch.cuda.memory_reserved()
    return {
        "device_used": used,
        "allocator_reserved": allocator,
        "context_and_libraries": used - allocator,
        "planner_reserve": reserve,
        "reserve_covers_it": used - allocator <= reserve,
        "note": "device-wide used memory: assumes no other process holds this GPU",
    }
