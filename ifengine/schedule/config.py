"""The scheduler config fields DDPM and DDIM share, with their validation and JSON loading."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from ._common import check_choice, check_positive, config_from_dict
from .betas import BETA_SCHEDULES, make_alphas_cumprod
from .timesteps import SPACINGS
from .x0 import X0Clamp, make_x0_clamp

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")

S = TypeVar("S", bound="SchedulerConfig")


# kw_only: each sampler's own fields come after these, so field order differs from diffusers'
# signatures; keyword-only construction keeps a positional call from binding the wrong field.
@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """Training schedule, output parametrisation, x0 clamping and timestep spacing; defaults are diffusers'."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
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
    def from_dict(cls: type[S], data: Mapping[str, Any]) -> S:
        """From a scheduler_config.json dict; unknown keys (_class_name, skip_prk_steps, ...) are ignored."""
        return config_from_dict(cls, data)

    def alphas_cumprod(self) -> torch.Tensor:
        return make_alphas_cumprod(
            self.beta_schedule, self.num_train_timesteps, self.beta_start, self.beta_end, self.trained_betas
        )

    def x0_clamp(self) -> X0Clamp:
        """The clipping/thresholding the step applies to its x0 estimate."""
        return make_x0_clamp(
            self.thresholding,
            self.clip_sample,
            self.clip_sample_range,
            self.dynamic_thresholding_ratio,
            self.sample_max_value,
        )
