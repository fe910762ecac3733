"""The precision rule for T5 v1.1, stated once: the loader and the memory planner both ask it.

T5 v1.1 overflows float16 (its FFN activations pass 65504, giving inf/NaN embeddings), so a cascade asked
to run in float16 runs T5 in bfloat16 where the device computes bfloat16, else in float32. Other dtypes
are kept as asked. The device's capability is a parameter so that the rule (and each caller's use of
it) can be checked for GPU choices on a machine without one.
"""

from __future__ import annotations

import torch


def t5_dtype(dtype: torch.dtype, bf16: bool) -> torch.dtype:
    """The dtype T5 runs in for a cascade in ``dtype`` on a device that has bfloat16 (``bf16``) or not."""
    if dtype != torch.float16:
        return dtype
    return torch.bfloat16 if bf16 else torch.float32


def device_has_bf16(device: torch.device | str) -> bool:
    """Whether T5 may take bfloat16 on ``device``: CUDA GPUs that support it. CPUs take float32 (their
    bfloat16 matmuls are emulated on most hosts, and float32 is the reference precision)."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.is_bf16_supported()
