"""Beta schedules and the cumulative alpha products derived from them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")

# The cosine schedule caps each beta so the last steps stay invertible (Nichol & Dhariwal 2021).
_COSINE_MAX_BETA = 0.999
_COSINE_OFFSET = 0.008


def _cosine_alpha_bar(frac: float) -> float:
    return math.cos((frac + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2) ** 2


def _cosine_betas(num_train_timesteps: int) -> torch.Tensor:
    # Computed in float64 on the host, stored float32: the reference stores them the same way.
    betas = []
    for step in range(num_train_timesteps):
        ratio = _cosine_alpha_bar((step + 1) / num_train_timesteps) / _cosine_alpha_bar(step / num_train_timesteps)
        betas.append(min(1.0 - ratio, _COSINE_MAX_BETA))
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(
    beta_schedule: str,
    num_train_timesteps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    trained_betas: Sequence[float] | None = None,
) -> torch.Tensor:
    """Float32 betas of a named schedule (or the given trained betas)."""
    if trained_betas is not None:
        if len(trained_betas) != num_train_timesteps:
            raise ValueError(
                f"trained_betas has {len(trained_betas)} entries, expected num_train_timesteps={num_train_timesteps}"
            )
        return torch.tensor(list(trained_betas), dtype=torch.float32)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        # Linear in sqrt(beta): the latent-diffusion convention (SD x4 upscaler).
        roots = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32)
        return roots**2
    if beta_schedule == "squaredcos_cap_v2":
        return _cosine_betas(num_train_timesteps)
    raise ValueError(f"unknown beta_schedule {beta_schedule!r}; supported: {', '.join(BETA_SCHEDULES)}")


def make_alphas_cumprod(
    beta_schedule: str,
    num_train_timesteps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    trained_betas: Sequence[float] | None = None,
) -> torch.Tensor:
    """Float32 cumulative product of (1 - beta) over the training steps."""
    betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas)
    # float32 cumprod on purpose: the reference accumulates in float32 and step outputs must match it.
    return torch.cumprod(1.0 - betas, dim=0)
