"""The U-Net of IF stage I and stage II as one export-friendly torch module.

Parameter names equal diffusers' ``UNet2DConditionModel`` state-dict keys for these configs, so
``IFUNet(cfg).load_state_dict(diffusers_state_dict, strict=True)`` works. ``forward`` returns the raw
output tensor and has static control flow (branches only on the config), no host synchronisation and
no data-dependent shapes, so it traces and exports (TorchScript ONNX export and torch.export, with dynamic
batch/H/W) and suits CUDA-graph capture, provided timestep/class_labels come in as device tensors
(a Python number becomes a host-to-device copy).

Config values that diffusers itself ignores for these block types are accepted without effect:
``upcast_attention`` (the added-KV attention always upcasts its softmax), ``use_linear_projection``,
``transformer_layers_per_block``, ``downsample_padding`` and ``sample_size``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import IF_DOWN_BLOCKS, IF_UP_BLOCKS, UNetConfig
from .if_attention import TextTimeEmbedding
from .if_blocks import (
    AttentionSettings,
    ResnetDownsampleBlock2D,
    ResnetUpsampleBlock2D,
    SimpleCrossAttnDownBlock2D,
    SimpleCrossAttnUpBlock2D,
    UNetMidBlock2DSimpleCrossAttn,
)
from .layers import ResnetSettings, Timesteps, TimestepEmbedding, activation

IF_MID_BLOCK = "UNetMidBlock2DSimpleCrossAttn"
Number = int | float


class IFUNet(nn.Module):
    """IF stage I / stage II U-Net: eps + learned variance from (x_t, t, T5 states[, noise level])."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        validate_if_config(config)
        self.config = config
        c0, temb_dim = config.block_out_channels[0], time_embed_dim(config)
        self.conv_in = nn.Conv2d(config.in_channels, c0, 3, padding=1)
        self.time_proj = Timesteps(c0, config.flip_sin_to_cos, config.freq_shift)
        self.time_embedding = TimestepEmbedding(c0, temb_dim, act=config.act_fn)
        hid = config.encoder_hid_dim
        self.encoder_hid_proj = nn.Linear(hid, config.cross_attention_dim[0]) if hid is not None else None
        is_class = config.class_embed_type == "timestep"
        self.class_embedding = TimestepEmbedding(c0, temb_dim, act=config.act_fn) if is_class else None
        self.add_embedding = _text_embedding(config, temb_dim)
        act = config.time_embedding_act_fn
        self.time_embed_act = activation(act) if act else None
        resnet = _resnet_settings(config, temb_dim)
        # diffusers creates down_blocks and up_blocks before mid_block: keep its state_dict order
        self.down_blocks = nn.ModuleList(_down_block(config, i, resnet) for i in range(config.num_blocks))
        self.up_blocks = nn.ModuleList(_up_block(config, i, resnet) for i in range(config.num_blocks))
        self.mid_block = _mid_block(config, resnet.with_scale(config.mid_block_scale_factor))
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, c0, eps=config.norm_eps)
        self.conv_act = activation(config.act_fn)
        self.conv_out = nn.Conv2d(c0, config.out_channels, 3, padding=1)

    @classmethod
    def from_config_dict(cls, raw: dict[str, Any]) -> IFUNet:
        """Build from a diffusers ``unet/config.json`` dict (random weights; load a state dict after)."""
        return cls(UNetConfig.from_dict(raw))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | Number,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | Number | None = None,
    ) -> torch.Tensor:
        """sample (B, in, H, W); timestep scalar or (B,); encoder_hidden_states raw T5 states (B, L, hid);
        class_labels the stage II noise level, scalar or (B,). Returns (B, out, H, W)."""
        emb = self._embedding(sample, timestep, encoder_hidden_states, class_labels)
        context = encoder_hidden_states
        if self.encoder_hid_proj is not None:
            context = self.encoder_hid_proj(context)
        h = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (h,)
        for block in self.down_blocks:
            h, block_skips = block(h, emb, context)
            skips += block_skips
        h = self.mid_block(h, emb, context)
        for block in self.up_blocks:
            h = block(h, skips[-block.num_skips :], emb, context)
            skips = skips[: -block.num_skips]
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))

    def _embedding(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | Number,
        text: torch.Tensor,
        class_labels: torch.Tensor | Number | None,
    ) -> torch.Tensor:
        """Time embedding (+ noise-level embedding) (+ pooled-text embedding), then the optional act.

        The sinusoids are computed in float32 and cast to the sample's dtype before the MLPs, as diffusers
        does; the pooled text is the raw T5 states, before ``encoder_hid_proj``.
        """
        t = self.time_proj(_per_sample(timestep, sample)).to(sample.dtype)
        emb = self.time_embedding(t)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this U-Net has class_embed_type 'timestep': pass class_labels (the noise level)")
            labels = self.time_proj(_per_sample(class_labels, sample)).to(sample.dtype)
            emb = emb + self.class_embedding(labels).to(sample.dtype)
        if self.add_embedding is not None:
            emb = emb + self.add_embedding(text)
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        return emb


