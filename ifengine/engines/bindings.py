"""Runtime decisions for TensorRT engines, as pure Python: buffers, bindings, scratch, streaming budgets.

The TensorRT backend only executes what these functions decide, so all of it is tested without TensorRT:
- every I/O buffer is allocated once at the profile's largest shape; a call views a prefix of it, so
  addresses never change and are bound once, while input shapes are re-bound only when they change;
- all engines of a cascade share one scratch allocation sized to the largest need (they run one after
  another on one stream);
- a weight-streaming budget is resolved to bytes, and refused for engines built without streaming.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..memory.sizes import GiB as GIB
from .errors import EngineCorrupt
from .io_plan import IOPlan

log = logging.getLogger(__name__)
ALIGNMENT = 256  # TensorRT's required alignment for device memory handed to a context


def shared_scratch_bytes(needs: Iterable[int]) -> int:
    """One scratch allocation for engines that never run at the same time: the largest need, aligned."""
    largest = max(needs, default=0)
    return -(-largest // ALIGNMENT) * ALIGNMENT


def resolve_budget(requested, streaming: bool, default, streamable: int, automatic: int) -> int | None:
    """Bytes of streamable weights to keep on the GPU, or None to leave TensorRT's default.

    ``requested`` (the caller's) wins over ``default`` (the recipe's): "auto" (TensorRT's automatic
    budget), a fraction string like "50%" of the streamable weights, an int (bytes) or a float (GiB).
    """
    value = default if requested is None else requested
    if value is None:
        return None
    if not streaming:
        if requested is not None:
            raise ValueError(
                "a weight streaming budget was given for an engine built without weight streaming: "
                "set weight_streaming = true for it in the recipe and rebuild"
            )
        return None
    if value == "auto":
        return automatic
    if isinstance(value, str) and value.endswith("%"):
        budget = int(float(value[:-1]) / 100 * streamable)
    elif isinstance(value, float):
        budget = int(value * GIB)
    elif isinstance(value, int) and not isinstance(value, bool):
        budget = value
    else:
        raise ValueError(f"weight streaming budget {value!r}: use 'auto', 'N%', bytes (int) or GiB (float)")
    if budget < 0:
        raise ValueError(f"weight streaming budget {value!r} is negative")
    return min(budget, streamable)  # more than all streamable weights just means "keep them all"


def allocate_buffers(plan: IOPlan, device) -> dict:
    """One flat buffer per I/O tensor, sized for the profile's largest shape (torch, on ``device``)."""
    import torch

    return {
        name: torch.empty(_numel(shape), dtype=getattr(torch, plan.dtypes[name]), device=device)
        for name, shape in plan.max_shapes().items()
    }


def views(buffers: Mapping, shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """Per-call tensors: a prefix of each static buffer, reshaped (same address as the buffer)."""
    return {name: buffers[name][: _numel(shape)].view(shape) for name, shape in shapes.items()}


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@dataclass(frozen=True)
class Binding:
    """What to tell the context: input shapes to set and tensor addresses to set (either may be empty)."""

    shapes: Mapping[str, tuple[int, ...]]
    addresses: Mapping[str, int]


@dataclass
class Binder:
    """Tracks what a context has been told, so shapes are set once per change and addresses once."""

    plan: IOPlan
    addresses: Mapping[str, int]
    bound_dims: dict | None = None
    addresses_bound: bool = False
    warm: bool = False  # an inference ran at the bound shapes (required before a CUDA graph capture)
    shapes: dict = field(default_factory=dict)

    def update(self, dims: Mapping[str, int]) -> Binding | None:
        full = self.plan.full_dims(dims)
        if full == self.bound_dims and self.addresses_bound:
            return None
        self.shapes = self.plan.io_shapes(dims)
        inputs = {t.name: self.shapes[t.name] for t in self.plan.spec.inputs}
        binding = Binding(
            shapes=inputs if full != self.bound_dims else {},
            addresses={} if self.addresses_bound else dict(self.addresses),
        )
        self.bound_dims, self.addresses_bound, self.warm = full, True, False
        return binding

    def reset(self) -> None:
        """Forget what the context was told (after a failed bind)."""
        self.bound_dims, self.addresses_bound, self.warm = None, False, False


def select(plans: Sequence[IOPlan], dims: Mapping[str, int]) -> int:
    """Index of the engine to run for ``dims``: a static engine of exactly that shape, else the first
    dynamic one whose profile covers it."""
    fits = []
    for i, plan in enumerate(plans):
        try:
            plan.full_dims(dims)
        except ValueError:
            continue
        fits.append((not all(r.min == r.max for r in plan.dims.values()), i))
    if not fits:
        covered = "; ".join(_describe(p) for p in plans)
        raise ValueError(
            f"no engine covers {dict(dims)}: built profiles are {covered}; add the size or batch to "
            f"the recipe and rebuild"
        )
    return min(fits)[1]


def _describe(plan: IOPlan) -> str:
    return ", ".join(f"{k} {r.min}..{r.max}" for k, r in sorted(plan.dims.items()))


def check_engine_io(plan: IOPlan, described: Mapping[str, Mapping]) -> None:
    """The deserialised engine must have exactly the I/O its manifest describes (names, dtypes, profile)."""
    expected = {t.name for t in plan.tensors}
    if set(described) != expected:
        raise EngineCorrupt(
            f"{plan.name}: the engine's tensors {sorted(described)} are not the manifest's "
            f"{sorted(expected)}; rebuild it"
        )
    for name, info in described.items():
        if info.get("dtype") != plan.dtypes.get(name):
            raise EngineCorrupt(
                f"{plan.name}: {name} is {info.get('dtype')} in the engine but "
                f"{plan.dtypes.get(name)} in its manifest; rebuild it"
            )
    for t in plan.spec.inputs:
        lo, opt, hi = (plan.shape(t, {k: getattr(r, a) for k, r in plan.dims.items()}) for a in ("min", "opt", "max"))
        if tuple(described[t.name].get("profile", ())) != (lo, opt, hi):
            raise EngineCorrupt(
                f"{plan.name}: {t.name}'s profile in the engine {described[t.name].get('profile')} "
                f"is not the manifest's {(lo, opt, hi)}; rebuild it"
            )
