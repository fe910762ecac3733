"""Peak activation memory of a forward pass, measured on the meta device (no memory, no GPU).

The function runs for real on meta tensors, so every intermediate the module creates is seen with its
true shape and dtype. A dispatch mode adds each new storage's bytes when an op creates it and takes
them off when the last Python tensor on it dies: the running maximum is the activation peak eager
execution would reach with a perfect allocator. Weights and inputs are excluded (the planner counts
them separately).

Two GPU facts are modelled: ``scaled_dot_product_attention`` runs as a fused kernel (flash / memory-
efficient) that never materialises the (queries x keys) score matrix, so it is replaced by its output
allocation; and the caching allocator, workspaces and fragmentation are NOT modelled here: the planner
adds a margin on top.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


class _LiveBytes(TorchDispatchMode):
    def __init__(self, ignore: set[int]):
        super().__init__()
        self.ignore, self.refs, self.sizes = ignore, {}, {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out

    def _track(self, t: torch.Tensor) -> None:
        key = _key(t)
        if key in self.ignore:
            return
        if key not in self.refs:
            nbytes = t.untyped_storage().nbytes()
            self.refs[key], self.sizes[key] = 0, nbytes
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        self.refs[key] += 1  # views and in-place results share the storage: one count per Python tensor
        weakref.finalize(t, self._drop, key)

    def _drop(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.current -= self.sizes.pop(key)
            del self.refs[key]


class _FusedAttention(TorchFunctionMode):
    """SDPA as the fused GPU kernels allocate it: the output only (plus a small log-sum-exp)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, v = args[0], args[2]
            return q.new_empty(q.shape[:-1] + v.shape[-1:])
        return func(*args, **kwargs)


def peak_activation_bytes(run: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Peak bytes of the tensors ``run()`` creates, not counting storages of ``exclude`` (weights, inputs)."""
    ignore = {_key(t) for t in exclude}
    with torch.no_grad(), _FusedAttention(), _LiveBytes(ignore) as live:
        out = run()
        del out
    return live.peak


def module_tensors(*modules: torch.nn.Module) -> list[torch.Tensor]:
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]
