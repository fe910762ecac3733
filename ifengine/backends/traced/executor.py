"""The "traced" torch executor: each stage's whole denoising step as one frozen TorchScript graph.

Why: an eager step walks the U-Net's module tree in Python, several hundred module and op calls, and on
the host that costs more than the arithmetic of a small model (and, on a GPU, it is the time between
kernel launches). Tracing the step function (``stage.steps.if_step`` / ``x4_step`` with the U-Net)
once per shape records the same aten ops; ``torch.jit.freeze`` turns the weights into constants (no
attribute lookups), and ``hoist.split_invariant`` moves everything that depends only on per-run
invariants (text states, guidance, schedule tables, stage II's noised low-res image) into a prologue that
runs once per run instead of once per step. The step then costs one interpreter call, and it runs the
very aten ops the eager step runs: its results are bit for bit the eager ones.

A graph is built per (U-Net, shapes, dtypes, device, static settings) and kept in a small cache. The
executor has the step function's own signature, so it plugs into ``IFStage.step_fn``/``X4Stage.step_fn``.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

import torch
from torch import nn

from ...stage.seam import Capture, EagerStep, Step
from ...stage.steps import if_step, x4_step
from .hoist import SplitStep, split_invariant

log = logging.getLogger(__name__)
EXECUTORS = ("eager", "traced", "auto")
# "auto" traces where it was measured equal and faster (CPU; benchmarks/RESULTS.md): a trace costs about
# a second, which a run of 20+ steps repays; shorter runs and other devices stay eager until measured.
AUTO_MIN_STEPS = 20
AUTO_DEVICES = ("cpu",)


@dataclass(frozen=True)
class StepKind:
    """Which arguments of a step function change every step and which stay fixed for a run."""

    fn: Callable
    varying: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Parameters after (unet, tables), in order."""
        return tuple(inspect.signature(self.fn).parameters)[2:]

    @property
    def defaults(self) -> dict[str, Any]:
        params = inspect.signature(self.fn).parameters.values()
        return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


IF_STEP = StepKind(if_step, varying=("i", "x", "noise"))
X4_STEP = StepKind(x4_step, varying=("i", "latents"))


class _StepModule(nn.Module):
    """The step with its U-Net and static settings bound, taking only tensors (what tracing needs)."""

    def __init__(self, kind: StepKind, unet: nn.Module, tables, tensor_names, statics: dict[str, Any]):
        super().__init__()
        self.unet, self.kind, self.tables, self.tensor_names, self.statics = unet, kind, tables, tensor_names, statics

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        values = dict(zip(self.tensor_names, tensors, strict=True))
        fields = {k[len("tables.") :]: values.pop(k) for k in list(values) if k.startswith("tables.")}
        tables = dataclasses.replace(self.tables, **fields)
        return self.kind.fn(self.unet, tables, **values, **self.statics)


