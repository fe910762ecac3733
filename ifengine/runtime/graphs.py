"""CUDA-graph capture of one whole denoising step, cached per shape.

A ``StepGraph`` wraps a zero-argument step function that reads and writes only static buffers (see
``buffers.BufferArena``): it advances ``x`` and the device-side step counter in place. Its life is
new -> warm (eager steps on a side stream, which also initialise cuBLAS/cuDNN state and trigger any
torch.compile work) -> captured (one CUDA graph, replayed once per step). The warm-up steps are the
run's own first steps, so warming up costs no extra work; the graph machinery owns no buffers.

Misuse is an error rather than a silent slow path: capturing before warm-up, capturing twice, warming
up after capture or replaying an uncaptured graph raise ``GraphStateError``. With ``enabled=False``
every step runs eagerly through the same static buffers (the debugging path, and the CPU path).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Hashable

import torch
from ..errors import IFEngineError

from ..backends.static_io import recording_bindings, restore_bindings

log = logging.getLogger(__name__)

NEW, WARM, CAPTURED = "new", "warm", "captured"


class GraphStateError(IFEngineError, RuntimeError):
    """A StepGraph was driven in an order that would capture or replay the wrong thing."""


def check_graph_device(device: torch.device) -> None:
    if device.type != "cuda":
        raise ValueError(
            f"CUDA graphs need a CUDA device, but the runtime runs on {device}; "
            "pass cuda_graphs=False (eager steps through the same static buffers)"
        )


class StepGraph:
    """One step function for one shape: warm-up, capture once, then replays that never synchronise."""

    def __init__(
        self,
        step_fn: Callable[[], None],
        *,
        device: torch.device,
        enabled: bool = True,
        warmup_steps: int = 2,
        pool=None,
        stream=None,
        name: str = "step",
    ):
        if enabled:
            check_graph_device(device)
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1 (cuBLAS and cuDNN initialise lazily), got {warmup_steps}")
        self.fn, self.device, self.enabled, self.name = step_fn, device, enabled, name
        self.warmup_steps, self.pool = warmup_steps, pool
        self.state, self.warmed = NEW, 0
        self._graph, self._bindings = None, []
        self.on_capture: Callable[[], None] | None = None  # the owning cache counts captures
        # a GraphCache passes its one capture stream; a StepGraph on its own makes one
        self._stream = (stream if stream is not None else _new_stream(device)) if enabled else None

    def warmup_no_sync(self) -> None:
        """Run one real step eagerly on the side stream the graph will be captured on."""
        if self.state == CAPTURED:
            raise GraphStateError(f"{self.name}: warm-up after capture; the graph is already recorded")
        with self._on_side_stream():
            self.fn()
        self.warmed += 1
        self.state = WARM

    def capture(self) -> None:
        """Record one step. Records only: the step's buffers are not advanced by capturing."""
        if not self.enabled:
            raise GraphStateError(f"{self.name}: graphs are disabled (enabled=False); nothing to capture")
        if self.state == CAPTURED:
            raise GraphStateError(f"{self.name}: captured twice; keep one StepGraph per shape")
        if self.warmed < self.warmup_steps:
            raise GraphStateError(
                f"{self.name}: capture after {self.warmed} of {self.warmup_steps} warm-up "
                "steps; lazily initialised kernels would be recorded half-built"
            )
        with recording_bindings() as self._bindings:  # the networks' dims this graph was recorded with
            self._graph = _capture(self.fn, self.pool, self._stream)
        self.state = CAPTURED
        if self.on_capture is not None:
            self.on_capture()
        log.debug("%s: captured", self.name)

    def replay_no_sync(self) -> None:
        """Enqueue the recorded step on the current stream and return at once.

        No synchronize, no .item(), no host read: the host runs ahead of the device for the whole
        loop and meets it only at the run's single fetch of results.
        """
        if self.state != CAPTURED:
            raise GraphStateError(f"{self.name}: replay before capture (state {self.state})")
        restore_bindings(self._bindings)  # contexts rebound to other shapes since the capture, bound back
        self._graph.replay()

    def step_no_sync(self) -> None:
        """Advance one denoising step by the cheapest legal means for the current state."""
        if not self.enabled:
            self.fn()
        elif self.state == CAPTURED:
            self.replay_no_sync()
        else:
            self.warmup_no_sync()
            if self.warmed >= self.warmup_steps:
                self.capture()

    def _on_side_stream(self):
        if self._stream is None:
            return contextlib.nullcontext()
        return _side_stream(self._stream)

    def release(self) -> None:
        """Drop the graph (its private memory returns to the allocator once no graph uses the pool)."""
        self._graph, self.state, self.warmed = None, NEW, 0


# The CUDA touch points, as module functions so the state machine can be tested without a GPU.
def _new_stream(device: torch.device):
    return torch.cuda.Stream(device)


def _pool_handle():
    return torch.cuda.graph_pool_handle()


def _capture(fn: Callable[[], None], pool, stream):
    graph = torch.cuda.CUDAGraph()
    # torch.cuda.graph synchronises the device and empties the allocator cache before recording:
    # one host sync per shape, at setup, never on the per-step path.
    with torch.cuda.graph(graph, pool=pool, stream=stream):
        fn()
    return graph


@contextlib.contextmanager
def _side_stream(stream):
    # the side stream starts after everything already queued, and the caller's stream resumes after it
    current = torch.cuda.current_stream(stream.device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        yield
    current.wait_stream(stream)


class GraphCache:
    """StepGraphs keyed by everything that fixes a capture: stage, shapes, dtypes, flags, buffer generation.

    All graphs of one cache share one memory pool AND one capture stream: they never run concurrently
    (one cache per stream group), and their scratch is dead after each replay because results land in
    arena buffers. The caching allocator hands a freed block out again only to an allocation on the
    stream it was freed on, so with one capture stream every capture reuses the blocks the previous ones
    freed and the pool holds the largest graph (what ``memory.planner.graph_pool_bytes`` budgets); with a
    stream per graph it would hold their sum. One stream also means one cuBLAS workspace.
    """

    def __init__(self, device: torch.device | str, *, enabled: bool = True, warmup_steps: int = 2):
        self.device, self.enabled, self.warmup_steps = torch.device(device), enabled, warmup_steps
        if enabled:
            check_graph_device(self.device)
        self._graphs: dict[Hashable, StepGraph] = {}
        self.pool = self._new_pool()
        self.stream = _new_stream(self.device) if enabled else None
        self.captures = 0  # graphs recorded over the cache's life (each capture synchronises once)

    def _new_pool(self):
        return _pool_handle() if self.enabled else None

    def get(self, key: Hashable, make_step: Callable[[], Callable[[], None]], name: str = "step") -> StepGraph:
        """The StepGraph for ``key``; ``make_step`` builds its step function on a miss only."""
        graph = self._graphs.get(key)
        if graph is None:
            graph = StepGraph(
                make_step(),
                device=self.device,
                enabled=self.enabled,
                warmup_steps=self.warmup_steps,
                pool=self.pool,
                stream=self.stream,
                name=name,
            )
            graph.on_capture = self._count_capture
            self._graphs[key] = graph
        return graph

    def _count_capture(self) -> None:
        self.captures += 1

    def clear(self) -> None:
        for graph in self._graphs.values():
            graph.release()
        self._graphs.clear()
        self.pool = self._new_pool()

    def __len__(self) -> int:
        return len(self._graphs)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._graphs
