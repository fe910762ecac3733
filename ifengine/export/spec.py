"""One declared I/O spec per exported component: the contract between exporter, engine builder and runtime.

Each spec names its inputs and outputs, their dtypes and symbolic dims, and the range every symbolic dim
may take. The exporter turns it into ``dynamic_axes`` and sample inputs, the engine builder into
TensorRT optimisation profiles (min/opt/max), the runtime into static buffer shapes. Nothing else in
the code base states these shapes.

Dtype "model" means "the graph's precision" (float32, float16 or bfloat16 by export variant); other
dtypes are fixed whatever the precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from ..models.config import UNetConfig, VAEConfig

MODEL = "model"
TEXT_TOKENS = 77


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # MODEL, "float32" or "int64"
    dims: tuple[str | int, ...]  # ints are fixed sizes, strings name a dim with a range


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


@dataclass(frozen=True)
class ComponentSpec:
    """Inputs, outputs and dim ranges of one exported graph."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    ranges: Mapping[str, DimRange] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranges", MappingProxyType(dict(self.ranges)))
        named = {d for t in self.inputs + self.outputs for d in t.dims if isinstance(d, str)}
        missing = named - set(self.ranges)
        if missing:
            raise ValueError(f"{self.name}: dims without a range: {sorted(missing)}")

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export`` dynamic axes: every named dim of every tensor."""
        return {t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str)}
                for t in self.inputs + self.outputs if any(isinstance(d, str) for d in t.dims)}

    def shape(self, tensor: TensorSpec, dims: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else dims[d] for d in tensor.dims)

    def input_shapes(self, **dims: int) -> dict[str, tuple[int, ...]]:
        """Concrete input shapes for the given dim values (checked against the ranges)."""
        self.check_dims(dims)
        return {t.name: self.shape(t, dims) for t in self.inputs}

    def check_dims(self, dims: Mapping[str, int]) -> None:
        """Every dim the inputs use has a value inside its range (output-only dims follow from them)."""
        used = {d for t in self.inputs for d in t.dims if isinstance(d, str)}
        for name, rng in ((n, r) for n, r in self.ranges.items() if n in used):
            if name not in dims:
                raise ValueError(f"{self.name}: no value for dim {name!r}")
            if not rng.contains(dims[name]):
                raise ValueError(f"{self.name}: {name}={dims[name]} is outside {rng.min}..{rng.max} "
                                 f"(multiple of {rng.multiple})")

    def profile(self, ranges: Mapping[str, DimRange] | None = None) -> dict[str, tuple[tuple[int, ...], ...]]:
        """TensorRT-style (min, opt, max) shape per input, from this spec's ranges or narrower ones."""
        use = {**self.ranges, **(ranges or {})}
        pick = lambda attr: {k: getattr(r, attr) for k, r in use.items()}  # noqa: E731
        return {t.name: tuple(self.shape(t, pick(a)) for a in ("min", "opt", "max")) for t in self.inputs}


def _image_ranges(lo: int, opt: int, hi: int, multiple: int, batch_max: int) -> dict[str, DimRange]:
    return {"batch": DimRange(1, 2, batch_max), "height": DimRange(lo, opt, hi, multiple),
            "width": DimRange(lo, opt, hi, multiple)}


def t5_spec(hidden: int = 4096, batch_max: int = 16) -> ComponentSpec:
    return ComponentSpec(
        name="t5",
        inputs=(TensorSpec("input_ids", "int64", ("batch", TEXT_TOKENS)),
                TensorSpec("attention_mask", "int64", ("batch", TEXT_TOKENS))),
        outputs=(TensorSpec("text_embeds", MODEL, ("batch", TEXT_TOKENS, hidden)),),
        ranges={"batch": DimRange(1, 2, batch_max)})


def clip_spec(hidden: int = 1024, batch_max: int = 16) -> ComponentSpec:
    return ComponentSpec(
        name="clip",
        inputs=(TensorSpec("input_ids", "int64", ("batch", TEXT_TOKENS)),),
        outputs=(TensorSpec("text_embeds", MODEL, ("batch", TEXT_TOKENS, hidden)),),
        ranges={"batch": DimRange(1, 2, batch_max)})


def if_unet_spec(config: UNetConfig, stage: int, batch_max: int = 16) -> ComponentSpec:
    """Stage I (pixels 64 by default) or II (256) IF U-Net; batch includes the CFG doubling."""
    lo, opt, hi = (32, 64, 128) if stage == 1 else (128, 256, 512)
    text = config.encoder_hid_dim or config.cross_attention_dim[0]
    inputs = [TensorSpec("sample", MODEL, ("batch", config.in_channels, "height", "width")),
              TensorSpec("timestep", "float32", ("batch",)),
              TensorSpec("encoder_hidden_states", MODEL, ("batch", TEXT_TOKENS, text))]
    if config.class_embed_type == "timestep":
        inputs.append(TensorSpec("class_labels", "float32", ("batch",)))
    return ComponentSpec(
        name=f"unet{stage}", inputs=tuple(inputs),
        outputs=(TensorSpec("out_sample", MODEL, ("batch", config.out_channels, "height", "width")),),
        ranges=_image_ranges(lo, opt, hi, config.downsample_factor, batch_max))


def x4_unet_spec(config: UNetConfig, batch_max: int = 16) -> ComponentSpec:
    """x4 upscaler U-Net on latents the size of the stage II image (256 by default)."""
    return ComponentSpec(
        name="x4_unet",
        inputs=(TensorSpec("sample", MODEL, ("batch", config.in_channels, "height", "width")),
                TensorSpec("timestep", "float32", ("batch",)),
                TensorSpec("encoder_hidden_states", MODEL, ("batch", TEXT_TOKENS, config.cross_attention_dim[0])),
                TensorSpec("class_labels", "int64", ("batch",))),
        outputs=(TensorSpec("out_sample", MODEL, ("batch", config.out_channels, "height", "width")),),
        ranges=_image_ranges(128, 256, 512, config.downsample_factor, batch_max))


def vae_decoder_spec(config: VAEConfig, batch_max: int = 8) -> ComponentSpec:
    """VAE decoder: latents (stage II size) -> image at x4."""
    f = config.upscale_factor
    return ComponentSpec(
        name="vae_decoder",
        inputs=(TensorSpec("latents", MODEL, ("batch", config.latent_channels, "height", "width")),),
        outputs=(TensorSpec("image", MODEL, ("batch", config.out_channels, "out_height", "out_width")),),
        ranges={"batch": DimRange(1, 1, batch_max), "height": DimRange(64, 256, 512, 8),
                "width": DimRange(64, 256, 512, 8), "out_height": DimRange(64 * f, 256 * f, 512 * f, 8 * f),
                "out_width": DimRange(64 * f, 256 * f, 512 * f, 8 * f)})
