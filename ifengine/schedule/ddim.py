"""DDIM sampling (stage III, the SD x4 upscaler) as precomputed tables plus a pure step function."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ._common import (
    check_choice,
    check_positive,
    config_from_dict,
    gather,
    step_index,
    tables_from_step,
    tables_to,
)
from .betas import BETA_SCHEDULES, make_alphas_cumprod
from .timesteps import SPACINGS, spaced_timesteps
from .x0 import X0Clamp, apply_x0_clamp, make_x0_clamp

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass(frozen=True)
class DDIMConfig:
    """A DDIM scheduler config; defaults are diffusers' so partial JSON files mean the same thing."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    set_alpha_to_one: bool = True
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    timestep_spacing: str = "leading"
    steps_offset: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.num_train_timesteps < 1:
            raise ValueError(f"{name}: num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        check_choice(name, "beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        check_choice(name, "prediction_type", self.prediction_type, PREDICTION_TYPES)
        check_choice(name, "timestep_spacing", self.timestep_spacing, SPACINGS)
        check_positive(name, "sample_max_value", self.sample_max_value)
        check_positive(name, "clip_sample_range", self.clip_sample_range)
        if not 0.0 <= self.dynamic_thresholding_ratio <= 1.0:
            raise ValueError(f"{name}: dynamic_thresholding_ratio must be in [0, 1]")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DDIMConfig:
        """From a scheduler_config.json dict; unknown keys (e.g. skip_prk_steps) are ignored."""
        return config_from_dict(cls, data)

    def alphas_cumprod(self) -> torch.Tensor:
        return make_alphas_cumprod(
            self.beta_schedule, self.num_train_timesteps, self.beta_start, self.beta_end, self.trained_betas
        )


@dataclass(frozen=True)
class DDIMTables:
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

    _WHOLE_SCHEDULE: ClassVar[tuple[str, ...]] = ("alphas_cumprod",)

    def __len__(self) -> int:
        return len(self.host_timesteps)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> DDIMTables:
        return tables_to(self, device, dtype)

    def from_step(self, start: int) -> DDIMTables:
        """The tail of the run from step `start`."""
        return tables_from_step(self, start, self._WHOLE_SCHEDULE)


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
    x0_clamp = make_x0_clamp(
        config.thresholding,
        config.clip_sample,
        config.clip_sample_range,
        config.dynamic_thresholding_ratio,
        config.sample_max_value,
    )
    return DDIMTables(
        host_timesteps=steps,
        prediction_type=config.prediction_type,
        eta=float(eta),
        x0_clamp=x0_clamp,
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
