"""Find what would break CUDA-graph capture, on any device (the CPU included).

A captured step must not read a tensor back to the host (``.item()``, ``bool(t)``, data-dependent
shapes) and must not make a tensor out of host data (``torch.tensor(...)`` on the device is a
host-to-device copy from pageable memory, which capture forbids). Both show up as specific aten ops,
so running the step once under ``CaptureAudit`` on tiny CPU models proves the step is capturable in
the sense that matters, without a GPU.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that synchronise with the host or whose output shape depends on tensor values.
HOST_SYNC_OPS = (
    "aten._local_scalar_dense",
    "aten.nonzero",
    "aten.masked_select",
    "aten.unique",
    "aten._unique2",
    "aten.is_nonzero",
    "aten.equal",
    "aten.repeat_interleave.Tensor",
    "aten.item",
)
# Ops that materialise host data as a tensor (torch.tensor(...), torch.as_tensor(list)).
HOST_DATA_OPS = ("aten.lift_fresh", "aten.lift_fresh_copy", "aten.lift")


class CaptureAudit(TorchDispatchMode):
    """Records every op that a CUDA graph capture would reject; ``problems`` lists them in order."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        name = _op_name(func)
        if name.startswith(HOST_SYNC_OPS):
            self.problems.append(f"{name}: reads a tensor back to the host")
        elif name.startswith(HOST_DATA_OPS):
            self.problems.append(f"{name}: builds a tensor from host data")
        elif name.startswith("aten.index.Tensor") and _has_bool_index(args):
            self.problems.append(f"{name}: boolean-mask indexing has a data-dependent shape")
        return func(*args, **(kwargs or {}))


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(getattr(i, "dtype", None) == torch.bool for i in indices)


def _op_name(func) -> str:
    return f"aten.{func.__name__}" if not str(func).startswith("aten.") else str(func)


def audit(step_fn) -> CaptureAudit:
    """Run ``step_fn()`` once under the audit and return it (check ``.problems``)."""
    with CaptureAudit() as mode:
        step_fn()
    return mode
