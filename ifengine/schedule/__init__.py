"""Noise schedules and samplers as precomputed per-step tables with pure, graph-capturable steps."""

from .betas import BETA_SCHEDULES, make_alphas_cumprod, make_betas
from .ddim import DDIMConfig, DDIMTables, ddim_step, ddim_tables
from .ddpm import DDPMConfig, DDPMTables, ddpm_step, ddpm_tables, predict_x0
from .noise import add_noise
from .presets import (
    IF_STAGE1_DDPM,
    IF_STAGE2_DDPM,
    IF_STAGE2_IMAGE_NOISING_DDPM,
    X4_DDIM,
    X4_LOW_RES_DDPM,
)
from .timesteps import (
    NAMED_TIMESTEP_LISTS,
    SPACINGS,
    named_timesteps,
    resolve_timesteps,
    spaced_timesteps,
    validate_timesteps,
)
from .x0 import X0Clamp, apply_x0_clamp, dynamic_threshold, make_x0_clamp, quantile_last_dim

__all__ = [
    "BETA_SCHEDULES",
    "IF_STAGE1_DDPM",
    "IF_STAGE2_DDPM",
    "IF_STAGE2_IMAGE_NOISING_DDPM",
    "NAMED_TIMESTEP_LISTS",
    "SPACINGS",
    "X4_DDIM",
    "X4_LOW_RES_DDPM",
    "DDIMConfig",
    "DDIMTables",
    "DDPMConfig",
    "DDPMTables",
    "X0Clamp",
    "add_noise",
    "apply_x0_clamp",
    "ddim_step",
    "ddim_tables",
    "ddpm_step",
    "ddpm_tables",
    "dynamic_threshold",
    "make_alphas_cumprod",
    "make_betas",
    "make_x0_clamp",
    "named_timesteps",
    "predict_x0",
    "quantile_last_dim",
    "resolve_timesteps",
    "spaced_timesteps",
    "validate_timesteps",
]
