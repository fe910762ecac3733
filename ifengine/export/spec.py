"""One declared I/O spec per exported component: the contract between exporter, engine builder and runtime.

Each spec names its inputs and outputs, their dtypes and symbolic dims, and the range every symbolic dim
may take. The exporter turns it into ``dynamic_axes`` and sample inputs, the engine builder into
TensorRT optimisation profiles (min/opt/max), the runtime into static buffer shapes. Nothing else in
the code base states these shapes.

Dtype "model" means "the graph's precision" (float32, float16 or bfloat16 by export variant); other
dtypes are fixed whatever the precision. ``ComponentSpec.with_dtype`` turns a spec into the concrete one
an artifact records in its manifest (``to_dict``/``from_dict``).

A dim may be *derived* from another (the CFG batch is twice the image batch, the VAE output four times
its input): its range follows from the base dim's, and shapes fill it in. The step graphs' specs live in
``step_spec.py``; the size ranges of a whole cascade in ``sizes.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any
from collections.abc import Mapping

from ..models.config import UNetConfig, VAEConfig
from ..errors import IFEngineError
from ..facts import TEXT_TOKENS

MODEL = "model"
DTYPES = (MODEL, "float32", "float16", "bfloat16", "int64")


class SpecError(IFEngineError, ValueError):
    """A spec, or a shape asked of it, that cannot be honoured; the message names the dim and its range."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # MODEL, "float32", "float16", "bfloat16" or "int64"
    dims: tuple[str | int, ...]  # ints are fixed sizes, strings name a dim with a range

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TensorSpec:
        return cls(raw["name"], raw["dtype"], tuple(raw["dims"]))


@dataclass(frozen=True)
class DimRange:
    min: int
    opt: int
    max: int
    multiple: int = 1  # every value must be a multiple (U-Net downsampling)

    def __post_init__(self) -> None:
        if not (1 <= self.min <= self.opt <= self.max):
            raise ValueError(f"dim range needs 1 <= min <= opt <= max, got {self}")
        for v in (self.min, self.opt, self.max):
            if v % self.multiple:
                raise ValueError(f"dim range values must be multiples of {self.multiple}, got {self}")

    def contains(self, value: int) -> bool:
        return self.min <= value <= self.max and value % self.multiple == 0

    def scaled(self, factor: int) -> DimRange:
        return DimRange(self.min * factor, self.opt * factor, self.max * factor, self.multiple * factor)

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max, "multiple": self.multiple}


