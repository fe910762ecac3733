"""Activation peaks of the exact step functions and of the VAE decode, measured on the meta device.

Builds the module from its config on meta (no weights allocated), feeds meta inputs of the run's
shapes and runs ``if_step`` / ``x4_step`` / ``decode[_tiled]`` under ``meta_trace``. Results are cached
by the callers (``memory.unet_step_activation`` / ``decode_activation``) since configs are frozen.
"""

from __future__ import annotations

import torch

from ..models.if_unet import IFUNet
from ..models.vae import VAEDecoder
from ..models.x4_unet import X4UNet
from ..stage.steps import if_step, x4_step
from ..schedule import ddim_tables, ddpm_tables
from ..schedule.presets import IF_STAGE1_DDPM, IF_STAGE2_DDPM, X4_DDIM
from .meta_trace import module_tensors, peak_activation_bytes
from ..facts import TEXT_TOKENS

META = torch.device("meta")
_TRACE_STEPS = 4  # the step's peak does not depend on the number of steps


def _meta(cls, config, dtype: torch.dtype):
    with META:
        return cls(config).to(dtype).eval()


def _tensor(shape, dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=META)


def _tables_tensors(tables) -> list[torch.Tensor]:
    return [v for v in vars(tables).values() if isinstance(v, torch.Tensor)]


def trace_step(
    kind: str, config, dtype: torch.dtype, batch: int, height: int, width: int, cfg: bool, text_dim: int
) -> int:
    """``kind`` "if1", "if2" (stage II, with the upscaled image) or "x4"; ``batch`` counts images."""
    rows = 2 * batch if cfg else batch
    index = _tensor((), torch.long)
    embeds, guidance = _tensor((rows, TEXT_TOKENS, text_dim), dtype), _tensor((), dtype)
    if kind == "x4":
        unet = _meta(X4UNet, config, dtype)
        tables = ddim_tables(X4_DDIM, _TRACE_STEPS).to(META)
        latents = _tensor((batch, config.out_channels, height, width), dtype)
        low_res, level = _tensor((rows, 3, height, width), dtype), _tensor((rows,), torch.long)
        inputs = [index, embeds, guidance, latents, low_res, level]

        def run():
            return x4_step(unet, tables, index, latents, low_res, embeds, level, guidance, cfg)

    else:
        unet = _meta(IFUNet, config, dtype)
        tables = ddpm_tables(IF_STAGE1_DDPM if kind == "if1" else IF_STAGE2_DDPM, _TRACE_STEPS).to(META)
        x, noise = _tensor((batch, 3, height, width), dtype), _tensor((batch, 3, height, width), dtype)
        upscaled = _tensor((batch, 3, height, width), dtype) if kind == "if2" else None
        level = _tensor((rows,), torch.long) if kind == "if2" else None
        inputs = [t for t in (index, embeds, guidance, x, noise, upscaled, level) if t is not None]

        def run():
            return if_step(unet, tables, index, x, embeds, noise, guidance, cfg, upscaled=upscaled, noise_level=level)

    return peak_activation_bytes(run, module_tensors(unet) + inputs + _tables_tensors(tables))


def trace_decode(
    config, dtype: torch.dtype, batch: int, height: int, width: int, tile: int | None, overlap: int
) -> int:
    """Whole decode traced; a tiled decode is one tile traced plus its float32 blending accumulators.

    Tracing every tile would measure the same tile many times over (seconds for small tiles): the
    tiles run one after another, so the peak is one tile's decode beside the accumulators.
    """
    vae = _meta(VAEDecoder, config, dtype)
    f, out_ch = config.upscale_factor, config.out_channels
    if tile is None or (tile >= height and tile >= width):
        latents = _tensor((batch, config.latent_channels, height, width), dtype)
        return peak_activation_bytes(lambda: vae.decode(latents), module_tensors(vae) + [latents])
    th, tw = min(tile, height), min(tile, width)
    piece = _tensor((batch, config.latent_channels, th, tw), dtype)
    one_tile = peak_activation_bytes(lambda: vae.forward(piece), module_tensors(vae) + [piece])
    accumulators = (batch * out_ch + 1) * height * f * width * f * 4  # weighted sum and weight total
    blend = 3 * batch * out_ch * th * f * tw * f * 4  # float piece, weight, piece * weight
    unscaled = batch * config.latent_channels * height * width * dtype.itemsize
    return one_tile + accumulators + blend + unscaled
