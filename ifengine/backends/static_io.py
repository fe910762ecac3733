"""Static I/O shared by the ONNX Runtime and TensorRT networks: every decision around a bound network.

- buffers: one flat torch buffer per named tensor, sized at the plan's largest shape (TensorRT: the
  engine profile's maximum, allocated up front so addresses never change and a captured graph stays
  valid) or grown to the largest call seen so far (``grow=True``, ONNX Runtime on the CPU, whose spec
  ranges can be far larger than any call); a call views a prefix of each buffer;
- binding: shapes are re-bound only when the dims change, addresses only when a buffer moved (first
  call, or growth), as ``engines.bindings.Binder`` decides;
- capture: a bind during a CUDA graph capture, or a capture before one eager call at the bound shapes
  (for ``Capture.AFTER_WARMUP`` networks), or any capture of a ``Capture.NEVER`` network, is an error;
- replay: a graph records which networks it prepared at which dims (``recording_bindings``), and
  ``restore_bindings`` re-prepares them before each replay. A replay runs no Python, so after calls
  A -> B -> A the graph of A would otherwise run on a context still bound to B's shapes (a TensorRT
  enqueue reads shapes the context holds); prepare() is a no-op when the dims are already bound.

The adapters (``backends.onnxruntime.network``, ``backends.tensorrt.engines``) only execute a ``Binding``
and enqueue; this module is tested on the CPU through the ONNX Runtime adapter.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ..engines import bindings
from ..engines.io_plan import IOPlan
from ..stage.seam import Capture


class StaticIO:
    """Buffers, views and binding state of one network (an ``IOPlan``) on one device."""

    def __init__(self, plan: IOPlan, device: torch.device | str, *, grow: bool = False, owner: Any = None):
        self.plan, self.device, self.grow = plan, torch.device(device), grow
        self.owner = owner  # the adapter whose prepare() binds this I/O (what restore_bindings calls)
        self.buffers: dict[str, torch.Tensor] = {} if grow else bindings.allocate_buffers(plan, self.device)
        self.binder = bindings.Binder(plan, self._addresses())
        self.binds = 0  # how many times prepare() had to tell the backend something (tests read it)

    def _addresses(self) -> dict[str, int]:
        return {n: b.data_ptr() for n, b in self.buffers.items()}

    def prepare(self, dims: Mapping[str, int]) -> bindings.Binding | None:
        """What the backend must bind for ``dims`` (None: nothing changed). Refuses changes mid-capture."""
        shapes = self.plan.io_shapes(dims)  # checks the dims against the profile first
        for needs in _recorders:
            needs.append((self, dict(dims), self.plan.full_dims(dims)))
        if self.grow:
            self._grow(shapes)
        binding = self.binder.update(dims)
        if binding is not None:
            if capturing():
                self.binder.reset()
                raise RuntimeError(
                    f"{self.plan.name}: shapes changed during a CUDA graph capture; prepare() and run once "
                    "at these shapes before capturing"
                )
            self.binds += 1
        return binding

    def _grow(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        small = [n for n, s in shapes.items() if n not in self.buffers or self.buffers[n].numel() < math.prod(s)]
        if not small:
            return
        if capturing():
            raise RuntimeError(f"{self.plan.name}: buffers would move during a CUDA graph capture")
        for name in small:
            dtype = getattr(torch, self.plan.dtypes[name])
            self.buffers[name] = torch.empty(math.prod(shapes[name]), dtype=dtype, device=self.device)
        self.binder.addresses, self.binder.addresses_bound = self._addresses(), False  # rebind every address

    def shapes(self, names) -> dict[str, tuple[int, ...]]:
        return {n: self.binder.shapes[n] for n in names}

    def inputs(self) -> dict[str, torch.Tensor]:
        self._check_prepared()
        return bindings.views(self.buffers, self.shapes(self.plan.spec.input_names))

    def outputs(self) -> dict[str, torch.Tensor]:
        self._check_prepared()
        return bindings.views(self.buffers, self.shapes(self.plan.spec.output_names))

    def before_enqueue(self, capture: Capture) -> bool:
        """Check an enqueue is legal now; returns whether a capture is recording it."""
        self._check_prepared()
        recording = capturing()
        if recording and not capture.allows(self.binder.warm):
            why = "it never may" if capture is Capture.NEVER else "run it once at these shapes first"
            raise RuntimeError(f"{self.plan.name}: cannot be captured in a CUDA graph now ({why})")
        return recording

    def after_enqueue(self, recording: bool) -> None:
        self.binder.warm = self.binder.warm or not recording

    def _check_prepared(self) -> None:
        if self.binder.bound_dims is None:
            raise RuntimeError(f"{self.plan.name}: call prepare() before using its buffers or enqueueing")


_recorders: list[list] = []  # one list per graph being captured (nested captures never happen; a stack is cheap)


@contextlib.contextmanager
def recording_bindings() -> Iterator[list]:
    """Collect (StaticIO, dims) for every prepare() inside the block: what a captured graph relies on."""
    needs: list = []
    _recorders.append(needs)
    try:
        yield needs
    finally:
        _recorders.remove(needs)


def restore_bindings(needs: list) -> int:
    """Before a replay: bind each recorded network at the dims it had when captured; returns how many
    had been re-bound to other dims since (each costs host calls only, no device sync)."""
    rebound = 0
    for io, dims, full in needs:
        if io.binder.bound_dims != full or not io.binder.addresses_bound:
            (io.owner.prepare if io.owner is not None else io.prepare)(dims)
            rebound += 1
    return rebound


def capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


_side_streams: dict = {}  # device -> the one stream eager enqueues use instead of the legacy default stream


@contextlib.contextmanager
def enqueue_handle(stream) -> Iterator[int]:
    """The raw stream to enqueue on: ``stream`` if given, else torch's current stream, except that the
    legacy default stream (handle 0) is replaced by a side stream ordered after it and before what
    follows on it. On stream 0 TensorRT adds a cudaStreamSynchronize per enqueue and the legacy stream
    serialises with every other stream; eager T5/CLIP/VAE calls run on it unless a caller set one."""
    if stream is not None:
        yield stream_handle(stream)
        return
    current = torch.cuda.current_stream()
    if current.cuda_stream != 0:
        yield current.cuda_stream
        return
    side = _side_streams.get(current.device)
    if side is None:
        side = _side_streams[current.device] = torch.cuda.Stream(current.device)
    side.wait_stream(current)
    yield side.cuda_stream
    current.wait_stream(side)


def stream_handle(stream) -> int:
    """A raw CUDA stream handle from a torch stream, an int, or None (torch's current stream)."""
    if stream is None:
        return torch.cuda.current_stream().cuda_stream
    return stream.cuda_stream if hasattr(stream, "cuda_stream") else int(stream)
