"""`ifengine generate`: everything that can be checked without weights, checked before loading any.

Reads only the checkpoints' JSON (model_index.json, unet/vae/scheduler configs, text encoder configs):
sizes against the U-Nets' downsampling, steps, guidance, noise levels, timesteps, strengths, the source
image and mask, the --out path, and finally the request's memory estimate (weights included, since none
are loaded yet) against the device's free memory. A bad flag is reported before a weights file is opened.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..memory.estimate import Limits, RequestEstimate, RequestTooLarge, estimate_modules
from ..memory.sizes import format_size, parse_size
from ..models.checkpoint import Checkpoint, read_run_defaults, resolve
from ..models.config import UNetConfig
from ..models.t5_precision import device_has_bf16
from ..stage import options, sizes
from ..pipeline.inputs import check_mask, check_strength, load_image, target_size
from ..pipeline.save import check_out

log = logging.getLogger("ifengine.cli")


@dataclass(frozen=True)
class Preflight:
    """What the checks found: the request's stage I size, batch and last stage, and its estimate."""

    height: int
    width: int
    batch: int
    last_stage: int
    estimate: RequestEstimate | None


def stage_sources(args) -> dict[int, str | Path]:
    """The checkpoint of each stage the run loads (the demo's folders when none is given)."""
    given = {n: getattr(args, f"stage{n}") for n in (1, 2, 3) if getattr(args, f"stage{n}")}
    if given:
        return given
    from ..demo import demo_checkpoints

    paths = demo_checkpoints()  # written on first use; only its JSON is read here
    return {1: paths["stage1"], 2: paths["stage2"], 3: paths["stage3"]}


def _configs(source, stage: int) -> Path:
    """A local folder as is; a Hub id fetched without its weights (anything else: resolve's own error)."""
    from ..memory.plan_inputs import _configs_only

    text = str(source)
    if Path(source).expanduser().is_dir() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        return resolve(source, stage).root
    return Path(_configs_only(source))


def check_before_loading(args, device: torch.device, dtype: torch.dtype, prompts: list[str] | None) -> Preflight:
    """Raise ValueError for the first flag that cannot work; returns the request's shape and estimate."""
    graphs = bool(getattr(args, "artifacts", None) or getattr(args, "engines", None))
    given = {n: getattr(args, f"stage{n}") for n in (1, 2, 3) if getattr(args, f"stage{n}")}
    ckpts = {n: resolve(_configs(src, n), n) for n, src in (given if graphs else stage_sources(args)).items()}
    unets = {n: c.parsed(UNetConfig, "unet") for n, c in ckpts.items()}
    if getattr(args, "artifacts", None):  # what no checkpoint gives, the exported graphs' manifests say
        from ..backends.onnxruntime.load import graph_unet_configs

        unets = {**graph_unet_configs(args.artifacts), **unets}
    if graphs and 1 not in unets:  # engines alone: from_engines checks them (and their shapes) before any work
        _check_one_png(args, prompts)
        check_out(args.out, None if prompts is not None else options.check_images_per_prompt(_num_images(args)))
        return Preflight(args.height or 0, args.width or 0, _num_images(args), args.last_stage or 0, None)
    last = _last_stage(args.last_stage, tuple(sorted(unets)))
    if 1 not in unets:
        raise ValueError("generate needs a stage I checkpoint (--stage1)")
    multiple = sizes.size_multiple({n: unets[n].downsample_factor for n in range(1, last + 1)})
    height, width = _size(args, unets, last, multiple)
    defaults = _defaults(args, ckpts)
    stages = options.stage_options(args.steps, args.guidance, args.timesteps, args.noise_level, defaults)
    options.check_timesteps(stages)
    n = options.check_images_per_prompt(_num_images(args))
    batch = args.batch_size if prompts is not None else n
    if args.strength is not None:
        values = args.strength if isinstance(args.strength, tuple) else (args.strength,)
        for i, value in enumerate(values, start=1):
            check_strength(value, f"--strength (stage {i})")
    _check_one_png(args, prompts)
    check_out(args.out, None if prompts is not None else n)
    steps = tuple(s.steps for s in stages)
    # graphs and engines size their own memory (profiles, ORT arenas): the estimate models torch runs only
    budget = parse_size(args.vram) if getattr(args, "vram", None) is not None else None
    est = None if graphs else _estimate(ckpts, device, dtype, batch, height, width, last, steps, multiple, budget)
    return Preflight(height, width, batch, last, est)


