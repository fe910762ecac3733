"""What the sections share: the cascade with random weights built on the device, one call, freeing."""

from __future__ import annotations

import gc

import torch

from .config import PRESETS, PROMPTS, CheckConfig
from ..fullsize import random_cascade
from ..ulps import max_ulps


def dtype_of(cfg: CheckConfig) -> torch.dtype:
    return torch.float16 if cfg.device == "cuda" else torch.float32


def skip(reason: str) -> dict:
    return {"skipped": reason}


def on_gpu(cfg: CheckConfig) -> bool:
    return cfg.device == "cuda"


def build_cascade(cfg: CheckConfig):

    presets = PRESETS[cfg.preset]["cascade"]
    return random_cascade(presets, dtype=dtype_of(cfg), device=cfg.device, build_on=cfg.device)


def call(cascade, cfg: CheckConfig, prompt: str = PROMPTS[0], seed: int = 0):
    size = dict(height=cfg.size, width=cfg.size)
    return cascade(prompt, seed=seed, steps=cfg.steps, output_type="pt", progress=False, **size)


def release(cascade) -> None:
    """Free a cascade's device memory now: close its runtime (breaks the cascade<->runtime cycle), collect."""
    if cascade is not None and cascade.runtime is not None:
        cascade.runtime.close()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def stage_ulps(a, b) -> list[int]:
    """Max ulps between two calls' outputs, stage by stage."""

    return [max_ulps(x.float(), y.float()) for x, y in zip(a.stages, b.stages, strict=True)]