def _per_sample(value: torch.Tensor | Number, sample: torch.Tensor) -> torch.Tensor:
    """A scalar, 0-d or (B,) value as a (B,) tensor on the sample's device, by reshape + expand only."""
    if not torch.is_tensor(value):
        value = torch.tensor(value, device=sample.device)
    return value.to(sample.device).reshape(-1).expand(sample.shape[0])


def time_embed_dim(config: UNetConfig) -> int:
    return config.time_embedding_dim or 4 * config.block_out_channels[0]


def _text_embedding(config: UNetConfig, temb_dim: int) -> TextTimeEmbedding | None:
    if config.addition_embed_type != "text":
        return None
    # pools the raw text states: their width is encoder_hid_dim when a projection follows
    text_dim = config.encoder_hid_dim or config.cross_attention_dim[0]
    return TextTimeEmbedding(text_dim, temb_dim, heads=config.addition_embed_type_num_heads)


def _resnet_settings(config: UNetConfig, temb_dim: int) -> ResnetSettings:
    return ResnetSettings(
        temb_ch=temb_dim,
        groups=config.norm_num_groups,
        eps=config.norm_eps,
        act=config.act_fn,
        time_norm=config.resnet_time_scale_shift,
        skip_time_act=config.resnet_skip_time_act,
        output_scale=config.resnet_out_scale_factor,
    )


def _attention_settings(config: UNetConfig, head_dim: int, only_cross: bool) -> AttentionSettings:
    return AttentionSettings(
        head_dim=head_dim,
        context_dim=config.cross_attention_dim[0],
        groups=config.norm_num_groups,
        cross_norm=config.cross_attention_norm,
        only_cross=only_cross,
    )


def _down_block(config: UNetConfig, i: int, resnet: ResnetSettings) -> nn.Module:
    widths = config.block_out_channels
    in_ch, out_ch, layers = widths[max(i - 1, 0)], widths[i], config.layers_per_block[i]
    last = i == config.num_blocks - 1
    if config.down_block_types[i] == "ResnetDownsampleBlock2D":
        return ResnetDownsampleBlock2D(in_ch, out_ch, layers, resnet, add_downsample=not last)
    attn = _attention_settings(config, config.attention_head_dim[i], _only_cross(config, i))
    return SimpleCrossAttnDownBlock2D(in_ch, out_ch, layers, resnet, attn, add_downsample=not last)


