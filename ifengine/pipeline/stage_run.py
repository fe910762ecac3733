"""One stage run alone on the caller's inputs: stage II on a 64 px image, the x4 upscaler on any image.

``Cascade`` runs the stages in a chain from a prompt; diffusers' per-stage pipelines (``diffusers_pipes``)
start any stage from an image the user brings. Each function validates everything first, draws the
stage's noise as the stage loops always do (the same order as diffusers), runs the loop through the
cascade's runner (plain loops or GPU runtime, so LoRA, engines and placement are the cascade's), and
brings the result to the host with its NaN flags in one copy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..runtime.fetch import fetch_checked
from ..schedule import ddim_tables, ddpm_tables
from ..stage import options
from ..stage.noise import make_generator
from ..stage.options import RequestError, StageOptions
from ..stage.stages import RunContext, Start, first_kept_step
from ..text.clean import preprocess
from . import embeds as embeds_mod
from .inputs import check_mask, check_strength, image_tensor, load_image, mask_tensor
from .stage_io import sr_image, step_hook, x4_image


@dataclass(frozen=True)
class Text:
    """A call's text side: the prompt rows (one per image) and their labels."""

    pos: torch.Tensor | None  # T5 rows (IF stages); None at the x4 stage
    neg: torch.Tensor | None
    prompts: list[str]  # per image; for the x4 stage, the keys its CLIP encoder (or FixedText) reads
    negatives: list[str]
    clip: object | None = None  # the x4 stage's text encoder for this call


def stage_options(stage_no: int, steps, guidance, noise_level, timesteps, defaults) -> StageOptions:
    """One stage's validated settings from scalar diffusers arguments (None: the cascade's default)."""
    at = lambda v: None if v is None else (None,) * (stage_no - 1) + (v,)  # noqa: E731
    levels = None if noise_level is None else (None,) * (stage_no - 2) + (noise_level,)
    chosen = options.stage_options(at(steps), at(guidance), at(timesteps), levels, defaults)
    options.check_timesteps(chosen, stage_no)
    return chosen[stage_no - 1]


def if_text(cascade, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, n, cfg, clean) -> Text:
    """T5 rows of an IF stage call, from text or from the caller's embeddings."""
    labels, negative_prompt, given = embeds_mod.prepare(
        cascade, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds
    )
    prompts = options.as_prompts(labels)
    negatives = options.negatives_for(prompts, negative_prompt)
    n = options.check_images_per_prompt(n)
    if given is None:
        pos = cascade.text.encode(preprocess(list(prompts), clean))
        neg = cascade.text.encode(preprocess(list(negatives), clean)) if cfg else None
    else:
        pos, neg = given.pos, given.neg
        if cfg and neg is None:
            if cascade.text is None:
                raise RequestError(
                    "classifier-free guidance needs negative_prompt_embeds= (this pipeline has no T5 to encode "
                    "the empty negative prompt), or guidance_scale=1"
                )
            neg = cascade.text.encode(preprocess(list(negatives), clean))
    place = lambda t: None if t is None else t.to(cascade.device, cascade.dtype).repeat_interleave(n, 0)  # noqa: E731
    each = lambda rows: [p for p in rows for _ in range(n)]  # noqa: E731
    return Text(place(pos), place(neg), each(prompts), each(negatives))


def x4_text(cascade, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, n) -> Text:
    """The x4 stage's prompts: text for its CLIP encoder, or CLIP embeddings the caller brings."""
    stage = cascade.stage3
    n = options.check_images_per_prompt(n)
    each = lambda rows: [p for p in rows for _ in range(n)]  # noqa: E731
    if prompt_embeds is None:
        if negative_prompt_embeds is not None:
            raise RequestError("negative_prompt_embeds= goes with prompt_embeds=; with text, use negative_prompt=")
        prompts = options.as_prompts(prompt if prompt is not None else "")
        return Text(None, None, each(prompts), each(options.negatives_for(prompts, negative_prompt)), stage.text)
    if prompt is not None:
        raise RequestError("give prompt= or prompt_embeds=, not both")
    pos = embeds_mod._tensor(prompt_embeds, "prompt_embeds")
    table = {f"\0prompt {i}": row for i, row in enumerate(pos)}
    negatives = options.negatives_for(tuple(table), negative_prompt)
    if negative_prompt_embeds is not None:
        neg = embeds_mod._tensor(negative_prompt_embeds, "negative_prompt_embeds")
        if neg.shape != pos.shape:
            raise RequestError(f"negative_prompt_embeds has shape {tuple(neg.shape)}, prompt_embeds {tuple(pos.shape)}")
        table.update({f"\0negative {i}": row for i, row in enumerate(neg)})
        negatives = tuple(f"\0negative {i}" for i in range(neg.shape[0]))
    clip = embeds_mod.FixedText(table, stage.text)
    return Text(None, None, each(tuple(k for k in table if k.startswith("\0prompt"))), each(negatives), clip)


