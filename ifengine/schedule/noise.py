"""Forward diffusion: x_t = sqrt(a_t) * x0 + sqrt(1 - a_t) * noise."""

from __future__ import annotations

from typing import Protocol

import torch


class HasAlphasCumprod(Protocol):
    alphas_cumprod: torch.Tensor


def add_noise(
    schedule: torch.Tensor | HasAlphasCumprod,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor | int,
) -> torch.Tensor:
    """Noise x0 to timestep t (an int, a 0-d tensor, or one timestep per batch entry).

    `schedule` is an alphas_cumprod table or anything carrying one (DDPMTables, DDIMTables).
    Used for img2img starts, stage II's image noising (t = noise_level) and the x4 low-res noise.
    """
    table = schedule if isinstance(schedule, torch.Tensor) else schedule.alphas_cumprod
    table = table.to(device=x0.device, dtype=x0.dtype)
    if isinstance(t, torch.Tensor):
        index = t.reshape(-1).to(device=x0.device, dtype=torch.long)
    else:
        index = torch.tensor([int(t)], dtype=torch.long, device=x0.device)
    alpha = table.index_select(0, index)
    # One value per batch entry (or one for all), broadcast over the remaining dims.
    shape = (alpha.shape[0],) + (1,) * (x0.dim() - 1)
    signal = alpha.sqrt().reshape(shape)
    sigma = (1 - alpha).sqrt().reshape(shape)
    return signal * x0 + sigma * noise