def _up_block(config: UNetConfig, i: int, resnet: ResnetSettings) -> nn.Module:
    """Up block i mirrors down block n-1-i and has one more resnet (it also consumes the downsampler's skip)."""
    n, rev = config.num_blocks, config.block_out_channels[::-1]
    prev_ch, out_ch, in_ch = rev[max(i - 1, 0)], rev[i], rev[min(i + 1, n - 1)]
    layers, last = config.layers_per_block[n - 1 - i] + 1, i == n - 1
    if config.up_block_types[i] == "ResnetUpsampleBlock2D":
        return ResnetUpsampleBlock2D(in_ch, prev_ch, out_ch, layers, resnet, add_upsample=not last)
    # diffusers indexes attention_head_dim un-reversed for up blocks (only_cross_attention reversed);
    # we follow it so non-uniform configs compute what the checkpoint computes in diffusers
    attn = _attention_settings(config, config.attention_head_dim[i], _only_cross(config, n - 1 - i))
    return SimpleCrossAttnUpBlock2D(in_ch, prev_ch, out_ch, layers, resnet, attn, add_upsample=not last)


def _only_cross(config: UNetConfig, i: int) -> bool:
    # a UNetConfig built by hand may leave only_cross_attention empty: that means "never"
    return bool(config.only_cross_attention[i]) if config.only_cross_attention else False


def _mid_block(config: UNetConfig, resnet: ResnetSettings) -> UNetMidBlock2DSimpleCrossAttn:
    attn = _attention_settings(config, config.attention_head_dim[-1], bool(config.mid_block_only_cross_attention))
    return UNetMidBlock2DSimpleCrossAttn(config.block_out_channels[-1], resnet, attn)


def validate_if_config(config: UNetConfig) -> None:
    """Refuse every config value this module does not implement, naming the field."""
    config.validate()
    for i, name in enumerate(config.down_block_types):
        _require(name in IF_DOWN_BLOCKS, f"down_block_types[{i}] {name!r} is not an IF block; use {IF_DOWN_BLOCKS}")
    for i, name in enumerate(config.up_block_types):
        _require(name in IF_UP_BLOCKS, f"up_block_types[{i}] {name!r} is not an IF block; use {IF_UP_BLOCKS}")
    _require(
        config.mid_block_type == IF_MID_BLOCK,
        f"mid_block_type {config.mid_block_type!r} is not supported; use {IF_MID_BLOCK!r}",
    )
    for field in ("layers_per_block", "attention_head_dim", "cross_attention_dim"):
        _require(len(getattr(config, field)) == config.num_blocks, f"{field} needs one entry per block")
    _require(
        len(config.only_cross_attention) in (0, config.num_blocks), "only_cross_attention needs one entry per block"
    )
    _require(
        config.num_attention_heads is None,
        "num_attention_heads is not supported (IF configs give attention_head_dim, the per-head width)",
    )
    _require(
        config.class_embed_type is not None or config.num_class_embeds is None,
        "num_class_embeds (a learned class-embedding table) is not supported; IF uses class_embed_type 'timestep'",
    )
    _require(
        len(set(config.cross_attention_dim)) == 1,
        f"cross_attention_dim must be one value for all blocks, got {config.cross_attention_dim}",
    )
    _require(config.norm_num_groups is not None, "norm_num_groups must be set (IF U-Nets use GroupNorm)")
    _require(
        config.mid_block_only_cross_attention is not None or not any(config.only_cross_attention),
        "mid_block_only_cross_attention must be set explicitly when only_cross_attention is used "
        "(diffusers' default for it depends on whether only_cross_attention was a single bool)",
    )
    _check_activation("act_fn", config.act_fn)
    if config.time_embedding_act_fn is not None:
        _check_activation("time_embedding_act_fn", config.time_embedding_act_fn)
    _require(
        config.resnet_time_scale_shift in ("default", "scale_shift"),
        f"resnet_time_scale_shift {config.resnet_time_scale_shift!r} is not supported",
    )


def _check_activation(field: str, name: str) -> None:
    try:
        activation(name)
    except ValueError as err:
        raise ValueError(f"{field}: {err}") from None


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
