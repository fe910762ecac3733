"""Split a module into units that can be streamed through a device slot one at a time.

A unit is a submodule whose weights are loaded by a forward pre-hook just before it runs, so it must
be entered through ``__call__`` and must not have its weights read by anyone else. Modules bigger
than ``max_unit_bytes`` are split into their children; a split module's own direct parameters (say a
positional embedding next to its children) cannot be streamed safely, because the module may read them
after a child has overwritten the slot, so they stay ``fixed`` (loaded with the component's resident
part). Containers (ModuleList and friends) are never called, so they are always split. Leaves are
never split, even when bigger than the limit, and the root is always split.

The same function runs on meta modules (planning) and on loaded ones (placement), so the plan's unit
sizes are exactly what the offloader will stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_MAX_UNIT_BYTES = 128 * 2**20


@dataclass(frozen=True)
class Unit:
    path: str  # qualified module name ("" for the root)
    nbytes: int  # layout bytes (aligned)


@dataclass(frozen=True)
class Partition:
    units: tuple[Unit, ...]  # in registration order (close to execution order for U-Nets and encoders)
    fixed: tuple[str, ...]  # qualified names of tensors that are never streamed
    fixed_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.fixed_bytes + sum(u.nbytes for u in self.units)


LAYOUT_ALIGN = 256  # every tensor starts 256-byte aligned in host/swap/slot layouts (as allocator blocks do)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes ``t`` takes in a packed weight layout (its size rounded up to the alignment)."""
    raw = t.numel() * t.element_size()
    return (raw + LAYOUT_ALIGN - 1) // LAYOUT_ALIGN * LAYOUT_ALIGN


def _direct(module: nn.Module):
    yield from module.named_parameters(recurse=False)
    yield from module.named_buffers(recurse=False)


def _all(module: nn.Module):
    yield from module.named_parameters(remove_duplicate=False)
    yield from module.named_buffers(remove_duplicate=False)


def _callable(module: nn.Module) -> bool:
    """Containers (ModuleList, ModuleDict, ParameterList) are never called, so their hooks never fire."""
    return type(module).forward is not nn.Module.forward


def shared_tensor_ids(module: nn.Module) -> set[int]:
    """Tensors registered in more than one submodule (tied weights, e.g. T5's input embedding).

    They are never streamed: the module that owns the copy in the slot may not be the one that runs.
    """
    owners: dict[int, set[int]] = {}
    for sub in module.modules():
        for t in (*sub._parameters.values(), *sub._buffers.values()):
            if t is not None:
                owners.setdefault(id(t), set()).add(id(sub))
    return {key for key, subs in owners.items() if len(subs) > 1}


def partition(module: nn.Module, max_unit_bytes: int = DEFAULT_MAX_UNIT_BYTES) -> Partition:
    """Units and fixed tensors of ``module``; every tensor is counted once (tied weights included)."""
    claimed: set[int] = set()
    units: list[Unit] = []
    fixed: list[str] = []
    fixed_bytes = 0
    shared = shared_tensor_ids(module)
    for name, t in _all(module):  # tied tensors stay with the component's resident part
        if id(t) in shared and id(t) not in claimed:
            fixed.append(name)
            fixed_bytes += tensor_bytes(t)
            claimed.add(id(t))

    def unclaimed(mod: nn.Module) -> int:
        seen, total = set(), 0
        for _, t in _all(mod):
            if id(t) not in claimed and id(t) not in seen:
                seen.add(id(t))
                total += tensor_bytes(t)
        return total

    def claim(mod: nn.Module) -> None:
        claimed.update(id(t) for _, t in _all(mod))

    def visit(mod: nn.Module, path: str) -> None:
        nonlocal fixed_bytes
        size = unclaimed(mod)
        if size == 0:
            return
        children = list(mod.named_children())
        if _callable(mod) and (size <= max_unit_bytes or not children):
            units.append(Unit(path, size))
            claim(mod)
            return
        for name, t in _direct(mod):
            if id(t) not in claimed:
                fixed.append(f"{path}.{name}" if path else name)
                fixed_bytes += tensor_bytes(t)
                claimed.add(id(t))
        for name, child in children:
            visit(child, f"{path}.{name}" if path else name)

    # the root is always split: callers may enter it through a method (VAEDecoder.decode calls
    # self.forward directly), which would bypass a root pre-hook
    for name, child in module.named_children():
        visit(child, name)
    for name, t in _direct(module):
        if id(t) not in claimed:
            fixed.append(name)
            fixed_bytes += tensor_bytes(t)
            claimed.add(id(t))
    return Partition(tuple(units), tuple(fixed), fixed_bytes)
