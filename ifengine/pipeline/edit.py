"""Image editing through the cascade: zero-shot img2img, inpainting and style transfer.

Each mode is the text-to-image machinery started from the source image instead of noise: every IF stage
takes the source at its own resolution, noises it to the first kept timestep (strength keeps the last
int(N * strength) steps) and denoises with the prompt; inpainting keeps pixels outside the mask; style
transfer mixes an optional positive prompt into the guidance. Stage III upscales stage II's result.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..text.clean import preprocess
from . import aliases, embeds, limits
from ..stage import options
from .inputs import check_mask, check_strength, image_tensor, load_image, mask_tensor, target_size
from ..stage.noise import make_generator
from ..stage.options import Request, RequestError, RunDefaults
from ..stage.stages import RunContext, Start, first_kept_step


@dataclass(frozen=True)
class Mode:
    """Per-mode defaults (diffusers' pipelines for img2img/inpainting; the original repo's style example)."""

    defaults: RunDefaults
    strength: tuple[float, float]


MODES = {
    "img2img": Mode(RunDefaults(steps=(80, 50, 75), guidance=(10.0, 4.0, 9.0), noise_level=(250, 20)), (0.7, 0.8)),
    "inpaint": Mode(RunDefaults(steps=(50, 100, 75), guidance=(7.0, 4.0, 9.0), noise_level=(0, 20)), (1.0, 0.8)),
    "style": Mode(RunDefaults(steps=(50, 50, 75), guidance=(10.0, 4.0, 9.0), noise_level=(250, 20)), (0.5, 0.5)),
}


@dataclass(frozen=True)
class EditPlan:
    request: Request
    strength: tuple[float, float]
    sources: tuple[torch.Tensor, ...]  # the source at each IF stage's resolution, (1, 3, H, W)
    masks: tuple[torch.Tensor | None, ...]
    positives: tuple[str, ...] | None
    mixer: float | None
    mode: str = "img2img"


def run(
    pipe,
    mode: str,
    image,
    prompt,
    *,
    mask=None,
    strength=None,
    positive_prompt=None,
    mixer=None,
    negative_prompt=None,
    num_images_per_prompt: int = 1,
    generator=None,
    seed=None,
    steps=None,
    guidance=None,
    noise_level=None,
    timesteps=(None, None, None),
    last_stage=None,
    output_type="pil",
    clean_caption: bool = True,
    progress: bool = True,
    num_inference_steps=None,
    guidance_scale=None,
    prompt_embeds=None,
    negative_prompt_embeds=None,
    on_step=None,
):
    """Validate everything, then run the stages from the source image (diffusers' argument names and
    prompt embeddings as in ``Cascade.__call__``; ``on_step``: a ``stage.stages.StepCallback``)."""
    steps, guidance = aliases.call_settings(steps, num_inference_steps, guidance, guidance_scale)
    pipe.require_stage1(mode)
    prompt, negative_prompt, given = embeds.prepare(
        pipe, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds
    )
    if positive_prompt is not None and pipe.text is None:
        raise RequestError("positive_prompt is text for T5, and this cascade was loaded without it")
    plan = make_plan(
        pipe,
        mode,
        image,
        prompt,
        mask,
        strength,
        positive_prompt,
        mixer,
        negative_prompt,
        num_images_per_prompt,
        steps,
        guidance,
        noise_level,
        timesteps,
        last_stage,
        output_type,
    )
    plan = dataclasses.replace(plan, request=embeds.attach(pipe, plan.request, given))
    generator, seed = make_generator(generator, seed)
    outs = _run_stages(pipe, plan, RunContext(pipe.device, pipe.dtype, generator, progress, on_step), clean_caption)
    result = pipe.finish(plan.request, outs, seed)
    result.settings.update(
        mode=mode,
        strength=list(plan.strength[: min(2, plan.request.last_stage)]),
        positive_prompt=list(plan.positives or []),
        mixer=plan.mixer,
    )
    return result


def make_plan(
    pipe,
    mode,
    image,
    prompt,
    mask,
    strength,
    positive_prompt,
    mixer,
    negative_prompt,
    n,
    steps,
    guidance,
    noise_level,
    timesteps,
    last_stage,
    output_type,
) -> EditPlan:
    if pipe.stage1 is None:
        raise RequestError(f"{mode} needs a stage I checkpoint (stage1=)")
    if mode == "style" and pipe.stage2 is None:
        raise RequestError(
            "style transfer needs a stage II checkpoint (stage2=): the style is carried "
            "through the super-resolution stages"
        )
    last = pipe.resolve_last_stage(last_stage)
    shape = EditShape(tuple(_resolutions(pipe, last)), _defaults(pipe, MODES[mode]))
    return plan_edit(
        shape,
        mode,
        load_image(image),
        load_image(mask, "mask") if mode == "inpaint" and mask is not None else None,
        EditFields(prompt, negative_prompt, n, steps, guidance, noise_level, timesteps, last, output_type),
        strength,
        positive_prompt,
        mixer,
        check=lambda request: limits.check(pipe, request),  # before the sources are resized to a size that cannot fit
    )


@dataclass(frozen=True)
class EditShape:
    """What planning an edit needs of the cascade: (short side, size multiple) of each IF stage the edit
    runs, and the mode's step defaults. A server's front builds it from model facts, holding no model."""

    resolutions: tuple[tuple[int, int], ...]
    defaults: RunDefaults


@dataclass(frozen=True)
class EditFields:
    """An edit's settings that ``Request`` carries (``last_stage`` already resolved)."""

    prompt: object
    negative_prompt: object = None
    n: int = 1
    steps: object = None
    guidance: object = None
    noise_level: object = None
    timesteps: tuple = (None, None, None)
    last_stage: int = 2
    output_type: str = "pil"


