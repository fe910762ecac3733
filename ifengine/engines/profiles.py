"""Recipe batch range and image sizes -> TensorRT optimisation profiles (min/opt/max per input).

Every named dim of a component's I/O spec gets a range: ``batch`` from the recipe's batch range (doubled
where the component sees the classifier-free-guidance batch), ``height``/``width`` from the recipe's stage I
sizes scaled to the component's resolution, any other dim keeps the spec's declared range. The recipe may
only narrow the spec, never widen it: the runtime's static buffers are sized from the same ranges.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from collections.abc import Mapping

from ..export.spec import ComponentSpec, DimRange
from ..facts import ALL_COMPONENTS, STAGE_OF, TEXT_ENCODERS, TEXT_TOKENS, UNETS, scale_of
from .errors import RecipeError
from .recipe import BatchRange
from .specs import derived_dims

# Resolution of each image component relative to stage I (stage II and III upscale x4; the x4 U-Net and
# the VAE decoder work on latents the size of the stage II image).
IMAGE_COMPONENTS = tuple(c for c in ALL_COMPONENTS if c not in TEXT_ENCODERS)
SCALE = {c: scale_of(min(STAGE_OF[c], 2)) for c in IMAGE_COMPONENTS}
# Components whose batch is [uncond; cond] with guidance: opt/max double, min stays (guidance off).
# The text encoders are included so a runtime may encode prompt and negative prompt in one call.
# Step graphs double inside the graph (their spec derives cfg_batch = 2 x batch): batch is the image batch.
CFG_DOUBLED = frozenset(TEXT_ENCODERS + UNETS)
PINNED = frozenset({"batch", "height", "width", "tokens"})  # what static_shapes fixes


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: a range per named dim and the resulting (min, opt, max) per input."""

    label: str  # "dynamic", or for static shapes e.g. "b2-64x64" (batch, width x height)
    dims: Mapping[str, DimRange]
    shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

    @property
    def static(self) -> bool:
        return all(lo == hi for lo, _, hi in self.shapes.values())

    def contains(self, shapes: Mapping[str, tuple[int, ...]]) -> bool:
        """Whether concrete input shapes fit this profile (every axis within min..max)."""
        for name, (lo, _, hi) in self.shapes.items():
            shape = tuple(shapes.get(name, ()))
            if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
                return False
        return True

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "inputs": {n: {"min": list(a), "opt": list(b), "max": list(c)} for n, (a, b, c) in self.shapes.items()},
        }


def make_profiles(
    component: str,
    spec: ComponentSpec,
    batch: BatchRange,
    sizes: tuple[tuple[int, int], ...],
    static: bool = False,
    each_batch: bool = False,
) -> tuple[Profile, ...]:
    """One dynamic profile covering everything, or one static profile per size with the batch fixed at
    opt (TensorRT: its engines keep one opt point) or, with ``each_batch``, at every batch value of the
    range (Inductor: a static package per batch is faster than one with a dynamic batch, see RESULTS.md)."""
    ranges = dim_ranges(component, spec, batch, sizes)
    if not static:
        return (_profile("dynamic", spec, ranges),)
    # pin the image-shaped dims; others (a step graph's schedule length) stay ranges
    pinned = {k: _pin(r, r.opt) if k in PINNED else r for k, r in ranges.items()}
    batches = [None]
    if each_batch and "batch" in ranges:
        r = ranges["batch"]
        batches = [_pin(r, b) for b in range(r.min, r.max + 1) if b % r.multiple == 0]
    sides = _scaled(component, sizes) if "height" in ranges else [None]
    profiles = []
    for b in batches:
        for side in sides:
            one = dict(pinned) if b is None else {**pinned, "batch": b}
            if side is not None:
                one |= {"height": _pin(ranges["height"], side[0]), "width": _pin(ranges["width"], side[1])}
            profiles.append(_profile(_label(one), spec, _with_derived(spec, one)))
    return tuple(profiles)


def dim_ranges(
    component: str, spec: ComponentSpec, batch: BatchRange, sizes: tuple[tuple[int, int], ...]
) -> dict[str, DimRange]:
    """The recipe's range for every dim the spec's inputs use, checked against the spec."""
    used = {d for t in spec.inputs for d in t.dims if isinstance(d, str)}
    ranges = {name: rng for name, rng in spec.ranges.items() if name in used}
    if "batch" in ranges:
        ranges["batch"] = _narrow(component, spec, "batch", batch_values(component, batch))
    if "tokens" in ranges:  # prompts are always padded to 77 tokens: a fixed length lets TensorRT specialise
        ranges["tokens"] = _narrow(component, spec, "tokens", (TEXT_TOKENS,) * 3)
    if {"height", "width"} <= used and component in SCALE:
        scaled = _scaled(component, sizes)
        for axis, i in (("height", 0), ("width", 1)):
            values = [s[i] for s in scaled]
            ranges[axis] = _narrow(component, spec, axis, (min(values), values[0], max(values)))
    return _with_derived(spec, ranges)


def _with_derived(spec: ComponentSpec, ranges: dict[str, DimRange]) -> dict[str, DimRange]:
    """Derived dims (a step graph's cfg_batch = 2 x batch) follow their base dim's narrowed range."""
    out = dict(ranges)
    for dim, (base, factor) in derived_dims(spec).items():
        if dim in out and base in out:
            r = out[base]
            out[dim] = DimRange(r.min * factor, r.opt * factor, r.max * factor, r.multiple * factor)
    return out


def batch_values(component: str, batch: BatchRange) -> tuple[int, int, int]:
    factor = 2 if component in CFG_DOUBLED else 1
    return batch.min, batch.opt * factor, batch.max * factor


def _scaled(component: str, sizes: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    scale = SCALE[component]
    return list(dict.fromkeys((h * scale, w * scale) for h, w in sizes))


def _narrow(component: str, spec: ComponentSpec, dim: str, values: tuple[int, int, int]) -> DimRange:
    allowed = spec.ranges[dim]
    for v in values:
        if v % allowed.multiple:
            raise RecipeError(
                f"{component}: {dim} {v} (from the recipe's [shapes]/[batch]) is not a multiple of "
                f"{allowed.multiple}, which the graph needs; pick sizes that are"
            )
        if not allowed.min <= v <= allowed.max:
            raise RecipeError(
                f"{component}: {dim} {v} (from the recipe's [shapes]/[batch]) is outside the range "
                f"{allowed.min}..{allowed.max} that the component's I/O spec declares"
            )
    return DimRange(*values, multiple=allowed.multiple)


def _pin(rng: DimRange, value: int) -> DimRange:
    return DimRange(value, value, value, rng.multiple)


def _label(ranges: Mapping[str, DimRange]) -> str:
    label = f"b{ranges['batch'].opt}" if "batch" in ranges else "static"
    if "height" in ranges:
        label += f"-{ranges['width'].opt}x{ranges['height'].opt}"
    return label


def _profile(label: str, spec: ComponentSpec, ranges: Mapping[str, DimRange]) -> Profile:
    return Profile(label=label, dims=MappingProxyType(dict(ranges)), shapes=MappingProxyType(spec.profile(ranges)))