@dataclass(frozen=True)
class ComponentSpec:
    """Inputs, outputs and dim ranges of one exported graph."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    ranges: Mapping[str, DimRange] = field(default_factory=dict)
    derived: Mapping[str, tuple[str, int]] = field(default_factory=dict)  # dim -> (base dim, factor)

    def __post_init__(self) -> None:
        ranges = dict(self.ranges)
        for dim, (base, factor) in self.derived.items():
            ranges.setdefault(dim, ranges[base].scaled(factor))
        object.__setattr__(self, "ranges", MappingProxyType(ranges))
        object.__setattr__(self, "derived", MappingProxyType({k: tuple(v) for k, v in self.derived.items()}))
        named = {d for t in self.inputs + self.outputs for d in t.dims if isinstance(d, str)}
        missing = named - set(self.ranges)
        if missing:
            raise SpecError(f"{self.name}: dims without a range: {sorted(missing)}")
        for t in self.inputs + self.outputs:
            if t.dtype not in DTYPES:
                raise SpecError(f"{self.name}: {t.name} has unknown dtype {t.dtype!r}; use one of {DTYPES}")

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export`` dynamic axes: every named dim of every tensor."""
        return {
            t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str)}
            for t in self.inputs + self.outputs
            if any(isinstance(d, str) for d in t.dims)
        }

    def shape(self, tensor: TensorSpec, dims: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else dims[d] for d in tensor.dims)

    def input_shapes(self, **dims: int) -> dict[str, tuple[int, ...]]:
        """Concrete input shapes for the given dim values (checked against the ranges)."""
        dims = self.complete(dims)
        self.check_dims(dims)
        return {t.name: self.shape(t, dims) for t in self.inputs}

    def output_shapes(self, **dims: int) -> dict[str, tuple[int, ...]]:
        """Concrete output shapes; every output dim is an input dim or derived from one."""
        dims = self.complete(dims)
        self.check_dims(dims)
        return {t.name: self.shape(t, dims) for t in self.outputs}

    def complete(self, dims: Mapping[str, int]) -> dict[str, int]:
        """``dims`` plus every derived dim computed from its base (a given derived value must agree)."""
        full = dict(dims)
        for dim, (base, factor) in self.derived.items():
            if base in full:
                value = full[base] * factor
                if full.setdefault(dim, value) != value:
                    raise SpecError(f"{self.name}: {dim} must be {factor} x {base} = {value}, got {full[dim]}")
        return full

    def check_dims(self, dims: Mapping[str, int]) -> None:
        """Every dim the inputs use has a value inside its range (output-only dims follow from them)."""
        used = {d for t in self.inputs for d in t.dims if isinstance(d, str)}
        for name, rng in ((n, r) for n, r in self.ranges.items() if n in used):
            if name not in dims:
                raise SpecError(f"{self.name}: no value for dim {name!r}")
            if not rng.contains(dims[name]):
                raise SpecError(
                    f"{self.name}: {name}={dims[name]} is outside {rng.min}..{rng.max} (multiple of {rng.multiple})"
                )

    def dims_at(self, point: str) -> dict[str, int]:
        """Every ranged dim at its "min", "opt" or "max" value."""
        return {name: getattr(rng, point) for name, rng in self.ranges.items()}

    def with_dtype(self, model_dtype: str) -> ComponentSpec:
        """The concrete spec of one exported variant: MODEL replaced by ``model_dtype``."""
        fix = lambda ts: tuple(replace(t, dtype=model_dtype) if t.dtype == MODEL else t for t in ts)  # noqa: E731
        return replace(self, inputs=fix(self.inputs), outputs=fix(self.outputs))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "ranges": {k: r.to_dict() for k, r in sorted(self.ranges.items())},
            "derived": {k: list(v) for k, v in sorted(self.derived.items())},
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ComponentSpec:
        return cls(
            name=raw["name"],
            inputs=tuple(TensorSpec.from_dict(t) for t in raw["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in raw["outputs"]),
            ranges={k: DimRange(**r) for k, r in raw["ranges"].items()},
            derived={k: (v[0], int(v[1])) for k, v in raw.get("derived", {}).items()},
        )

    def profile(self, ranges: Mapping[str, DimRange] | None = None) -> dict[str, tuple[tuple[int, ...], ...]]:
        """TensorRT-style (min, opt, max) shape per input, from this spec's ranges or narrower ones."""
        use = {**self.ranges, **(ranges or {})}
        pick = lambda attr: {k: getattr(r, attr) for k, r in use.items()}  # noqa: E731
        return {t.name: tuple(self.shape(t, pick(a)) for a in ("min", "opt", "max")) for t in self.inputs}


# Prompts are padded to 77 tokens; shorter sequences are allowed so a profile can be narrowed either way.
TOKEN_RANGE = DimRange(1, TEXT_TOKENS, TEXT_TOKENS)
TOKENS = "tokens"


def _image_ranges(
    lo: int, opt: int, hi: int, multiple: int, batch_max: int, sizes: DimRange | None = None
) -> dict[str, DimRange]:
    side = sizes or DimRange(lo, opt, hi, multiple)
    if side.multiple % multiple:
        raise SpecError(f"image sizes must be multiples of the U-Net's downsampling {multiple}, got {side}")
    return {"batch": DimRange(1, 2, batch_max), "height": side, "width": side, "tokens": TOKEN_RANGE}


def t5_spec(hidden: int = 4096, batch_max: int = 16) -> ComponentSpec:
    return ComponentSpec(
        name="t5",
        inputs=(
            TensorSpec("input_ids", "int64", ("batch", TOKENS)),
            TensorSpec("attention_mask", "int64", ("batch", TOKENS)),
        ),
        outputs=(TensorSpec("text_embeds", MODEL, ("batch", TOKENS, hidden)),),
        ranges={"batch": DimRange(1, 2, batch_max), TOKENS: TOKEN_RANGE},
    )


def clip_spec(hidden: int = 1024, batch_max: int = 16) -> ComponentSpec:
    return ComponentSpec(
        name="clip",
        inputs=(TensorSpec("input_ids", "int64", ("batch", TOKENS)),),
        outputs=(TensorSpec("text_embeds", MODEL, ("batch", TOKENS, hidden)),),
        ranges={"batch": DimRange(1, 2, batch_max), TOKENS: TOKEN_RANGE},
    )


def if_unet_spec(config: UNetConfig, stage: int, batch_max: int = 16, sizes: DimRange | None = None) -> ComponentSpec:
    """Stage I (pixels 64 by default) or II (256) IF U-Net; batch includes the CFG doubling.

    ``sizes`` overrides the height/width range (see ``sizes.cascade_sizes``)."""
    lo, opt, hi = (32, 64, 128) if stage == 1 else (128, 256, 512)
    text = config.encoder_hid_dim or config.cross_attention_dim[0]
    inputs = [
        TensorSpec("sample", MODEL, ("batch", config.in_channels, "height", "width")),
        TensorSpec("timestep", "float32", ("batch",)),
        TensorSpec("encoder_hidden_states", MODEL, ("batch", TOKENS, text)),
    ]
    if config.class_embed_type == "timestep":
        inputs.append(TensorSpec("class_labels", "float32", ("batch",)))
    return ComponentSpec(
        name=f"unet{stage}",
        inputs=tuple(inputs),
        outputs=(TensorSpec("out_sample", MODEL, ("batch", config.out_channels, "height", "width")),),
        ranges=_image_ranges(lo, opt, hi, config.downsample_factor, batch_max, sizes),
    )


def x4_unet_spec(config: UNetConfig, batch_max: int = 16, sizes: DimRange | None = None) -> ComponentSpec:
    """x4 upscaler U-Net on latents the size of the stage II image (256 by default)."""
    return ComponentSpec(
        name="x4_unet",
        inputs=(
            TensorSpec("sample", MODEL, ("batch", config.in_channels, "height", "width")),
            TensorSpec("timestep", "float32", ("batch",)),
            TensorSpec("encoder_hidden_states", MODEL, ("batch", TOKENS, config.cross_attention_dim[0])),
            TensorSpec("class_labels", "int64", ("batch",)),
        ),
        outputs=(TensorSpec("out_sample", MODEL, ("batch", config.out_channels, "height", "width")),),
        ranges=_image_ranges(128, 256, 512, config.downsample_factor, batch_max, sizes),
    )


def vae_decoder_spec(config: VAEConfig, batch_max: int = 8, sizes: DimRange | None = None) -> ComponentSpec:
    """VAE decoder: latents (stage II size, not yet divided by scaling_factor) -> image at x4."""
    f = config.upscale_factor
    side = sizes or DimRange(64, 256, 512, 8)
    return ComponentSpec(
        name="vae_decoder",
        inputs=(TensorSpec("latents", MODEL, ("batch", config.latent_channels, "height", "width")),),
        outputs=(TensorSpec("image", MODEL, ("batch", config.out_channels, "out_height", "out_width")),),
        ranges={"batch": DimRange(1, 1, batch_max), "height": side, "width": side},
        derived={"out_height": ("height", f), "out_width": ("width", f)},
    )