def plan_edit(
    shape: EditShape,
    mode: str,
    src,
    mask,
    fields: EditFields,
    strength=None,
    positive_prompt=None,
    mixer=None,
    check=None,
) -> EditPlan:
    """Validate an edit of the PIL image ``src`` (``mask``: a PIL image or None) and resize its sources;
    ``check(request)`` refuses a request too large before any resize (the memory estimate)."""
    spec = MODES[mode]
    if mode != "inpaint":
        mask = None  # only inpainting repaints within a mask
    elif mask is None:
        raise RequestError("inpaint needs a mask (white = repaint)")
    else:
        check_mask(src, mask)
    last = fields.last_stage
    sizes = [tuple(reversed(target_size(src.width, src.height, short, mult))) for short, mult in shape.resolutions]
    prompts = options.as_prompts(fields.prompt, "style_prompt" if mode == "style" else "prompt")
    request = Request(
        prompts=prompts,
        negatives=options.negatives_for(prompts, fields.negative_prompt),
        height=sizes[0][0],
        width=sizes[0][1],
        num_images_per_prompt=options.check_images_per_prompt(fields.n),
        last_stage=last,
        output_type=options.check_output_type(fields.output_type),
        stages=options.stage_options(
            fields.steps, fields.guidance, fields.timesteps, fields.noise_level, shape.defaults
        ),
    )
    options.check_timesteps(request.stages, last)
    if check is not None:
        check(request)
    strengths = _strengths(strength, spec, request)
    sources = tuple(image_tensor(src, short, mult) for short, mult in shape.resolutions)
    masks = tuple(mask_tensor(mask, short, mult) if mask is not None else None for short, mult in shape.resolutions)
    positives, mixer = _positive(mode, positive_prompt, mixer, prompts)
    return EditPlan(request, strengths, sources, masks, positives, mixer, mode)


def _defaults(pipe, spec: Mode) -> RunDefaults:
    return mode_defaults(pipe.defaults, spec)


