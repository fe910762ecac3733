"""Whole denoising steps as exportable modules: U-Net on the CFG batch, guidance, scheduler update.

The schedule is an input table (``step_spec.DDPM_COLUMNS`` / ``DDIM_COLUMNS``) gathered with the step
index, so the graph holds no per-run constants. Stage III reuses the torch step (``x4_step``) as is.
Stages I and II restate ``ddpm_step`` with one change: the dynamic-thresholding quantile takes its
TopK k from the sample's runtime shape (the torch step fixes k from the shape it is traced at), so one
graph serves every height and width. ``tests/test_export_steps.py`` holds both to the torch steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..pipeline.steps import guide, timestep_at, x4_step
from ..schedule._common import gather, step_index
from ..schedule.ddim import DDIMConfig, DDIMTables
from ..schedule.ddpm import DDPMConfig, DDPMTables, predict_x0
from ..schedule.x0 import X0Clamp, apply_x0_clamp, make_x0_clamp
from .step_spec import DDIM_COLUMNS, DDPM_COLUMNS, if_sample_channels


def pack_ddpm(tables: DDPMTables) -> torch.Tensor:
    """The run's DDPM tables as the step graph's (steps, len(DDPM_COLUMNS)) float32 ``schedule`` input."""
    return torch.stack([getattr(tables, c).to(torch.float32) for c in DDPM_COLUMNS], dim=1).contiguous()


def pack_ddim(tables: DDIMTables) -> torch.Tensor:
    return torch.stack([getattr(tables, c).to(torch.float32) for c in DDIM_COLUMNS], dim=1).contiguous()


def _x0_clamp(config: DDPMConfig | DDIMConfig) -> X0Clamp:
    return make_x0_clamp(config.thresholding, config.clip_sample, config.clip_sample_range,
                         config.dynamic_thresholding_ratio, config.sample_max_value)


def _size(x: torch.Tensor, dim: int) -> torch.Tensor:
    """A dim as a 0-d int64 tensor; while tracing it stays a graph value instead of a baked constant."""
    size = x.shape[dim]
    return size if torch.is_tensor(size) else torch.tensor(size)


def quantile_dynamic(x: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile(x, q, dim=-1) (linear interpolation) with TopK k taken from x's runtime shape."""
    n = _size(x, -1)
    rank = torch.tensor(q, dtype=torch.float32) * (n - 1).to(torch.float32)
    below, above = torch.floor(rank), torch.ceil(rank)
    weight = rank - below
    below, above = below.to(torch.int64), above.to(torch.int64)
    if q >= 0.5:  # the smaller tail is the top: k = n - below largest values, descending
        k = n - below
        top = torch.topk(x, k.reshape(()), dim=-1, largest=True, sorted=True).values
        low, high = top.index_select(-1, (k - 1).reshape(1)), top.index_select(-1, (n - above - 1).reshape(1))
    else:
        bottom = torch.topk(x, (above + 1).reshape(()), dim=-1, largest=False, sorted=True).values
        low, high = bottom.index_select(-1, below.reshape(1)), bottom.index_select(-1, above.reshape(1))
    return torch.lerp(low, high, weight).squeeze(-1)


