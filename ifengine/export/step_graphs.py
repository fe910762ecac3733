"""Whole denoising steps as exportable modules: U-Net on the CFG batch, guidance, scheduler update.

The schedule is an input table (``step_spec.DDPM_COLUMNS`` / ``DDIM_COLUMNS``) gathered with the step
index, so the graph holds no per-run constants. Stage III reuses the torch step (``x4_step``) as is.
Stages I and II run ``ddpm_step`` with one change: the dynamic-thresholding quantile takes its TopK k
from the sample's runtime shape (the torch step fixes k from the shape it is traced at), so one graph
serves every height and width. ``tests/test_export_steps.py`` holds both to the torch steps.
"""

from __future__ import annotations

import torch
from torch import nn

from ..stage.steps import guide, timestep_at, x4_step
from ..schedule.ddim import DDIMConfig, DDIMTables
from ..schedule.ddpm import DDPMConfig, DDPMTables, ddpm_step
from ..schedule.x0 import X0Clamp, make_x0_clamp
from .step_spec import DDIM_COLUMNS, DDPM_COLUMNS, if_sample_channels


def pack_ddpm(tables: DDPMTables) -> torch.Tensor:
    """The run's DDPM tables as the step graph's (steps, len(DDPM_COLUMNS)) float32 ``schedule`` input."""
    return torch.stack([getattr(tables, c).to(torch.float32) for c in DDPM_COLUMNS], dim=1).contiguous()


def pack_ddim(tables: DDIMTables) -> torch.Tensor:
    return torch.stack([getattr(tables, c).to(torch.float32) for c in DDIM_COLUMNS], dim=1).contiguous()


def _x0_clamp(config: DDPMConfig | DDIMConfig) -> X0Clamp:
    return make_x0_clamp(
        config.thresholding,
        config.clip_sample,
        config.clip_sample_range,
        config.dynamic_thresholding_ratio,
        config.sample_max_value,
    )


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


def _ddpm_tables(scheduler: DDPMConfig, clamp: X0Clamp, schedule: torch.Tensor) -> DDPMTables:
    """The schedule input unpacked into DDPMTables (as X4StepGraph does for DDIM): the columns the step
    reads, by name, and empty placeholders for the host-side fields it does not."""
    cols = {name: schedule[:, j] for j, name in enumerate(DDPM_COLUMNS)}
    cols["noise_mask"] = cols["noise_mask"] > 0.5  # packed as float; the step takes the bool mask
    unused = schedule[:0, 0]
    return DDPMTables(
        host_timesteps=(),
        prediction_type=scheduler.prediction_type,
        variance_type=scheduler.variance_type,
        x0_clamp=clamp,
        alphas_cumprod=unused,
        alpha_prod_t=unused,
        alpha_prod_t_prev=unused,
        **cols,
    )


class IFStepGraph(nn.Module):
    """Stage I / II step with CFG: inputs as ``step_spec.if_step_spec`` lists them."""

    def __init__(self, unet: nn.Module, scheduler: DDPMConfig, stage: int):
        super().__init__()
        self.unet, self.scheduler, self.clamp = unet, scheduler, _x0_clamp(scheduler)
        self.channels = if_sample_channels(unet.config, stage)

    def forward(self, sample, step, schedule, text_embeds, noise, guidance, upscaled=None, noise_level=None):
        tables = _ddpm_tables(self.scheduler, self.clamp, schedule)
        model_in = sample if upscaled is None else torch.cat([sample, upscaled], dim=1)
        out = self.unet(torch.cat([model_in, model_in]), timestep_at(tables, step), text_embeds, noise_level)
        return ddpm_step(tables, step, guide(out, self.channels, guidance), sample, noise, quantile_dynamic)


class X4StepGraph(nn.Module):
    """Stage III step with CFG: ``stage.steps.x4_step`` on tables unpacked from the schedule input."""

    def __init__(self, unet: nn.Module, scheduler: DDIMConfig):
        super().__init__()
        self.unet, self.scheduler, self.clamp = unet, scheduler, _x0_clamp(scheduler)

    def forward(self, sample, step, schedule, image, text_embeds, noise_level, guidance):
        cols = {c: schedule[:, j] for j, c in enumerate(DDIM_COLUMNS)}
        tables = DDIMTables(
            host_timesteps=(),
            prediction_type=self.scheduler.prediction_type,
            eta=0.0,
            x0_clamp=self.clamp,
            alphas_cumprod=schedule[:0, 0],
            **cols,
        )
        return x4_step(self.unet, tables, step, sample, image, text_embeds, noise_level, guidance, True)
