"""DDPM ancestral sampling (IF stages I and II) as precomputed tables plus a pure step function.

`ddpm_step` is plain tensor arithmetic on entries gathered with the step index: no Python branch on
tensor values and no host sync, so it can be traced, exported to ONNX or captured in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ._common import StepTables, check_choice, gather, static_dim, step_index
from .config import PREDICTION_TYPES, SchedulerConfig  # noqa: F401  (PREDICTION_TYPES: kept importable from here)
from .timesteps import resolve_timesteps
from .x0 import X0Clamp, apply_x0_clamp, quantile_last_dim

VARIANCE_TYPES = ("learned_range", "fixed_small")
# The posterior variance is 0 at the last step; its log is taken, so it is floored (as the reference does).
_MIN_VARIANCE = 1e-20


@dataclass(frozen=True, kw_only=True)
class DDPMConfig(SchedulerConfig):
    """A DDPM scheduler config; defaults are diffusers' so partial JSON files mean the same thing."""

    variance_type: str = "fixed_small"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(type(self).__name__, "variance_type", self.variance_type, VARIANCE_TYPES)


@dataclass(frozen=True)
class DDPMTables(StepTables):
    """Per-step coefficients (1-D, indexed by step) and the static choices of one sampling run."""

    host_timesteps: tuple[int, ...]
    prediction_type: str
    variance_type: str
    x0_clamp: X0Clamp
    alphas_cumprod: torch.Tensor
    timesteps: torch.Tensor
    alpha_prod_t: torch.Tensor
    alpha_prod_t_prev: torch.Tensor
    sqrt_alpha_prod_t: torch.Tensor
    sqrt_beta_prod_t: torch.Tensor
    coef_x0: torch.Tensor
    coef_xt: torch.Tensor
    log_variance_min: torch.Tensor
    log_variance_max: torch.Tensor
    noise_std: torch.Tensor
    noise_mask: torch.Tensor

    def draws_noise(self, i: int) -> bool:
        """Host-side: whether step i adds noise (the reference draws no noise at t == 0)."""
        return self.host_timesteps[i] > 0


def _step_coefficients(alphas_cumprod: torch.Tensor, steps: tuple[int, ...]) -> dict[str, torch.Tensor]:
    # float32 throughout, in the reference's order of operations, so the step matches it to ~1 ulp.
    t = torch.tensor(steps, dtype=torch.long)
    a_t = alphas_cumprod[t]
    # The step after the last one is the clean image: cumulative alpha 1.
    a_prev = torch.cat([alphas_cumprod[t[1:]], torch.ones(1, dtype=alphas_cumprod.dtype)])
    beta_prod_t = 1 - a_t
    current_alpha = a_t / a_prev
    current_beta = 1 - current_alpha
    variance = ((1 - a_prev) / beta_prod_t * current_beta).clamp(min=_MIN_VARIANCE)
    return {
        "timesteps": t,
        "alpha_prod_t": a_t,
        "alpha_prod_t_prev": a_prev,
        "sqrt_alpha_prod_t": a_t.sqrt(),
        "sqrt_beta_prod_t": beta_prod_t.sqrt(),
        "coef_x0": a_prev.sqrt() * current_beta / beta_prod_t,
        "coef_xt": current_alpha.sqrt() * (1 - a_prev) / beta_prod_t,
        "log_variance_min": variance.log(),
        "log_variance_max": current_beta.log(),
        "noise_std": variance.sqrt(),
        "noise_mask": t > 0,
    }


def ddpm_tables(
    config: DDPMConfig,
    num_inference_steps: int | None = None,
    timesteps: Iterable[int] | str | None = None,
) -> DDPMTables:
    """Tables for a run of `num_inference_steps` spaced steps, an explicit list, or a named list."""
    steps = resolve_timesteps(
        num_inference_steps,
        timesteps,
        config.num_train_timesteps,
        config.timestep_spacing,
        config.steps_offset,
    )
    alphas_cumprod = config.alphas_cumprod()
    return DDPMTables(
        host_timesteps=steps,
        prediction_type=config.prediction_type,
        variance_type=config.variance_type,
        x0_clamp=config.x0_clamp(),
        alphas_cumprod=alphas_cumprod,
        **_step_coefficients(alphas_cumprod, steps),
    )


def _split_output(
    tables: DDPMTables, model_output: torch.Tensor, sample: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    channels, out_channels = static_dim(sample, 1), static_dim(model_output, 1)
    if out_channels == 2 * channels:
        prediction, variance = model_output.split(channels, dim=1)
    elif out_channels == channels:
        prediction, variance = model_output, None
    else:
        raise ValueError(f"model_output has {out_channels} channels; expected {channels} or {2 * channels}")
    if tables.variance_type == "learned_range" and variance is None:
        raise ValueError("variance_type 'learned_range' needs model_output with 2x the sample's channels")
    return prediction, variance


def predict_x0(tables: DDPMTables, index: torch.Tensor, prediction: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """x0 from the model's prediction at step `index` (a (1,) int64 tensor), before clipping."""
    sqrt_alpha = gather(tables.sqrt_alpha_prod_t, index)
    sqrt_beta = gather(tables.sqrt_beta_prod_t, index)
    if tables.prediction_type == "epsilon":
        return (sample - sqrt_beta * prediction) / sqrt_alpha
    if tables.prediction_type == "v_prediction":
        return sqrt_alpha * sample - sqrt_beta * prediction
    return prediction


def _noise_scale(tables: DDPMTables, index: torch.Tensor, variance: torch.Tensor | None) -> torch.Tensor:
    if tables.variance_type == "learned_range":
        # The model picks a log-variance between the posterior variance and beta_t.
        frac = (variance + 1) / 2
        log_var = frac * gather(tables.log_variance_max, index) + (1 - frac) * gather(tables.log_variance_min, index)
        return torch.exp(0.5 * log_var)
    return gather(tables.noise_std, index)


def ddpm_step(
    tables: DDPMTables,
    i: torch.Tensor | int,
    model_output: torch.Tensor,
    sample: torch.Tensor,
    noise: torch.Tensor,
    quantile: Callable[[torch.Tensor, float], torch.Tensor] = quantile_last_dim,
) -> torch.Tensor:
    """x_{t-1} from x_t at step i (int or 0-d int64 tensor).

    `model_output` is the prediction (C channels) or prediction + learned variance (2C channels);
    with "fixed_small" the extra channels are ignored. `noise` (shaped like `sample`) is always
    required and is masked out at t == 0. `quantile` serves dynamic thresholding (exported step graphs
    pass one whose top-k follows the runtime shape).
    """
    index = step_index(i, tables.timesteps.device)
    prediction, variance = _split_output(tables, model_output, sample)
    x0 = apply_x0_clamp(tables.x0_clamp, predict_x0(tables, index, prediction, sample), quantile)
    mean = gather(tables.coef_x0, index) * x0 + gather(tables.coef_xt, index) * sample
    # where(), not a multiply by 0: an unbounded learned variance can overflow exp() to inf at t == 0.
    scaled_noise = _noise_scale(tables, index, variance) * noise
    noise_term = torch.where(gather(tables.noise_mask, index), scaled_noise, 0.0)
    return (mean + noise_term).to(sample.dtype)