class _Graph:
    """One traced step: its split graphs and the last prologue results (reused while the inputs are)."""

    def __init__(self, split: SplitStep):
        self.split = split
        self._invariants: tuple | None = None
        self._hoisted: tuple = ()

    def __call__(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        split = self.split
        if split.prologue is not None:
            invariants = tuple(tensors[k] for k in split.prologue_inputs)
            if self._invariants is None or any(a is not b for a, b in zip(invariants, self._invariants, strict=True)):
                out = split.prologue(*invariants)
                self._hoisted = out if isinstance(out, tuple) else (out,)
                self._invariants = invariants  # held, so identity cannot be reused by a new tensor
        return split.step(*(tensors[k] for k in split.step_inputs), *self._hoisted)


class TracedStep:
    """A drop-in for a step function that runs it as a frozen, hoisted TorchScript graph.

    ``min_steps``/``devices`` limit tracing to runs where it pays off (the rest run the eager step);
    ``fallback`` logs and runs eagerly when a step cannot be traced instead of raising.
    """

    def __init__(
        self,
        kind: StepKind,
        *,
        min_steps: int = 0,
        devices: tuple[str, ...] | None = None,
        fallback: bool = False,
        cache_size: int = 8,
    ):
        self.kind, self.min_steps, self.devices, self.fallback = kind, min_steps, devices, fallback
        self._names, self._defaults = kind.names, kind.defaults
        self._cache: OrderedDict[tuple, _Graph | None] = OrderedDict()
        self._cache_size = cache_size
        self.eager_equivalent = EagerStep(kind.fn)  # the GPU runner captures this one instead (seam point 5)

    @property
    def capture(self) -> Capture:
        return Capture.NEVER  # host-side caches keyed by tensor identity: a replay would read stale values

    def weights_changed(self) -> None:
        """Frozen graphs hold the old weights as constants: forget them all."""
        self._cache.clear()

    def __call__(self, unet: nn.Module, tables, *args, **kwargs) -> torch.Tensor:
        # strict=False: positional args may stop before the names do; defaults and kwargs fill the rest
        values = {**self._defaults, **dict(zip(self._names, args, strict=False)), **kwargs}
        if not self._wanted(unet, tables, values):
            return self.kind.fn(unet, tables, **values)
        names, tensors, statics = self._partition(tables, values)
        key = _key(unet, tables, names, tensors, statics)
        graph = self._graph(key, unet, tables, names, tensors, statics)
        if graph is None:
            return self.kind.fn(unet, tables, **values)
        return graph(tensors)

    def _wanted(self, unet, tables, values: dict) -> bool:
        if not isinstance(unet, nn.Module) or len(tables) < self.min_steps:
            return False
        device = values[self.kind.varying[1]].device.type
        return self.devices is None or device in self.devices

    @staticmethod
    def _partition(tables, values: dict) -> tuple[list[str], list[torch.Tensor], dict[str, Any]]:
        names, tensors, statics = [], [], {}
        for f in dataclasses.fields(tables):
            value = getattr(tables, f.name)
            if isinstance(value, torch.Tensor):
                names.append(f"tables.{f.name}")
                tensors.append(value)
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                names.append(name)
                tensors.append(value)
            else:
                statics[name] = value
        return names, tensors, statics

    def _graph(self, key, unet, tables, names, tensors, statics) -> _Graph | None:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        graph = self._build(unet, tables, names, tensors, statics)
        self._cache[key] = graph
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return graph

    def _build(self, unet, tables, names, tensors, statics) -> _Graph | None:
        invariant = {k for k, n in enumerate(names) if n not in self.kind.varying}
        try:
            return _Graph(trace_split(_StepModule(self.kind, unet, tables, names, statics), tensors, invariant))
        except Exception as err:  # tracing fails in many ways (unsupported ops, data-dependent shapes)
            if not self.fallback:
                raise
            log.warning(
                "could not trace the %s step (%s: %s); running it eagerly",
                self.kind.fn.__name__,
                type(err).__name__,
                err,
            )
            return None


@torch.no_grad()
def trace_split(module: nn.Module, example: list[torch.Tensor], invariant: set[int]) -> SplitStep:
    """Trace ``module(*example)``, freeze it, and hoist what depends only on ``invariant`` inputs."""
    log.info(
        "tracing %s into one graph for shapes %s",
        module.kind.fn.__name__,
        [tuple(t.shape) for t in example if t.dim() > 1],
    )
    with warnings.catch_warnings():
        # sizes read as Python ints are meant to be baked in: a graph is built per shape
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch 2.13 marks TorchScript deprecated; it is still the leanest host path for a whole step,
        # and this module is the only place that uses it (swap it here for torch.export/AOTInductor later)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module.eval(), tuple(example), check_trace=False)
        # optimize_numerics=False: no conv/linear folding, so the graph computes exactly the eager ops
        frozen = torch.jit.freeze(traced, optimize_numerics=False)
    graph = frozen.graph.copy()
    if list(graph.inputs())[0].uses():
        raise RuntimeError("the frozen step graph still reads module attributes")
    graph.eraseInput(0)  # the module itself: frozen, its weights are constants now
    return split_invariant(graph, invariant)


def _key(unet, tables, names, tensors, statics) -> tuple:
    # host_timesteps and the table lengths are left out: the step reads the schedule only by gathering
    # from the table tensors (graph inputs), so one graph serves every schedule and step count
    table_statics = tuple(
        (f.name, getattr(tables, f.name))
        for f in dataclasses.fields(tables)
        if f.name != "host_timesteps" and not isinstance(getattr(tables, f.name), torch.Tensor)
    )
    shapes = tuple(
        (n, t.dim() if n.startswith("tables.") else tuple(t.shape), t.dtype, t.device)
        for n, t in zip(names, tensors, strict=True)
    )
    return (id(unet), type(tables), table_statics, tuple(sorted(statics.items())), shapes)


def step_executor(name: str, kind: StepKind) -> Step:
    """The step for executor ``name`` (a ``stage.seam.Step``)."""
    if name == "eager":
        return EagerStep(kind.fn)
    if name == "traced":
        return TracedStep(kind)
    if name == "auto":
        return TracedStep(kind, min_steps=AUTO_MIN_STEPS, devices=AUTO_DEVICES, fallback=True)
    raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


def attach_executor(stage, name: str) -> None:
    """Give a loaded stage (IFStage or X4Stage) the executor ``name``; stages other backends own are left."""
    if stage is None or not isinstance(getattr(stage, "unet", None), nn.Module):
        return
    current = stage.step_fn
    if not isinstance(current, (EagerStep, TracedStep)):
        return  # a step graph from another backend (e.g. exported ONNX): not ours to replace
    kind = X4_STEP if hasattr(stage, "vae") else IF_STEP
    stage.step_fn = step_executor(name, kind)
