"""Component configurations as frozen dataclasses.

Each dataclass holds the subset of a diffusers/transformers ``config.json`` that changes the computation.
``from_dict`` reads a checkpoint's own config (which always wins over a preset), normalises scalars that
diffusers allows per block into tuples, ignores bookkeeping keys, and refuses values our modules do not
implement, so an unsupported checkpoint fails at load time with the field named, not mid-run.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field, fields
from typing import Any
from ..facts import TEXT_TOKENS

log = logging.getLogger(__name__)

IF_DOWN_BLOCKS = ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D")
IF_UP_BLOCKS = ("ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D")
SD_DOWN_BLOCKS = ("DownBlock2D", "CrossAttnDownBlock2D")
SD_UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DSimpleCrossAttn", "UNetMidBlock2DCrossAttn")

# Settings our modules do not implement, with the value that makes them a no-op: a checkpoint that sets
# anything else would load and silently compute something different, so from_dict refuses it.
_UNET_FIXED = {
    "time_embedding_type": "positional",
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "class_embeddings_concat": False,
    "center_input_sample": False,
    "attention_type": "default",
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "dual_cross_attention": False,
    "projection_class_embeddings_input_dim": None,
    "addition_time_embed_dim": None,
    "reverse_transformer_layers_per_block": None,
}
_VAE_FIXED = {"use_post_quant_conv": True, "shift_factor": None, "latents_mean": None, "latents_std": None}

# Per-block settings diffusers accepts either as one value or as one value per down block.
_PER_BLOCK = (
    "layers_per_block",
    "attention_head_dim",
    "num_attention_heads",
    "only_cross_attention",
    "cross_attention_dim",
    "transformer_layers_per_block",
)


@dataclass(frozen=True)
class UNetConfig:
    """A U-Net of the IF cascade (stage I, stage II) or the SD x4 upscaler (stage III)."""

    in_channels: int
    out_channels: int
    block_out_channels: tuple[int, ...]
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    mid_block_type: str
    layers_per_block: tuple[int, ...]
    cross_attention_dim: tuple[int, ...]
    attention_head_dim: tuple[int, ...]
    num_attention_heads: tuple[int, ...] | None = None
    only_cross_attention: tuple[bool, ...] = ()
    transformer_layers_per_block: tuple[int, ...] = ()
    sample_size: int = 64
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    encoder_hid_dim: int | None = None
    addition_embed_type: str | None = None
    addition_embed_type_num_heads: int = 64
    class_embed_type: str | None = None
    num_class_embeds: int | None = None
    time_embedding_dim: int | None = None
    time_embedding_act_fn: str | None = None
    resnet_time_scale_shift: str = "default"
    resnet_skip_time_act: bool = False
    resnet_out_scale_factor: float = 1.0
    cross_attention_norm: str | None = None
    use_linear_projection: bool = False
    upcast_attention: bool = False
    mid_block_only_cross_attention: bool | None = None
    encoder_hid_dim_type: str | None = None

    @property
    def num_blocks(self) -> int:
        return len(self.block_out_channels)

    @property
    def downsample_factor(self) -> int:
        """Total spatial reduction: every down block but the last halves H and W."""
        return 2 ** (self.num_blocks - 1)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> UNetConfig:
        _refuse_unsupported(raw, _UNET_FIXED, "U-Net")
        raw = _known(cls, raw)
        n = len(raw["block_out_channels"])
        if isinstance(raw.get("only_cross_attention"), bool) and raw.get("mid_block_only_cross_attention") is None:
            # diffusers lets a single bool also decide the mid block; the tuple form below would lose that
            raw["mid_block_only_cross_attention"] = raw["only_cross_attention"]
        for key in _PER_BLOCK:
            if key in raw and raw[key] is not None:
                raw[key] = _per_block(raw[key], n, key)
        raw.setdefault("layers_per_block", (2,) * n)
        raw.setdefault("attention_head_dim", (8,) * n)
        raw.setdefault("cross_attention_dim", (1280,) * n)
        raw.setdefault("only_cross_attention", (False,) * n)
        raw.setdefault("transformer_layers_per_block", (1,) * n)
        for key in ("block_out_channels", "down_block_types", "up_block_types"):
            raw[key] = tuple(raw[key])
        config = cls(**raw)
        config.validate()
        return config

    def validate(self) -> None:
        n = self.num_blocks
        _check(
            len(self.down_block_types) == n and len(self.up_block_types) == n,
            "down_block_types and up_block_types need one entry per block_out_channels entry",
        )
        for name in self.down_block_types:
            _check(name in IF_DOWN_BLOCKS + SD_DOWN_BLOCKS, f"unsupported down block {name!r}")
        for name in self.up_block_types:
            _check(name in IF_UP_BLOCKS + SD_UP_BLOCKS, f"unsupported up block {name!r}")
        _check(self.mid_block_type in MID_BLOCKS, f"unsupported mid block {self.mid_block_type!r}")
        _check(
            self.addition_embed_type in (None, "text"),
            f"unsupported addition_embed_type {self.addition_embed_type!r} (only 'text' or none)",
        )
        _check(
            self.class_embed_type in (None, "timestep"),
            f"unsupported class_embed_type {self.class_embed_type!r} (only 'timestep' or none)",
        )
        _check(
            self.encoder_hid_dim_type in (None, "text_proj"),
            f"unsupported encoder_hid_dim_type {self.encoder_hid_dim_type!r} (only 'text_proj' or none)",
        )
        _check(
            self.cross_attention_norm in (None, "group_norm"),
            f"unsupported cross_attention_norm {self.cross_attention_norm!r}",
        )

    def replace(self, **changes: Any) -> UNetConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class VAEConfig:
    """The AutoencoderKL of the x4 upscaler; only its decoder runs in the cascade."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    act_fn: str = "silu"
    scaling_factor: float = 0.08333
    mid_block_add_attention: bool = True
    force_upcast: bool = True
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 3

    @property
    def upscale_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> VAEConfig:
        _refuse_unsupported(raw, _VAE_FIXED, "VAE")
        raw = _known(cls, raw)
        for key in ("block_out_channels", "up_block_types", "down_block_types"):
            if key in raw:
                raw[key] = tuple(raw[key])
        config = cls(**raw)
        for name in config.up_block_types:
            _check(name == "UpDecoderBlock2D", f"unsupported VAE up block {name!r}")
        return config