def mode_defaults(cascade: RunDefaults, spec: Mode) -> RunDefaults:
    """A cascade with its own step defaults (the demo's, recorded in its checkpoints) keeps them; otherwise
    the mode's reference defaults. ``ifengine generate`` checks requests with this before loading."""
    if cascade.steps != RunDefaults().steps:
        return RunDefaults(steps=cascade.steps, guidance=spec.defaults.guidance, noise_level=spec.defaults.noise_level)
    return spec.defaults


def _resolutions(pipe, last: int) -> list[tuple[int, int]]:
    """(short side, size multiple) of each IF stage used: the U-Net's sample size, multiples of 8 or more."""
    stages = [pipe.stage1, pipe.stage2][: min(last, 2)]
    return [(s.unet.config.sample_size, math.lcm(8, s.unet.config.downsample_factor)) for s in stages]


def _strengths(strength, spec: Mode, request: Request) -> tuple[float, float]:
    if strength is None:
        strength = spec.strength
    elif isinstance(strength, (int, float)):
        strength = (strength, spec.strength[1])
    try:
        strength = tuple(strength)
    except TypeError:
        raise RequestError(f"strength must be a number in (0, 1] or a pair, got {strength!r}") from None
    if len(strength) != 2:
        raise RequestError(f"strength takes one value (stage I) or two (stages I and II), got {strength!r}")
    out = tuple(check_strength(s, f"stage {i} strength") for i, s in enumerate(strength, start=1))
    for number in range(1, min(request.last_stage, 2) + 1):
        opts = request.stages[number - 1]
        count = len(options.timestep_list(opts)) if opts.timesteps is not None else opts.steps
        try:
            first_kept_step(count, out[number - 1])
        except ValueError as err:
            raise RequestError(f"stage {number}: {err}") from None
    return out


def _positive(mode, positive_prompt, mixer, prompts):
    if positive_prompt is None:
        return None, None
    if mode != "style":
        raise RequestError("positive_prompt is a style-transfer option")
    positives = options.negatives_for(prompts, positive_prompt, "positive_prompt")  # as negatives broadcast
    mixer = 0.5 if mixer is None else mixer
    if isinstance(mixer, bool) or not isinstance(mixer, (int, float)) or not 0 <= mixer <= 1:
        raise RequestError(f"mixer must be a number in [0, 1], got {mixer!r}")
    return positives, float(mixer)


def _run_stages(pipe, plan: EditPlan, ctx: RunContext, clean: bool) -> list[torch.Tensor]:
    req = plan.request
    n, batch = req.num_images_per_prompt, req.batch
    pos, neg = pipe.encode(req, clean)
    branches = [neg, pos]
    if plan.positives:
        branches.append(pipe.text.encode(preprocess(list(plan.positives), clean)).repeat_interleave(n, 0))
    stage_embeds = lambda o: torch.cat(branches) if o.cfg else pos  # noqa: E731
    outs: list[torch.Tensor] = []
    for number, stage in ((1, pipe.stage1), (2, pipe.stage2))[: min(req.last_stage, 2)]:
        opts = req.stages[number - 1]
        source = plan.sources[number - 1].expand(batch, -1, -1, -1)
        mask = plan.masks[number - 1]
        start = Start(source, plan.strength[number - 1], None if mask is None else mask.expand(batch, -1, -1, -1))
        outs.append(
            pipe.runner.run_if_stage(
                number,
                stage,
                opts,
                stage_embeds(opts),
                tuple(source.shape),
                ctx,
                image=outs[-1] if outs else None,
                start=start,
                mixer=plan.mixer,
            )
        )
    if req.last_stage >= 3:
        stage3, prompts, negatives = embeds.x4_inputs(pipe, req)
        outs.append(pipe.runner.run_x4_stage(stage3, req.stages[2], prompts, negatives, outs[-1], ctx))
    return outs
