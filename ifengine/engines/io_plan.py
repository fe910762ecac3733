"""I/O planning for a built engine: per-dim ranges, largest buffer shapes, per-call shapes. Pure Python.

An engine's manifest records its I/O spec and its optimisation profile; from them this module knows the
range of every named dim (output-only dims such as the VAE's ``out_height`` follow from an input dim by a
fixed factor), so the runtime can allocate every buffer once at its largest size and, per call, check
the requested shapes against the profile before anything is enqueued.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from collections.abc import Mapping

from ..dtypes import ITEMSIZE
from ..export.spec import ComponentSpec, DimRange, TensorSpec
from .specs import derived_dims as declared_derivations, spec_from_dict


@dataclass(frozen=True)
class IOPlan:
    name: str
    spec: ComponentSpec
    dims: Mapping[str, DimRange]  # every named dim of inputs and outputs, as built
    dtypes: Mapping[str, str]

    @classmethod
    def from_manifest(cls, manifest: Mapping) -> IOPlan:
        spec = spec_from_dict(manifest["spec"])
        dims = profile_dims(spec, manifest["profile"]["inputs"])
        dims.update(derived_dims(spec, dims))  # output-only dims (the VAE's out_height)
        return cls(
            name=manifest.get("name", spec.name),
            spec=spec,
            dims=MappingProxyType(dims),
            dtypes=MappingProxyType(dict(manifest["io_dtypes"])),
        )

    @classmethod
    def from_spec(cls, spec: ComponentSpec) -> IOPlan:
        """The plan of an exported graph run as it is (ONNX Runtime): its spec's own ranges are the profile."""
        return cls(
            name=spec.name,
            spec=spec,
            dims=MappingProxyType(dict(spec.ranges)),
            dtypes=MappingProxyType({t.name: t.dtype for t in spec.inputs + spec.outputs}),
        )

    @property
    def tensors(self) -> tuple[TensorSpec, ...]:
        return self.spec.inputs + self.spec.outputs

    def shape(self, tensor: TensorSpec, dims: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else dims[d] for d in tensor.dims)

    def max_shapes(self) -> dict[str, tuple[int, ...]]:
        largest = {k: r.max for k, r in self.dims.items()}
        return {t.name: self.shape(t, largest) for t in self.tensors}

    def nbytes(self, name: str, shape: tuple[int, ...]) -> int:
        dtype = self.dtypes.get(name)
        if dtype not in ITEMSIZE:
            raise ValueError(f"{self.name}: tensor {name!r} has no known dtype ({dtype!r})")
        return math.prod(shape) * ITEMSIZE[dtype]

    def full_dims(self, dims: Mapping[str, int]) -> dict[str, int]:
        """Input dims checked against the profile, plus the dims that follow from them (cfg_batch, out_height)."""
        full = dict(dims)
        for name, (source, factor) in _derivations(self.spec).items():
            if source in full and full.setdefault(name, full[source] * factor) != full[source] * factor:
                raise ValueError(
                    f"{self.name}: {name} must be {factor} x {source} = {full[source] * factor}, got {full[name]}"
                )
        used = {d for t in self.spec.inputs for d in t.dims if isinstance(d, str)}
        missing = sorted(used - set(full))
        if missing:
            raise ValueError(f"{self.name}: no value for dim(s) {', '.join(missing)}")
        for name in sorted(used):
            rng = self.dims[name]
            if not rng.contains(full[name]):
                raise ValueError(
                    f"{self.name}: {name}={full[name]} is outside the engine's profile "
                    f"{rng.min}..{rng.max} (multiple of {rng.multiple}); build an engine that covers "
                    f"it (add the size or batch to the recipe)"
                )
        return {k: full[k] for k in self.dims}

    def dims_of(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        """Read named dims off concrete input shapes, checking fixed sizes and agreement between inputs."""
        found: dict[str, int] = {}
        for t in self.spec.inputs:
            if t.name not in shapes:
                raise ValueError(f"{self.name}: input {t.name!r} is missing")
            shape = tuple(shapes[t.name])
            if len(shape) != len(t.dims):
                raise ValueError(f"{self.name}: {t.name} has shape {shape}, expected {len(t.dims)} dims {t.dims}")
            for size, dim in zip(shape, t.dims, strict=True):
                if isinstance(dim, int) and size != dim:
                    raise ValueError(f"{self.name}: {t.name} has shape {shape}, expected {t.dims}")
                if isinstance(dim, str) and found.setdefault(dim, size) != size:
                    raise ValueError(f"{self.name}: inputs disagree on {dim} ({found[dim]} vs {size})")
        return found

    def io_shapes(self, dims: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        full = self.full_dims(dims)
        return {t.name: self.shape(t, full) for t in self.tensors}


def profile_dims(spec: ComponentSpec, profile: Mapping[str, Mapping]) -> dict[str, DimRange]:
    """Per-dim (min, opt, max) read off a profile's per-input shapes; inputs must agree on shared dims."""
    dims: dict[str, DimRange] = {}
    for t in spec.inputs:
        entry = profile.get(t.name)
        if entry is None:
            raise ValueError(f"{spec.name}: the profile has no shapes for input {t.name!r}")
        for axis, dim in enumerate(t.dims):
            if isinstance(dim, int):
                continue
            multiple = spec.ranges[dim].multiple
            rng = DimRange(entry["min"][axis], entry["opt"][axis], entry["max"][axis], multiple)
            if dims.setdefault(dim, rng) != rng:
                raise ValueError(f"{spec.name}: the profile gives {dim} two ranges ({dims[dim]} and {rng})")
    return dims


def derived_dims(spec: ComponentSpec, dims: Mapping[str, DimRange]) -> dict[str, DimRange]:
    """Ranges of output-only dims, scaled from the input dim they follow."""
    inputs = {d for t in spec.inputs for d in t.dims if isinstance(d, str)}
    out = {}
    for name, (source, factor) in _derivations(spec).items():
        if name not in inputs:
            r = dims[source]
            out[name] = DimRange(r.min * factor, r.opt * factor, r.max * factor, r.multiple * factor)
    return out


def _derivations(spec: ComponentSpec) -> dict[str, tuple[str, int]]:
    """dim -> (base dim, integer factor): the spec's declared derivations, and for output-only dims of
    older specs, the input dim whose declared range theirs is a fixed multiple of (out_height = 4 x height).
    A dim that follows no input dim cannot be sized ahead of time, which is an error in the spec."""
    found = declared_derivations(spec)
    inputs = {d for t in spec.inputs for d in t.dims if isinstance(d, str)}
    outputs = {d for t in spec.outputs for d in t.dims if isinstance(d, str)} - inputs - set(found)
    for name in sorted(outputs):
        # prefer the input dim the name ends with (out_height -> height)
        for source in sorted(inputs, key=lambda s: (not name.endswith(s), s)):
            factor = _factor(spec.ranges[name], spec.ranges[source])
            if factor:
                found[name] = (source, factor)
                break
        else:
            raise ValueError(f"{spec.name}: output dim {name!r} does not follow any input dim by a fixed factor")
    return found


def _factor(out: DimRange, src: DimRange) -> int | None:
    if out.min % src.min:
        return None
    k = out.min // src.min
    return k if (out.opt, out.max) == (src.opt * k, src.max * k) else None