@dataclass(frozen=True)
class TextEncoderConfig:
    """Size of a transformers text encoder (T5 encoder or CLIP text model); used for presets and planning.

    Real checkpoints are loaded through transformers with their own config.json; this only describes them.
    """

    kind: str  # "t5" or "clip"
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_size: int
    vocab_size: int
    max_length: int = TEXT_TOKENS
    head_dim: int = 64
    relative_buckets: int = 32
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def transformers_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``T5Config`` / ``CLIPTextConfig`` describing this encoder."""
        if self.kind == "t5":
            return dict(
                d_model=self.hidden_size,
                d_ff=self.ffn_size,
                d_kv=self.head_dim,
                num_layers=self.num_layers,
                num_heads=self.num_heads,
                vocab_size=self.vocab_size,
                relative_attention_num_buckets=self.relative_buckets,
                feed_forward_proj="gated-gelu",
                is_encoder_decoder=False,
                **self.extra,
            )
        return dict(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.ffn_size,
            vocab_size=self.vocab_size,
            max_position_embeddings=self.max_length,
            **self.extra,
        )


def _known(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    """Keep the keys the dataclass knows; log the rest once (they do not change our computation)."""
    names = {f.name for f in fields(cls)}
    ignored = sorted(k for k in raw if k not in names and not k.startswith("_"))
    if ignored:
        log.debug("%s ignores config keys %s", cls.__name__, ignored)
    return {k: v for k, v in raw.items() if k in names}


def _refuse_unsupported(raw: dict[str, Any], fixed: dict[str, Any], what: str) -> None:
    for key, neutral in fixed.items():
        if key in raw and raw[key] != neutral:
            raise ValueError(
                f"{what} config sets {key}={raw[key]!r}, which ifengine does not implement (supported: {neutral!r})"
            )


def _per_block(value: Any, n: int, key: str) -> tuple:
    if isinstance(value, (list, tuple)):
        _check(len(value) == n, f"{key} has {len(value)} entries but the U-Net has {n} blocks")
        return tuple(value)
    return (value,) * n


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
