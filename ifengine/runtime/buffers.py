"""Static device buffers and pinned host staging.

A captured CUDA graph reads and writes fixed addresses, so everything a step touches lives in a
``BufferArena``: one byte buffer per name, allocated at the largest size asked for and *viewed* for
smaller shapes, so a new batch or resolution within the reserved size reuses the same memory and the
graphs captured for other shapes stay valid. Growing a buffer moves it; the arena then bumps its
``generation`` and whoever captured graphs over it must drop them.

Host data of a run (all noise, schedule tables, guidance and noise-level scalars) is packed into one
page-locked buffer and uploaded with ONE asynchronous copy (``HostPack.upload_no_sync``); results come
back with one asynchronous copy into page-locked memory and one wait (``fetch_no_sync`` + ``HostFetch``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..memory.weight_layout import byte_view

log = logging.getLogger(__name__)

# Offsets inside packed buffers are rounded up to this: every dtype view is aligned, and CUDA kernels
# get the 256-byte alignment the caching allocator gives its own blocks (vectorised loads rely on it).
ALIGN = 256


def align_up(nbytes: int, align: int = ALIGN) -> int:
    return (nbytes + align - 1) // align * align


def pinned_bytes(nbytes: int, device: torch.device) -> torch.Tensor:
    """A host uint8 staging buffer: page-locked when the data goes to a CUDA device, pageable otherwise.

    Page-locked buffers come from torch's caching host allocator, which records an event on every
    asynchronous copy that reads a block and hands the block out again only after that event has
    completed: a fresh staging buffer per run is therefore safe to fill while the previous run's
    upload may still be in flight, with no host synchronisation.
    """
    if device.type != "cuda":
        return torch.empty(nbytes, dtype=torch.uint8)
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)


class BufferArena:
    """Named byte buffers on one device, each allocated once at its largest size and viewed per shape."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.generation = 0  # bumped whenever a buffer moves; graphs captured before are then stale
        self._buffers: dict[str, torch.Tensor] = {}
        self._streams: dict[str, list] = {}  # per buffer: the stream it was allocated on, then its users

    def reserve(self, name: str, nbytes: int) -> None:
        """Make ``name`` at least ``nbytes`` long (growth reallocates and bumps ``generation``)."""
        current = self._buffers.get(name)
        if current is not None and current.numel() >= nbytes:
            return
        if current is not None:
            log.info(
                "buffer %r grows from %d to %d bytes; graphs over the old buffer are dropped",
                name,
                current.numel(),
                nbytes,
            )
            self._release(name, current)
            self.generation += 1
        # zero-filled once, so a view never exposes stale memory from the allocator
        self._buffers[name] = torch.zeros(align_up(nbytes), dtype=torch.uint8, device=self.device)
        self._streams[name] = [_current_stream(self.device)]

    def _release(self, name: str, old: torch.Tensor) -> None:
        # throughput mode: kernels on the other stream may still read the old buffer; the allocator only
        # orders its reuse after the stream it was allocated on, so tell it about every other reader
        used = self._streams.pop(name, [None])
        for stream in foreign_streams(used[0], used[1:]):
            old.record_stream(stream)

    def view(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """``shape``/``dtype`` view at the start of buffer ``name`` (allocating/growing it if needed)."""
        numel = 1
        for d in shape:
            numel *= d
        self.reserve(name, numel * dtype.itemsize)
        stream, users = _current_stream(self.device), self._streams[name]
        if stream not in users:
            users.append(stream)  # whoever takes a view enqueues work on it from this stream
        return byte_view(self._buffers[name], 0, tuple(shape), dtype)

    def data_ptr(self, name: str) -> int:
        return self._buffers[name].data_ptr()

    @property
    def nbytes(self) -> int:
        return sum(b.numel() for b in self._buffers.values())

    def clear(self) -> None:
        for name, buffer in list(self._buffers.items()):
            self._release(name, buffer)
        self._buffers.clear()
        self.generation += 1


def _current_stream(device: torch.device):
    return torch.cuda.current_stream(device) if device.type == "cuda" else None


def foreign_streams(allocated_on, used_on) -> list:
    """The streams, other than the one a buffer was allocated on, that used it (each once, in order):
    those ``record_stream`` must name before the buffer is freed. Pure, so the CPU tests can check it."""
    out = []
    for stream in used_on:
        if stream is not None and stream != allocated_on and stream not in out:
            out.append(stream)
    return out


@dataclass(frozen=True)
class PackEntry:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int

    @property
    def nbytes(self) -> int:
        numel = 1
        for d in self.shape:
            numel *= d
        return numel * self.dtype.itemsize


class HostPack:
    """Collect a run's host tensors, then upload them all with one copy into a static device buffer.

    The layout depends only on the (name, shape, dtype) sequence, so the same kind of run lands every
    tensor at the same device address: graphs captured over the views stay valid across runs.
    """

    def __init__(self) -> None:
        self._tensors: list[tuple[str, torch.Tensor]] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if any(n == name for n, _ in self._tensors):
            raise ValueError(f"HostPack already holds {name!r}")
        self._tensors.append((name, tensor))

    def layout(self) -> tuple[tuple[PackEntry, ...], int]:
        entries, offset = [], 0
        for name, t in self._tensors:
            entries.append(PackEntry(name, tuple(t.shape), t.dtype, offset))
            offset = align_up(offset + entries[-1].nbytes)
        return tuple(entries), offset

    def upload_no_sync(self, dest: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fill a staging buffer, enqueue ONE host-to-device copy into uint8 ``dest``, return views.

        ``non_blocking`` from page-locked memory returns at once; the copy is ordered before later work
        on the current stream, so the views can be used straight away by enqueued kernels.
        """
        entries, total = self.layout()
        if dest.numel() < total:
            raise ValueError(f"upload buffer holds {dest.numel()} bytes, the pack needs {total}")
        staging = pinned_bytes(total, dest.device)
        on_device = []
        for entry, (_, tensor) in zip(entries, self._tensors, strict=True):
            if tensor.device.type == "cpu":
                byte_view(staging, entry.offset, entry.shape, entry.dtype).copy_(tensor)
            else:
                on_device.append((entry, tensor))  # e.g. noise from a CUDA generator: copied device-side
        dest[:total].copy_(staging, non_blocking=True)
        views = {e.name: byte_view(dest, e.offset, e.shape, e.dtype) for e in entries}
        for entry, tensor in on_device:
            views[entry.name].copy_(tensor, non_blocking=True)
        return views


@dataclass
class HostFetch:
    """Results on their way to page-locked host memory; ``wait`` is the run's one host synchronisation."""

    tensors: list[torch.Tensor]
    finite: torch.Tensor  # (n,) bool on the host, valid after wait()
    event: object | None

    def wait(self) -> tuple[list[torch.Tensor], list[bool]]:
        if self.event is not None:
            self.event.synchronize()
        return self.tensors, [bool(v) for v in self.finite.tolist()]


def fetch_no_sync(
    outputs: list[torch.Tensor], dtype: torch.dtype = torch.float32, extra_flags: Sequence[torch.Tensor] = ()
) -> HostFetch:
    """Enqueue the copies of ``outputs`` (as ``dtype``) and of their all-finite flags to pinned host memory.

    Nothing here waits: the flags are computed on the device and travel with the images, so checking
    for NaN costs no extra synchronisation. ``extra_flags`` (0-d bool tensors, e.g. the text encoders'
    deferred checks) travel in the same copy and come last in ``wait()``'s flag list. Call ``wait()``
    once when the host needs the values.
    """
    if not outputs:
        return HostFetch([], torch.zeros(0, dtype=torch.bool), None)
    device = outputs[0].device
    flags = torch.stack([torch.isfinite(o).all() for o in outputs] + [f.to(device) for f in extra_flags])
    if device.type != "cuda":
        return HostFetch([o.to(dtype) for o in outputs], flags, None)
    pin = dict(device="cpu", pin_memory=True)
    host = [torch.empty(o.shape, dtype=dtype, **pin) for o in outputs]
    for h, o in zip(host, outputs, strict=True):
        # the cast runs on the device first; the temporary is freed stream-ordered, so this stays async
        h.copy_(o.to(dtype), non_blocking=True)
    host_flags = torch.empty(flags.shape, dtype=torch.bool, **pin)
    host_flags.copy_(flags, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return HostFetch(host, host_flags, event)
