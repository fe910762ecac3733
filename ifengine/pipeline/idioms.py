"""diffusers' pipeline housekeeping calls (``.to()``, CPU offload, the progress bar) on a cascade.

ifengine's own spelling is a load-time choice: ``from_pretrained(device=..., vram_budget=...)`` places
the weights once and the memory planner decides what stays on the GPU. These functions give the
diffusers calls that meaning on an already loaded cascade:

* ``to(device)`` moves the torch modules (U-Nets, VAE, text encoders, safety checker) and, on a GPU,
  attaches the runtime as ``from_pretrained(device="cuda")`` would;
* ``enable_model_cpu_offload`` / ``enable_sequential_cpu_offload`` hand placement to the memory planner
  with a budget (default: the GPU's free memory now): it offloads, or streams, only what the budget
  cannot hold, instead of diffusers' hooks that move every model in and out on every call. Both need a
  GPU; on a machine without one the weights already live in host memory and the calls only log so.
"""

from __future__ import annotations

import logging

import torch

from ..stage.options import RequestError
from . import limits

log = logging.getLogger(__name__)


def modules(cascade) -> list[torch.nn.Module]:
    """Every torch module of the cascade's loaded parts (exported graphs and engines have none here)."""
    found = [getattr(cascade.text, "model", None)]
    for stage in (cascade.stage1, cascade.stage2, cascade.stage3):
        found += [getattr(stage, "unet", None), getattr(stage, "vae", None)]
        found.append(getattr(getattr(stage, "text", None), "model", None))
    found.append(getattr(cascade.safety, "heads", None))
    return [m for m in found if isinstance(m, torch.nn.Module)]


def move(cascade, device=None, dtype=None):
    """``pipe.to(device)`` / ``pipe.to(dtype)`` / ``pipe.to(device, dtype)``, as diffusers reads them."""
    if isinstance(device, torch.dtype):
        device, dtype = None, device
    if dtype is not None and dtype != cascade.dtype:
        raise RequestError(
            f"to({dtype}): this cascade was loaded in {cascade.dtype}; load it again with torch_dtype={dtype} "
            "(precision is fixed at load: exported graphs and engines are built for it)"
        )
    if device is None:
        return cascade
    target = limits.check_device(device)
    if target == torch.device(cascade.device) or (target.type == cascade.device.type and target.index is None):
        return cascade
    if cascade.runtime is not None:
        raise RequestError(
            f"to({str(target)!r}): the GPU runtime has placed this cascade's weights; load it again with "
            f"from_pretrained(..., device={str(target)!r})"
        )
    for module in modules(cascade):
        module.to(target)
    for encoder in cascade.encoders():
        encoder.clear_cache()  # cached embeddings live on the old device
    cascade.device = target
    if target.type == "cuda":
        cascade.use_runtime()  # as from_pretrained(device="cuda"): CUDA graphs over static buffers
    return cascade


def offload(cascade, vram_budget=None, device=None, sequential: bool = False):
    """diffusers' model (or sequential) CPU offload as a memory plan; see the module docstring."""
    name = "enable_sequential_cpu_offload" if sequential else "enable_model_cpu_offload"
    if not torch.cuda.is_available():
        log.info("%s: no GPU on this machine, the weights stay in host memory", name)
        return cascade
    if cascade.runtime is not None:
        raise RequestError(f"{name}: this cascade already has its runtime; pass vram_budget= to from_pretrained")
    target = limits.check_device(device or "cuda")
    cascade.device = target
    budget = vram_budget if vram_budget is not None else torch.cuda.mem_get_info(target)[0]
    # one planner for both: it streams a U-Net's blocks (diffusers' sequential offload) only where the
    # budget cannot hold the whole model (diffusers' model offload)
    cascade.use_runtime(vram_budget=budget)
    return cascade
