"""Counted work per component (torch.utils.flop_counter on meta tensors) and a measured matmul peak.

Counting on the meta device needs no weights and no memory, so the full-size models are counted on
any machine; the counts are those of our own modules, which compute what diffusers' do. Model FLOP
utilisation is then counted FLOPs / measured time / the matmul peak measured on the same device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..models.config import TextEncoderConfig, UNetConfig, VAEConfig
from ..models.weights import build_on_meta
from .timing import Clock, synchronize
from ..facts import TEXT_TOKENS
from ..models.if_unet import IFUNet
from ..models.x4_unet import X4UNet
from ..models.vae import VAEDecoder

log = logging.getLogger(__name__)

# if-facts.md "Work per image" (FLOP per call, CFG batch 2, counted the same way): the counter must agree.
IF_FACTS = {
    "t5": ("T5-XXL encode, 2 x 77 tokens", 1.43e12),
    "stage1": ("IF-I-XL step, 64x64", 5.76e12),
    "stage2": ("IF-II-L step, 256x256", 6.18e12),
    "stage3": ("x4 U-Net step, 256x256 latent", 9.06e12),
    "vae": ("x4 VAE decode to 1024x1024", 18.98e12),
}


def count_flops(fn: Callable[[], object]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def if_unet_flops(config: UNetConfig, batch: int, height: int, width: int, text_dim: int = 4096) -> int:
    """One IF stage I/II U-Net call on ``batch`` samples (the CFG batch: 2 per image with guidance)."""

    unet = build_on_meta(lambda: IFUNet(config))
    level = torch.zeros(batch, dtype=torch.long, device="meta") if config.class_embed_type else None
    return _on_meta(
        lambda m: unet(
            m(batch, config.in_channels, height, width),
            m(batch, dtype=torch.long),
            m(batch, TEXT_TOKENS, text_dim),
            level,
        )
    )


def x4_unet_flops(config: UNetConfig, batch: int, height: int, width: int) -> int:
    """One x4 upscaler U-Net call at latent size ``height`` x ``width``."""

    unet = build_on_meta(lambda: X4UNet(config))
    return _on_meta(
        lambda m: unet(
            m(batch, config.in_channels, height, width),
            m(batch, dtype=torch.long),
            m(batch, TEXT_TOKENS, config.cross_attention_dim[0]),
            m(batch, dtype=torch.long),
        )
    )


def vae_decode_flops(config: VAEConfig, batch: int, height: int, width: int) -> int:
    """VAE decode from a ``height`` x ``width`` latent (the image is x4 larger)."""

    vae = build_on_meta(lambda: VAEDecoder(config))
    return _on_meta(lambda m: vae.decode(m(batch, config.latent_channels, height, width)))


def text_flops(config: TextEncoderConfig, sequences: int) -> int:
    """The text encoder on ``sequences`` x 77 tokens (2 per prompt with guidance: prompt and negative)."""
    model = build_on_meta(lambda: text_model(config))
    ids = torch.zeros(sequences, config.max_length, dtype=torch.long, device="meta")
    return count_flops(lambda: model(input_ids=ids))


def text_model(config: TextEncoderConfig):
    """A randomly initialised transformers encoder of this size (T5 encoder or CLIP text model)."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    if config.kind == "t5":
        return T5EncoderModel(T5Config(**config.transformers_kwargs())).eval()
    return CLIPTextModel(CLIPTextConfig(**config.transformers_kwargs())).eval()


def _on_meta(call: Callable) -> int:
    def meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype, device="meta")

    return count_flops(lambda: call(meta))


def matmul_peak(device: torch.device | str, dtype: torch.dtype, size: int | None = None, repeats: int = 10) -> dict:
    """Best measured FLOP/s of a square matmul on ``device``: the ceiling MFU is measured against."""
    device = torch.device(device)
    n = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    clock = Clock(device)
    for _ in range(3):  # warm-up: kernel selection, clocks ramping up
        a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        with clock.region("mm"):
            a @ b
        best = min(best, clock.collect()["mm"])
    flops = 2 * n**3
    return {
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "size": n,
        "seconds": best,
        "flops_per_s": flops / best,
        "measured_at": time.time(),
    }
