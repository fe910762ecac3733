"""Packing a module's weights into byte buffers and re-pointing the module at views of them.

The offloader keeps each component as ONE host buffer (page-locked) whose layout mirrors where the
weights live on the device (the swap area, the stream slot or a resident buffer), so moving a
component or a streamed unit in is one contiguous copy. ``bind`` re-points parameters (``.data``) and
buffers at device views; the modules then compute on those addresses as if nothing happened.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .partition import shared_tensor_ids, tensor_bytes


def byte_view(buffer: torch.Tensor, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A dense ``dtype`` tensor of ``shape`` over bytes ``offset..`` of a 1-D uint8 ``buffer``."""
    numel = 1
    for d in shape:
        numel *= d
    nbytes = numel * dtype.itemsize
    return buffer[offset : offset + nbytes].view(dtype).view(shape)


@dataclass(frozen=True)
class Slot:
    """One tensor's place in a layout: the tensor (its shape, strides and dtype) and its byte offset."""

    tensor: torch.Tensor
    offset: int


def unique_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Parameters then buffers, each tensor once (tied weights appear once)."""
    seen, out = set(), []
    for t in (*module.parameters(), *(b for b in module.buffers() if b is not None)):
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def layout(tensors: list[torch.Tensor], start: int = 0) -> tuple[list[Slot], int]:
    """Consecutive aligned slots from ``start``; returns the slots and the end offset."""
    slots, offset = [], start
    for t in tensors:
        slots.append(Slot(t, offset))
        offset += tensor_bytes(t)
    return slots, offset


def dense_view(buffer: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """A view of ``buffer`` bytes with ``like``'s shape, dtype AND strides (channels-last stays so)."""
    if like.is_contiguous():
        return byte_view(buffer, offset, tuple(like.shape), like.dtype)
    if not like.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(
            f"cannot pack a weight with strides {like.stride()} (neither contiguous nor "
            "channels-last); call .contiguous() on the module's weights first"
        )
    flat = byte_view(buffer, offset, (like.numel(),), like.dtype)
    return flat.as_strided(tuple(like.shape), like.stride())


def fill(buffer: torch.Tensor, slots: list[Slot]) -> None:
    """Copy every slot's current tensor into ``buffer`` at its offset."""
    for slot in slots:
        dense_view(buffer, slot.offset, slot.tensor).copy_(slot.tensor)


class Rebinder:
    """Re-points a module's parameters and buffers (shared ones everywhere they are registered)."""

    def __init__(self, module: nn.Module):
        self._params = {id(p): p for p in module.parameters()}
        self._buffer_owners: dict[int, list[tuple[nn.Module, str]]] = {}
        for sub in module.modules():
            for name, buf in sub._buffers.items():
                if buf is not None:
                    self._buffer_owners.setdefault(id(buf), []).append((sub, name))

    def bind(self, tensor: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """Re-point ``tensor`` at ``view``; returns the handle to re-point it again later."""
        param = self._params.get(id(tensor))
        if param is not None:
            param.data = view  # keeps the Parameter object (ties and hooks see the same one)
            return param
        owners = self._buffer_owners.pop(id(tensor), [])
        for owner, name in owners:
            owner._buffers[name] = view
        self._buffer_owners[id(view)] = owners  # the old buffer may now be freed
        return view


def bind_all(rebinder: Rebinder, slots: list[Slot], buffer: torch.Tensor, shift: int = 0) -> list[Slot]:
    """Point every slot's tensor at its view in ``buffer`` (at ``offset + shift``); returns the new slots.

    The returned slots hold the new handles (the Parameter itself, or the buffer's view), so a later
    re-binding (host -> device) finds the tensors and nothing keeps the old storage alive.
    """
    return [
        Slot(rebinder.bind(slot.tensor, dense_view(buffer, slot.offset + shift, slot.tensor)), slot.offset)
        for slot in slots
    ]


def unit_tensors(module: nn.Module, paths: tuple[str, ...]) -> dict[str, list[torch.Tensor]]:
    """Tensors of each streamed unit (submodule path), as ``partition`` counted them: tied tensors are
    never streamed, and a tensor already taken stays with the first unit."""
    taken, out = shared_tensor_ids(module), {}
    for path in paths:
        tensors = [t for t in unique_tensors(module.get_submodule(path)) if id(t) not in taken]
        taken.update(id(t) for t in tensors)
        out[path] = tensors
    return out


def total_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(tensor_bytes(t) for t in tensors)
