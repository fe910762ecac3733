"""Run each stage's denoising loop on the torch backend.

Every loop has the same shape: build the schedule tables and draw all noise before the loop, move both
to the device once, then call the stage's step function per step with a device-side step index. The
loop body never reads a tensor back, so on a GPU the host only enqueues work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..schedule import add_noise, ddim_tables, ddpm_tables
from ..schedule.ddim import DDIMConfig
from ..schedule.ddpm import DDPMConfig
from ..text.encoder import PromptEncoder
from .cancel import raise_if_stopped
from .noise import Generator, ddpm_stage_noise, x4_stage_noise
from .options import StageOptions
from .seam import EagerStep, Step, StageRunner, check_step
from .steps import if_step, x4_step
from ..facts import X4_MAX_NOISE_LEVEL

log = logging.getLogger(__name__)
STAGE_LABELS = {1: "stage I", 2: "stage II", 3: "stage III"}


@dataclass
class IFStage:
    """Loaded stage I or II: the U-Net, its sampling schedule and (stage II) the image-noising schedule."""

    unet: nn.Module
    scheduler: DDPMConfig
    noising: DDPMConfig | None = None
    step_fn: Step | None = None  # what runs each step (stage.seam.Step); None: the eager torch step

    def __post_init__(self):
        self.step_fn = check_step(self.step_fn or EagerStep(if_step))


@dataclass
class X4Stage:
    """Loaded stage III: x4 U-Net, VAE decoder, CLIP prompt encoder and both schedules."""

    unet: nn.Module
    vae: nn.Module
    text: PromptEncoder
    scheduler: DDIMConfig
    low_res: DDPMConfig
    max_noise_level: int = X4_MAX_NOISE_LEVEL
    step_fn: Step | None = None  # what runs each step (stage.seam.Step); None: the eager torch step

    def __post_init__(self):
        self.step_fn = check_step(self.step_fn or EagerStep(x4_step))


StepCallback = Callable[[int, int, torch.Tensor], "torch.Tensor | None"]
"""A per-step callable ``on_step(stage_no, step_index, sample)``, called after every denoising step (the
sample is stage I/II's image or stage III's latents). A tensor it returns replaces the sample; None keeps
it. It runs on the host between steps: whatever it reads back from the device is a host sync."""


@dataclass(frozen=True)
class RunContext:
    device: torch.device
    dtype: torch.dtype
    generator: Generator
    progress: bool = True
    on_step: StepCallback | None = None  # see StepCallback; None: the loops call nothing between steps


def after_step(ctx: RunContext, stage_no: int, i: int, x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """The sample after step ``i`` once ``ctx.on_step`` has seen it; ``in_place`` copies a returned tensor
    into ``x`` (the GPU runtime's static buffer, whose address its captured graphs hold)."""
    if ctx.on_step is None:
        return x
    new = ctx.on_step(stage_no, i, x)
    if new is None or new is x:
        return x
    if tuple(new.shape) != tuple(x.shape):
        raise ValueError(f"a step callback returned shape {tuple(new.shape)} for a sample of shape {tuple(x.shape)}")
    if in_place:
        x.copy_(new)
        return x
    return new.to(x.device, x.dtype)


def _tables(build, config, opts: StageOptions):
    if opts.timesteps is not None:
        return build(config, timesteps=opts.timesteps)
    return build(config, num_inference_steps=opts.steps)


def _steps(stage: int, n: int, ctx: RunContext):
    """The step indices, each one yielded only after the run's stop check (``stage.cancel``) let it go."""
    for i in tqdm(range(n), desc=STAGE_LABELS[stage], disable=not ctx.progress, leave=False):
        raise_if_stopped()
        yield i


@dataclass(frozen=True)
class Start:
    """An editing run's start: the source at this stage's resolution (NCHW, [-1, 1]), the share of
    the schedule to redo, and optionally the repaint mask (N1HW, 1 = repaint)."""

    source: torch.Tensor
    strength: float
    mask: torch.Tensor | None = None


def first_kept_step(num_steps: int, strength: float) -> int:
    """Index of the first step an edit runs: the last int(N * strength) steps are kept, as diffusers does."""
    keep = min(int(num_steps * strength), num_steps)
    if keep < 1:
        raise ValueError(
            f"strength {strength} keeps no step out of {num_steps}; use strength >= {1 / num_steps:.3g} or more steps"
        )
    return num_steps - keep


@torch.no_grad()
def run_if_stage(
    stage_no: int,
    stage: IFStage,
    opts: StageOptions,
    embeds: torch.Tensor,
    shape: tuple[int, ...],
    ctx: RunContext,
    image: torch.Tensor | None = None,
    start: Start | None = None,
    mixer: float | None = None,
) -> torch.Tensor:
    """Stage I from noise, or stage II from noise conditioned on ``image`` upscaled to ``shape``.

    With ``start`` the run begins from the noised source instead (img2img / inpainting); ``mixer``
    means ``embeds`` holds [uncond; cond; positive] (style transfer).
    """
    tables = _tables(ddpm_tables, stage.scheduler, opts)
    if start is not None:
        tables = tables.from_step(first_kept_step(len(tables), start.strength))
    draws = [t > 0 for t in tables.host_timesteps]
    noise = ddpm_stage_noise(
        shape, draws, ctx.generator, ctx.dtype, image_shape=shape if image is not None else None
    ).to(ctx.device)
    tables = tables.to(ctx.device)
    branches = 1 if not opts.cfg else (2 if mixer is None else 3)
    upscaled = level = None
    if image is not None:
        upscaled, level = _noised_upscale(stage, opts, image, noise.image, shape)
        level = torch.cat([level] * branches)
    x = noise.init if start is None else _start_sample(tables, start, noise.init, ctx)
    mask = None if start is None or start.mask is None else start.mask.to(ctx.device, ctx.dtype)
    tensor = lambda v: None if v is None else torch.tensor(v, device=ctx.device, dtype=ctx.dtype)  # noqa: E731
    guidance, mix = tensor(opts.guidance), tensor(mixer if opts.cfg else None)
    index = torch.arange(len(tables), device=ctx.device)
    step = stage.step_fn
    for i in _steps(stage_no, len(tables), ctx):
        x = step(
            stage.unet,
            tables,
            index[i],
            x,
            embeds,
            noise.steps[i],
            guidance,
            opts.cfg,
            upscaled=upscaled,
            noise_level=level,
            mask=mask,
            mixer=mix,
        )
        x = after_step(ctx, stage_no, i, x)
    return x


def _start_sample(tables, start: Start, noise: torch.Tensor, ctx: RunContext) -> torch.Tensor:
    """The source noised to the first kept timestep; outside an inpainting mask, the clean source."""
    source = start.source.to(ctx.device, ctx.dtype)
    level = tables.timesteps[:1].expand(source.shape[0])
    noised = add_noise(tables, source, noise, level)
    if start.mask is None:
        return noised
    mask = start.mask.to(ctx.device, ctx.dtype)
    return (1 - mask) * source + mask * noised


def _noised_upscale(
    stage: IFStage, opts: StageOptions, image: torch.Tensor, noise: torch.Tensor, shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    upscaled = F.interpolate(image.to(noise.dtype), shape[-2:], mode="bilinear", align_corners=True)
    level = torch.full((shape[0],), opts.noise_level, dtype=torch.long, device=noise.device)
    alphas = stage.noising.alphas_cumprod().to(noise.device)
    return add_noise(alphas, upscaled, noise, level), level


@torch.no_grad()
def run_x4_stage(
    stage: X4Stage, opts: StageOptions, prompts: list[str], negatives: list[str], image: torch.Tensor, ctx: RunContext
) -> torch.Tensor:
    """Stage III: CLIP-conditioned DDIM on latents the size of ``image``, then VAE decode (x4)."""
    embeds = stage.text.encode(prompts)
    if opts.cfg:
        embeds = torch.cat([stage.text.encode(negatives), embeds])
    b, _, h, w = image.shape
    latent_channels = stage.unet.config.out_channels
    noise = x4_stage_noise((b, latent_channels, h, w), tuple(image.shape), ctx.generator, ctx.dtype)
    noise = noise.to(ctx.device)
    tables = _tables(ddim_tables, stage.scheduler, opts).to(ctx.device)
    level = torch.full((b,), opts.noise_level, dtype=torch.long, device=ctx.device)
    low_res = add_noise(stage.low_res.alphas_cumprod().to(ctx.device), image.to(ctx.dtype), noise.image, level)
    if opts.cfg:
        low_res, level = torch.cat([low_res, low_res]), torch.cat([level, level])
    guidance = torch.tensor(opts.guidance, device=ctx.device, dtype=ctx.dtype)
    index = torch.arange(len(tables), device=ctx.device)
    latents = noise.init
    step = stage.step_fn
    for i in _steps(3, len(tables), ctx):
        latents = step(stage.unet, tables, index[i], latents, low_res, embeds, level, guidance, opts.cfg)
        latents = after_step(ctx, 3, i, latents)
    return stage.vae.decode(latents)


class EagerRunner:
    """The plain torch stage loops as a ``stage.seam.StageRunner`` (what a cascade without the GPU runtime
    runs)."""

    run_if_stage = staticmethod(run_if_stage)
    run_x4_stage = staticmethod(run_x4_stage)


EAGER: StageRunner = EagerRunner()
