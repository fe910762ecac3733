"""One whole denoising step per stage, as pure tensor arithmetic.

A step is the unit that the exporter writes as one graph and the GPU runtime captures as one CUDA
graph, so nothing here branches on tensor values or reads anything back to the host: the step index
is a tensor, the schedule is a table gathered with it, and guidance is a tensor too. Whether CFG runs
is a Python bool fixed per run (it changes the batch shape, so it is part of the graph's identity).
"""

from __future__ import annotations

import torch
from torch import nn

from ..schedule import ddim_step, ddpm_step
from ..schedule.ddim import DDIMTables
from ..schedule.ddpm import DDPMTables


def guide(out: torch.Tensor, channels: int, guidance: torch.Tensor, mixer: torch.Tensor | None = None) -> torch.Tensor:
    """CFG on an IF U-Net output [uncond; cond] (or [uncond; cond; positive] with a mixer).

    Guidance acts on epsilon; the cond branch's variance is kept. With a positive (style) prompt the
    conditional term is mixed as in the original IF: u + s * ((1 - mixer) * c + mixer * p - u).
    """
    if mixer is None:
        uncond, cond = out.chunk(2)
        target = cond[:, :channels]
    else:
        uncond, cond, positive = out.chunk(3)
        target = (1 - mixer) * cond[:, :channels] + mixer * positive[:, :channels]
    eps_u, var = uncond[:, :channels], cond[:, channels:]
    return torch.cat([eps_u + guidance * (target - eps_u), var], dim=1)


def timestep_at(tables, i: torch.Tensor) -> torch.Tensor:
    return tables.timesteps.index_select(0, i.reshape(1)).reshape(())


def if_step(
    unet: nn.Module,
    tables: DDPMTables,
    i: torch.Tensor,
    x: torch.Tensor,
    embeds: torch.Tensor,
    noise: torch.Tensor,
    guidance: torch.Tensor,
    cfg: bool,
    upscaled: torch.Tensor | None = None,
    noise_level: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    mixer: torch.Tensor | None = None,
) -> torch.Tensor:
    """x_t -> x_{t-1} for IF stage I (``upscaled`` None) or stage II (noised low-res image + level).

    ``mask`` (1 = repaint) keeps the previous sample outside the mask (inpainting); ``mixer`` adds a
    third, positive-prompt branch to the CFG batch (style transfer). ``embeds`` and ``noise_level``
    come already stacked for the branches.
    """
    model_in = x if upscaled is None else torch.cat([x, upscaled], dim=1)
    branches = 1 if not cfg else (2 if mixer is None else 3)
    if branches > 1:
        model_in = torch.cat([model_in] * branches)
    out = unet(model_in, timestep_at(tables, i), embeds, noise_level)
    if cfg:
        out = guide(out, x.shape[1], guidance, mixer)
    new = ddpm_step(tables, i, out, x, noise)
    return new if mask is None else (1 - mask) * x + mask * new


def x4_step(
    unet: nn.Module,
    tables: DDIMTables,
    i: torch.Tensor,
    latents: torch.Tensor,
    image: torch.Tensor,
    embeds: torch.Tensor,
    noise_level: torch.Tensor,
    guidance: torch.Tensor,
    cfg: bool,
) -> torch.Tensor:
    """One DDIM step of the x4 upscaler; ``image`` (noised low-res RGB) is already CFG-doubled."""
    model_in = torch.cat([latents, latents]) if cfg else latents
    out = unet(torch.cat([model_in, image], dim=1), timestep_at(tables, i), embeds, noise_level)
    if cfg:
        uncond, cond = out.chunk(2)
        out = uncond + guidance * (cond - uncond)
    return ddim_step(tables, i, out, latents)
