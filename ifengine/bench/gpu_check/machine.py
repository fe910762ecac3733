"""Section ``machine``: GPU, driver, torch, CUDA and library versions, in seconds."""

from __future__ import annotations

import torch

from ..machine import describe, summary_line
from .config import CheckConfig


def run(cfg: CheckConfig, save) -> dict:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} sees no CUDA device (built for CUDA {torch.version.cuda})")
    info = describe(cfg.device)
    info["summary"] = summary_line(info)
    return info
