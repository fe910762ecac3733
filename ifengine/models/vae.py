"""The decoder half of the x4 upscaler's AutoencoderKL, export-friendly, with an optional tiled decode.

Only ``post_quant_conv`` and ``decoder`` run in the cascade; their parameter names equal those keys of
diffusers' ``AutoencoderKL`` state dict, so a full VAE checkpoint filtered with ``decoder_state_dict``
loads strictly.

Around the VAE, diffusers' ``StableDiffusionUpscalePipeline`` casts the latents to the VAE's dtype and
decodes ``latents / scaling_factor``; when the VAE is float16 and ``force_upcast`` is set it runs the VAE
in float32 instead (float16 overflows in this decoder), bfloat16 is not upcast. ``decode`` does the
scaling and cast; ``decode_dtype`` tells a loader which dtype to hold the weights in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from .config import VAEConfig
from .layers import ResnetBlock2D, Upsample2D, activation
from .x4_blocks import Attention

log = logging.getLogger(__name__)

# AutoencoderKL keys the decode path needs; encoder.* and quant_conv.* are dropped.
DECODER_PREFIXES = ("post_quant_conv.", "decoder.")
_EPS = 1e-6  # diffusers' Decoder fixes every norm epsilon here, independent of the config


def decoder_state_dict(full: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the keys of a full AutoencoderKL state dict that start with one of ``DECODER_PREFIXES``."""
    kept = {k: v for k, v in full.items() if k.startswith(DECODER_PREFIXES)}
    log.debug("VAE decoder keeps %d of %d keys (prefixes %s)", len(kept), len(full), DECODER_PREFIXES)
    return kept


def decode_dtype(config: VAEConfig, dtype: torch.dtype) -> torch.dtype:
    """The dtype to run the decoder in when the cascade runs in ``dtype`` (float16 -> float32 on force_upcast)."""
    return torch.float32 if dtype == torch.float16 and config.force_upcast else dtype