def _num_images(args) -> int:
    """--num-images, 1 when not given (generate's prepare sets it; callers of this module may not)."""
    return 1 if args.num_images is None else args.num_images


def _check_one_png(args, prompts) -> None:
    """A .png --out holds one image: a run of several is refused here, not after the weights load."""
    count = 1 if prompts is not None else options.check_images_per_prompt(_num_images(args))
    if count == 1 or Path(args.out).suffix.lower() != ".png" or Path(args.out).is_dir():
        return
    origin = ""
    if getattr(args, "from_run_images", None) == count:
        origin = f" ({args.from_png} is one image of a run of {count}, and the run is made again whole"
        origin += "; add --num-images 1 for a new single image)"
    raise ValueError(f"--out {args.out} names one PNG file but the run makes {count} images{origin}; give a folder")


def _last_stage(last_stage: int | None, loaded: tuple[int, ...]) -> int:
    if last_stage is None:
        return max(n for n in loaded if set(range(1, n + 1)) <= set(loaded))
    missing = [n for n in range(1, last_stage + 1) if n not in loaded]
    if missing:
        raise ValueError(f"--last-stage {last_stage} needs stage {missing[0]}: pass --stage{missing[0]}")
    return last_stage


def _size(args, unets: dict[int, UNetConfig], last: int, multiple: int) -> tuple[int, int]:
    """Stage I (height, width): the flags' (checked against every used U-Net), or the source image's."""
    if args.image is None:
        default = unets[1].sample_size
        height = default if args.height is None else args.height
        width = default if args.width is None else args.width
        sizes.check_size(height, width, multiple)
        return height, width
    image = load_image(args.image)  # readable, an image: checked now, not after loading
    if args.mask:
        check_mask(image, load_image(args.mask, "mask"))
    width, height = target_size(image.width, image.height, unets[1].sample_size, math.lcm(8, multiple))
    return height, width


def _defaults(args, ckpts: dict[int, Checkpoint]) -> options.RunDefaults:
    """The defaults the loaded cascade will apply: what its checkpoints (or exported graphs) record."""
    from ..pipeline.edit import MODES, mode_defaults

    entries = {}
    if getattr(args, "artifacts", None):
        from ..backends.onnxruntime.load import graph_run_defaults

        entries = graph_run_defaults(args.artifacts)
    entries = {**entries, **{n: read_run_defaults(c.root) for n, c in ckpts.items()}}
    cascade = options.run_defaults(entries)
    if args.image is None:
        return cascade
    return mode_defaults(cascade, MODES["style" if args.style else "inpaint" if args.mask else "img2img"])


def _estimate(ckpts: dict[int, Checkpoint], device, dtype, batch, height, width, last, steps, multiple, budget=None):
    """Weights (from the configs, on meta) + activations + buffers against the device's memory; with a
    ``--vram`` budget, the planner places the weights (offloading, streaming), so only what no plan can
    avoid (buffers and activations) is checked against the budget here, and the plan does the rest."""
    from ..memory.plan_inputs import checkpoint_modules

    kwargs = {f"stage{n}": c.root for n, c in ckpts.items() if n <= last}
    modules = checkpoint_modules(**kwargs, dtype=dtype, bf16=device_has_bf16(device))
    est = estimate_modules(
        modules,
        batch=batch,
        height=height,
        width=width,
        last_stage=last,
        steps=steps,
        device=device,
        weights_loaded=budget is not None,  # under a plan, weights need not fit next to everything else
        limits=Limits(memory=budget),
        multiple=multiple,
    )
    if not est.fits:
        raise RequestTooLarge(est)
    limit = f" of {format_size(est.limit_bytes)} {est.limit_source}" if est.limit_bytes else ""
    log.info("memory estimate: %s%s", est.summary(), limit)
    return est
