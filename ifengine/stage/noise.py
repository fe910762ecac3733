"""All random numbers of a run, drawn up front in the order diffusers draws them.

diffusers draws the initial noise, then (stage II) the low-res image noise, then one tensor per DDPM
step whose timestep is > 0, all from the one generator the user passed through the cascade. Drawing
the same shapes in the same order before the loop gives bit-identical noise, and lets the loop run
without touching the generator (no host work per step; the tensors go to the device in one copy).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GeneratorGroups:
    """Requests batched together (serving): each draws its own rows from its own generator, exactly as it
    would alone, so a batched request gets the image it gets by itself with its seed."""

    groups: tuple[tuple[torch.Generator, int], ...]  # (generator, rows) in batch order

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        rows = sum(n for _, n in self.groups)
        if rows != shape[0]:
            raise ValueError(f"generator groups cover {rows} rows, the batch has {shape[0]}")
        rest = tuple(shape[1:])
        return torch.cat([torch.randn((n, *rest), generator=g, device=g.device, dtype=dtype) for g, n in self.groups])


Generator = torch.Generator | list[torch.Generator] | GeneratorGroups | None


def make_generator(generator: Generator, seed: int | None) -> tuple[Generator, int | None]:
    """Use the caller's generator, else one seeded by ``seed`` (or a fresh random seed, reported back)."""
    if generator is not None:
        if seed is not None:
            raise ValueError("pass either generator= or seed=, not both")
        return generator, None
    if seed is None:
        seed = random.SystemRandom().randrange(2**63)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be a whole number in [0, 2**64), got {seed!r}")
    return torch.Generator("cpu").manual_seed(seed), seed


def randn(shape: tuple[int, ...], generator: Generator, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise as diffusers' ``randn_tensor`` draws it, left on the generator's device."""
    if isinstance(generator, GeneratorGroups):
        return generator.randn(shape, dtype)
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(
                f"got {len(generator)} generators for a batch of {shape[0]} images; "
                "pass one generator, or one per image"
            )
        one = (1,) + tuple(shape[1:])
        return torch.cat([torch.randn(one, generator=g, device=g.device, dtype=dtype) for g in generator])
    device = generator.device if generator is not None else "cpu"
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


@dataclass(frozen=True)
class StageNoise:
    """Noise for one stage: the start sample, optional conditioning-image noise, one slice per step."""

    init: torch.Tensor
    image: torch.Tensor | None
    steps: torch.Tensor  # (num_steps, *init.shape); zeros where the step adds no noise (t == 0)

    def to(self, device: torch.device | str) -> StageNoise:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return StageNoise(move(self.init), move(self.image), move(self.steps))


def ddpm_stage_noise(
    shape, draws: list[bool], generator: Generator, dtype: torch.dtype, image_shape: tuple[int, ...] | None = None
) -> StageNoise:
    """Stage I (no image) or II (image noise drawn right after the start sample)."""
    init = randn(shape, generator, dtype)
    image = randn(image_shape, generator, dtype) if image_shape is not None else None
    per_step = [
        randn(shape, generator, dtype) if d else torch.zeros(shape, dtype=dtype, device=init.device) for d in draws
    ]
    steps = torch.stack(per_step) if per_step else init.new_zeros((0,) + tuple(shape))
    return StageNoise(init=init, image=image, steps=steps)


def x4_stage_noise(latent_shape, image_shape, generator: Generator, dtype: torch.dtype) -> StageNoise:
    """Stage III: the low-res image noise first, then the start latents; DDIM (eta 0) draws nothing more."""
    image = randn(image_shape, generator, dtype)
    init = randn(latent_shape, generator, dtype)
    return StageNoise(init=init, image=image, steps=init.new_zeros((0,) + tuple(latent_shape)))