def dynamic_threshold_dynamic(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """``schedule.x0.dynamic_threshold`` with the shape-following quantile above."""
    dtype = x0.dtype
    work = x0 if dtype in (torch.float32, torch.float64) else x0.float()
    flat = work.reshape(work.shape[0], -1)
    s = quantile_dynamic(flat.abs(), ratio).clamp(min=1.0, max=max_value).unsqueeze(1)
    bounded = torch.minimum(torch.maximum(flat, -s), s) / s
    return bounded.reshape(x0.shape).to(dtype)


def bound_x0(clamp: X0Clamp, x0: torch.Tensor) -> torch.Tensor:
    if clamp.mode == "dynamic":
        return dynamic_threshold_dynamic(x0, clamp.ratio, clamp.max_value)
    return apply_x0_clamp(clamp, x0)


@dataclass(frozen=True)
class _DDPMColumns:
    """The schedule input's columns (``DDPM_COLUMNS``, by name) under the DDPMTables field names the step
    math reads, plus the two static choices; the graph never sees the tables' other fields."""

    prediction_type: str
    variance_type: str
    timesteps: torch.Tensor
    sqrt_alpha_prod_t: torch.Tensor
    sqrt_beta_prod_t: torch.Tensor
    coef_x0: torch.Tensor
    coef_xt: torch.Tensor
    log_variance_min: torch.Tensor
    log_variance_max: torch.Tensor
    noise_std: torch.Tensor
    noise_mask: torch.Tensor


def ddpm_update(cols: _DDPMColumns, clamp: X0Clamp, i: torch.Tensor, model_output: torch.Tensor,
                sample: torch.Tensor, noise: torch.Tensor, channels: int) -> torch.Tensor:
    """``schedule.ddpm.ddpm_step`` for a guided IF output, with ``bound_x0`` for the x0 clamp."""
    index = step_index(i, cols.timesteps.device)
    prediction, variance = model_output[:, :channels], model_output[:, channels:]
    x0 = bound_x0(clamp, predict_x0(cols, index, prediction, sample))
    mean = gather(cols.coef_x0, index) * x0 + gather(cols.coef_xt, index) * sample
    if cols.variance_type == "learned_range":
        frac = (variance + 1) / 2
        log_var = frac * gather(cols.log_variance_max, index) + (1 - frac) * gather(cols.log_variance_min, index)
        scale = torch.exp(0.5 * log_var)
    else:
        scale = gather(cols.noise_std, index)
    noise_term = torch.where(gather(cols.noise_mask, index) > 0.5, scale * noise, 0.0)
    return (mean + noise_term).to(sample.dtype)


class IFStepGraph(nn.Module):
    """Stage I / II step with CFG: inputs as ``step_spec.if_step_spec`` lists them."""

    def __init__(self, unet: nn.Module, scheduler: DDPMConfig, stage: int):
        super().__init__()
        self.unet, self.scheduler, self.clamp = unet, scheduler, _x0_clamp(scheduler)
        self.channels = if_sample_channels(unet.config, stage)

    def forward(self, sample, step, schedule, text_embeds, noise, guidance, upscaled=None, noise_level=None):
        # bound by name: a column missing from, or extra to, _DDPMColumns is a TypeError, never a silent shift
        cols = _DDPMColumns(prediction_type=self.scheduler.prediction_type,
                            variance_type=self.scheduler.variance_type,
                            **{name: schedule[:, j] for j, name in enumerate(DDPM_COLUMNS)})
        model_in = sample if upscaled is None else torch.cat([sample, upscaled], dim=1)
        out = self.unet(torch.cat([model_in, model_in]), timestep_at(cols, step), text_embeds, noise_level)
        out = guide(out, self.channels, guidance)
        return ddpm_update(cols, self.clamp, step, out, sample, noise, self.channels)


class X4StepGraph(nn.Module):
    """Stage III step with CFG: ``pipeline.steps.x4_step`` on tables unpacked from the schedule input."""

    def __init__(self, unet: nn.Module, scheduler: DDIMConfig):
        super().__init__()
        self.unet, self.scheduler, self.clamp = unet, scheduler, _x0_clamp(scheduler)

    def forward(self, sample, step, schedule, image, text_embeds, noise_level, guidance):
        cols = {c: schedule[:, j] for j, c in enumerate(DDIM_COLUMNS)}
        tables = DDIMTables(host_timesteps=(), prediction_type=self.scheduler.prediction_type, eta=0.0,
                            x0_clamp=self.clamp, alphas_cumprod=schedule[:0, 0], **cols)
        return x4_step(self.unet, tables, step, sample, image, text_embeds, noise_level, guidance, True)
