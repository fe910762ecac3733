"""DDIM sampling (stage III, the SD x4 upscaler) as precomputed tables plus a pure step function."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._common import StepTables, gather, step_index
from .config import PREDICTION_TYPES, SchedulerConfig  # noqa: F401  (PREDICTION_TYPES: kept importable from here)
from .timesteps import spaced_timesteps
from .x0 import X0Clamp, apply_x0_clamp


@dataclass(frozen=True, kw_only=True)
class DDIMConfig(SchedulerConfig):
    """A DDIM scheduler config; defaults are diffusers' so partial JSON files mean the same thing."""

    set_alpha_to_one: bool = True  # the cumulative alpha the last step jumps to: 1, or the first step's


@dataclass(frozen=True)
class DDIMTables(StepTables):
    """Per-step DDIM coefficients (1-D, indexed by step) and the static choices of one run."""

    host_timesteps: tuple[int, ...]
    prediction_type: str
    eta: float
    x0_clamp: X0Clamp
    alphas_cumprod: torch.Tensor
    timesteps: torch.Tensor
    sqrt_alpha_prod_t: torch.Tensor
    sqrt_beta_prod_t: torch.Tensor
    sqrt_alpha_prod_prev: torch.Tensor
    coef_eps: torch.Tensor
    noise_std: torch.Tensor


def _step_coefficients(
    config: DDIMConfig, alphas_cumprod: torch.Tensor, steps: tuple[int, ...], eta: float
) -> dict[str, torch.Tensor]:
    # DDIM jumps a fixed stride back, not to the next listed timestep (as diffusers does).
    stride = config.num_train_timesteps // len(steps)
    t = torch.tensor(steps, dtype=torch.long)
    prev = t - stride
    final = torch.tensor(1.0) if config.set_alpha_to_one else alphas_cumprod[0]
    a_t = alphas_cumprod[t]
    a_prev = torch.where(prev >= 0, alphas_cumprod[prev.clamp(min=0)], final)
    beta_prod_t = 1 - a_t
    variance = ((1 - a_prev) / beta_prod_t) * (1 - a_t / a_prev)
    std = eta * variance.sqrt()
    return {
        "timesteps": t,
        "sqrt_alpha_prod_t": a_t.sqrt(),
        "sqrt_beta_prod_t": beta_prod_t.sqrt(),
        "sqrt_alpha_prod_prev": a_prev.sqrt(),
        "coef_eps": (1 - a_prev - std**2).sqrt(),
        "noise_std": std,
    }


def ddim_tables(config: DDIMConfig, num_inference_steps: int, eta: float = 0.0) -> DDIMTables:
    """Tables for `num_inference_steps` spaced steps; eta > 0 makes the step stochastic."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    steps = spaced_timesteps(
        num_inference_steps, config.num_train_timesteps, config.timestep_spacing, config.steps_offset
    )
    alphas_cumprod = config.alphas_cumprod()
    return DDIMTables(
        host_timesteps=steps,
        prediction_type=config.prediction_type,
        eta=float(eta),
        x0_clamp=config.x0_clamp(),
        alphas_cumprod=alphas_cumprod,
        **_step_coefficients(config, alphas_cumprod, steps, float(eta)),
    )


def _x0_and_eps(
    tables: DDIMTables, index: torch.Tensor, model_output: torch.Tensor, sample: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    sqrt_alpha = gather(tables.sqrt_alpha_prod_t, index)
    sqrt_beta = gather(tables.sqrt_beta_prod_t, index)
    if tables.prediction_type == "v_prediction":
        return sqrt_alpha * sample - sqrt_beta * model_output, sqrt_alpha * model_output + sqrt_beta * sample
    if tables.prediction_type == "epsilon":
        return (sample - sqrt_beta * model_output) / sqrt_alpha, model_output
    return model_output, (sample - sqrt_alpha * model_output) / sqrt_beta


def ddim_step(
    tables: DDIMTables,
    i: torch.Tensor | int,
    model_output: torch.Tensor,
    sample: torch.Tensor,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """x_prev from x_t at step i (int or 0-d int64 tensor); `noise` is needed only when eta > 0."""
    index = step_index(i, tables.timesteps.device)
    x0, eps = _x0_and_eps(tables, index, model_output, sample)
    # eps stays the unclipped model estimate, as in the reference (use_clipped_model_output=False).
    x0 = apply_x0_clamp(tables.x0_clamp, x0)
    prev = gather(tables.sqrt_alpha_prod_prev, index) * x0 + gather(tables.coef_eps, index) * eps
    if tables.eta > 0:
        if noise is None:
            raise ValueError("ddim_step needs `noise` when the tables were built with eta > 0")
        prev = prev + gather(tables.noise_std, index) * noise
    return prev.to(sample.dtype)