class MidAttention(Attention):
    """Single-head spatial self-attention of the VAE mid block: group norm, attention, residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__(channels, heads=1, dim_head=channels, bias=True)
        self.group_norm = nn.GroupNorm(groups, channels, eps=_EPS)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        out = super().forward(tokens)
        return out.transpose(1, 2).reshape(x.shape) + x


class MidBlock(nn.Module):
    """resnet, (attention, resnet) at the latent resolution; no time embedding."""

    def __init__(self, channels: int, config: VAEConfig):
        super().__init__()
        self.resnets = nn.ModuleList([_resnet(channels, channels, config) for _ in range(2)])
        attn = [MidAttention(channels, config.norm_num_groups)] if config.mid_block_add_attention else []
        self.attentions = nn.ModuleList(attn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, None)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x, None)


class UpDecoderBlock2D(nn.Module):
    """``layers`` resnets, then an optional nearest-x2 + conv upsample."""

    def __init__(self, in_ch: int, out_ch: int, layers: int, add_upsample: bool, config: VAEConfig):
        super().__init__()
        self.resnets = nn.ModuleList([_resnet(in_ch if i == 0 else out_ch, out_ch, config) for i in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch, True, out_ch)]) if add_upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, None)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Decoder(nn.Module):
    """conv_in, mid block, up blocks from the widest level down, then norm/act/conv to RGB."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        widths = tuple(reversed(config.block_out_channels))
        self.conv_in = nn.Conv2d(config.latent_channels, widths[0], 3, padding=1)
        self.mid_block = MidBlock(widths[0], config)
        self.up_blocks = nn.ModuleList(
            [
                UpDecoderBlock2D(
                    widths[max(i - 1, 0)], widths[i], config.layers_per_block + 1, i < len(widths) - 1, config
                )
                for i in range(len(widths))
            ]
        )
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, widths[-1], eps=_EPS)
        self.conv_act = nn.SiLU()  # diffusers hard-codes SiLU here whatever act_fn says
        self.conv_out = nn.Conv2d(widths[-1], config.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class VAEDecoder(nn.Module):
    """``post_quant_conv`` + ``decoder`` of AutoencoderKL: latents (B, 4, h, w) -> image (B, 3, f*h, f*w)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        _check_config(config)
        self.config = config
        self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)
        self.decoder = Decoder(config)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode already-unscaled latents; the image comes out in [-1, 1] (unclamped)."""
        return self.decoder(self.post_quant_conv(latents))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode latents as the x4 pipeline does: cast to the weights' dtype, divide by scaling_factor."""
        return self.forward(self.unscale(latents))

    def unscale(self, latents: torch.Tensor) -> torch.Tensor:
        # a division, not a multiplication by 1/scaling_factor, to match the pipeline bit for bit
        return latents.to(self.post_quant_conv.weight.dtype) / self.config.scaling_factor

    def decode_tiled(self, latents: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
        """``decode`` in tile x tile latent windows overlapping by ``overlap``, blended with linear ramps.

        Peak activation memory follows the tile, not the image, and all tiles have one shape, so one engine
        profile or captured graph serves them all. As in diffusers' tiled decode, each tile normalises
        with its own GroupNorm statistics and attends only within itself, so tone can drift between tiles
        whose content differs; larger tiles drift less. One tile covering the latent gives exactly ``decode``.
        """
        if not 0 <= overlap < tile:
            raise ValueError(f"need 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
        height, width = latents.shape[-2:]
        if tile >= height and tile >= width:
            return self.decode(latents)
        return _blend_tiles(self, self.unscale(latents), tile, overlap)


def _blend_tiles(vae: VAEDecoder, z: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """Weighted sum of decoded tiles divided by the summed weights (accumulated in float32)."""
    f = vae.config.upscale_factor
    (height, width), th, tw = z.shape[-2:], min(tile, z.shape[-2]), min(tile, z.shape[-1])
    out = z.new_zeros((z.shape[0], vae.config.out_channels, height * f, width * f), dtype=torch.float32)
    total = z.new_zeros((height * f, width * f), dtype=torch.float32)
    for y in _tile_starts(height, tile, overlap):
        wy = _ramp(y, th, height, overlap, f, z.device)
        for x in _tile_starts(width, tile, overlap):
            weight = wy[:, None] * _ramp(x, tw, width, overlap, f, z.device)[None, :]
            piece = vae.forward(z[..., y : y + th, x : x + tw]).float()
            region = (..., slice(y * f, (y + th) * f), slice(x * f, (x + tw) * f))
            out[region] += piece * weight
            total[region] += weight
    return (out / total).to(z.dtype)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts every ``tile - overlap``; the last tile is pinned to the end so every tile is full size."""
    if length <= tile:
        return [0]
    return list(range(0, length - tile, tile - overlap)) + [length - tile]


def _ramp(start: int, size: int, length: int, overlap: int, f: int, device: torch.device) -> torch.Tensor:
    """Per-pixel blend weight along one axis of a tile placed at ``start`` (latent pixels).

    At an inner tile edge the weight rises from 0 to 1 across the middle half of the overlap: the quarter
    next to the edge, where zero padding distorts the convolutions, is never used, and a neighbour's
    falling ramp covers the same pixels so the two sum to one across a regular overlap.
    """
    pos = torch.arange(size * f, dtype=torch.float32, device=device) + 0.5
    weight = torch.ones_like(pos)
    if overlap == 0:
        return weight
    width = float(overlap * f)

    def rise(distance: torch.Tensor) -> torch.Tensor:
        return ((distance - width / 4) / (width / 2)).clamp(0.0, 1.0)

    if start > 0:
        weight = torch.minimum(weight, rise(pos))
    if start + size < length:
        weight = torch.minimum(weight, rise(size * f - pos))
    return weight


def _resnet(in_ch: int, out_ch: int, config: VAEConfig) -> ResnetBlock2D:
    return ResnetBlock2D(in_ch, out_ch, temb_ch=None, groups=config.norm_num_groups, eps=_EPS, act=config.act_fn)


def _check_config(config: VAEConfig) -> None:
    activation(config.act_fn)  # raises ValueError naming an unsupported activation
    if len(config.up_block_types) != len(config.block_out_channels):
        raise ValueError(
            f"VAE up_block_types {config.up_block_types} need one entry per block_out_channels "
            f"entry {config.block_out_channels}"
        )
    bad = [t for t in config.up_block_types if t != "UpDecoderBlock2D"]
    if bad:
        raise ValueError(f"VAEDecoder does not implement up_block_types {bad} (only UpDecoderBlock2D)")