def if_steps(stage, opts: StageOptions, strength: float | None = None) -> tuple[int, ...]:
    """The timesteps a run of ``stage`` visits (host-side, for the step callbacks)."""
    if opts.timesteps is not None:
        tables = ddpm_tables(stage.scheduler, timesteps=opts.timesteps)
    else:
        tables = ddpm_tables(stage.scheduler, num_inference_steps=opts.steps)
    if strength is not None:
        tables = tables.from_step(first_kept_step(len(tables), strength))
    return tables.host_timesteps


def run_sr(view, text: Text, opts: StageOptions, image, size, generator, hooks: dict, start=None) -> torch.Tensor:
    """Stage II alone: ``image`` (diffusers' super-resolution input) upscaled to ``size``."""
    cascade, stage = view.cascade, view.cascade.stage2
    batch = len(text.prompts)
    low = sr_image(image, batch, cascade.device, cascade.dtype)
    factor = stage.unet.config.downsample_factor
    if size[0] % factor or size[1] % factor:
        raise RequestError(f"height and width must be multiples of {factor} for this U-Net, got {size[0]}x{size[1]}")
    cond = torch.cat([text.neg, text.pos]) if opts.cfg else text.pos
    steps = if_steps(stage, opts, None if start is None else start.strength)
    ctx = _context(view, generator, steps, {"prompt_embeds": text.pos, "negative_prompt_embeds": text.neg}, hooks)
    out = cascade.runner.run_if_stage(2, stage, opts, cond, (batch, 3, *size), ctx, image=low, start=start)
    return fetch_checked([out], cascade.encoders())[0]


def sr_start(view, original_image, mask_image, strength, batch: int) -> tuple[Start, tuple[int, int]]:
    """The start of a super-resolution edit: ``original_image`` (and the mask) at stage II's resolution."""
    unet = view.cascade.stage2.unet
    src = load_image(original_image, "original_image")
    short, multiple = unet.config.sample_size, max(8, unet.config.downsample_factor)
    source = image_tensor(src, short, multiple)
    mask = None
    if mask_image is not None:
        m = load_image(mask_image, "mask_image")
        check_mask(src, m)
        mask = mask_tensor(m, short, multiple).expand(batch, -1, -1, -1)
    strength = check_strength(strength)
    return Start(source.expand(batch, -1, -1, -1), strength, mask), tuple(source.shape[-2:])


def run_x4(view, text: Text, opts: StageOptions, image, generator, hooks: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The x4 upscaler alone on ``image``; returns (decoded images in [-1, 1], latents after the last step)."""
    cascade, stage = view.cascade, view.cascade.stage3
    low = x4_image(image, len(text.prompts), cascade.device, cascade.dtype)
    steps = ddim_tables(stage.scheduler, num_inference_steps=opts.steps).host_timesteps
    keep: list[torch.Tensor] = []
    ctx = _context(view, generator, steps, {}, hooks, keep)
    # a stage view with this call's text encoder; the cascade's own stays as it is
    run_stage = dataclasses.replace(stage, text=text.clip)
    out = cascade.runner.run_x4_stage(run_stage, opts, text.prompts, text.negatives, low, ctx)
    images, latents = fetch_checked([out, keep[0]], cascade.encoders())
    return images, latents


def _context(view, generator, steps, embeds: dict, hooks: dict, keep=None) -> RunContext:
    generator, _ = make_generator(generator, None)  # None: a fresh random seed, as diffusers' global RNG
    on_step = step_hook(view, steps, embeds, keep=keep, **hooks)
    cascade = view.cascade
    return RunContext(cascade.device, cascade.dtype, generator, view.progress, on_step)
