"""`ifengine generate`: text to image through the cascade (or the tiny demo cascade)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from . import backend_flags
from .common import DTYPES, csv_values as _csv
from .rerun import LORA_HELP, apply_png_settings, lora_flag
from ..validate import positive_int

log = logging.getLogger("ifengine.cli")


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="text to image through the cascade",
        description="Generate images with DeepFloyd IF. Without --stage1/2/3 a built-in tiny demo cascade "
        "with random weights runs in seconds on a CPU (its pictures are noise).",
    )
    p.add_argument("prompt", nargs="?", default=None, help="the text prompt (or --prompts-file, or --from)")
    p.add_argument("--negative", default=None, help="negative prompt (default: empty)")
    p.add_argument(
        "--stage1", help="stage I checkpoint: local folder in the Hub layout or Hub id, e.g. DeepFloyd/IF-I-XL-v1.0"
    )
    p.add_argument("--stage2", help="stage II checkpoint, e.g. DeepFloyd/IF-II-L-v1.0")
    p.add_argument("--stage3", help="stage III checkpoint, e.g. stabilityai/stable-diffusion-x4-upscaler")
    p.add_argument("--out", type=Path, required=True, help="a .png file (one image) or a folder for numbered PNGs")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, reported)")
    p.add_argument("--steps", type=_csv(int), default=None, help="steps per stage, e.g. 100,50,75 or 20")
    p.add_argument("--guidance", type=_csv(float), default=None, help="guidance per stage, e.g. 7,4,9")
    p.add_argument("--noise-level", type=_csv(int), default=None, help="noise level of stage II and III, e.g. 250,20")
    p.add_argument(
        "--timesteps",
        type=_csv(str),
        default=None,
        help="named timestep lists for stages I and II, e.g. smart100,smart50",
    )
    p.add_argument("--height", type=int, default=None, help="stage I height (default 64)")
    p.add_argument("--width", type=int, default=None, help="stage I width (default 64)")
    p.add_argument("--aspect", default=None, help="aspect ratio W:H, e.g. 16:9 (sets height/width)")
    p.add_argument("--num-images", type=int, default=None, help="images per prompt (default 1, or --from's)")
    p.add_argument(
        "--last-stage",
        type=int,
        default=None,
        choices=(1, 2, 3),
        help="stop after this stage (default: the last loaded one)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--dtype",
        "--torch-dtype",
        dest="dtype",
        choices=DTYPES,
        default=None,
        help="float16 on GPU, float32 on CPU by default (--torch-dtype: diffusers' name, the same flag)",
    )
    p.add_argument(
        "--lora", action="append", type=lora_flag, default=[], metavar="[STAGE:]PATH[:SCALE]", help=LORA_HELP
    )
    p.add_argument(
        "--from",
        dest="from_png",
        type=Path,
        default=None,
        metavar="IMAGE.png",
        help="re-run the settings stored in a PNG written by ifengine (see `ifengine info`); flags given "
        "explicitly override them",
    )
    p.add_argument("--variant", default=None, help="weight variant to load, e.g. fp16")
    p.add_argument("--no-safety", action="store_true", help="skip the safety checker and watermark")
    p.add_argument("--no-clean-caption", action="store_true", help="do not clean the prompt text")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    backend_flags.add(p)
    _runtime_flags(p.add_argument_group("GPU runtime (static buffers, CUDA graphs, memory planner)"))
    _many_flags(p.add_argument_group("many prompts (throughput)"))
    edit = p.add_argument_group("image editing (zero-shot, through the same weights)")
    edit.add_argument("--image", help="source image: img2img, or inpainting with --mask, or --style")
    edit.add_argument("--mask", help="inpainting mask, white = repaint (same aspect ratio as --image)")
    edit.add_argument(
        "--strength",
        type=_csv(float),
        default=None,
        help="how much of the schedule to redo, in (0, 1], for stage I or 'I,II' "
        "(img2img 0.7,0.8; inpaint 1.0,0.8; style 0.5,0.5)",
    )
    edit.add_argument(
        "--style", action="store_true", help="style transfer: the prompt is a style prompt applied to --image"
    )
    edit.add_argument("--positive", default=None, help="style transfer: positive prompt mixed into guidance")
    edit.add_argument("--mixer", type=float, default=None, help="style transfer: weight of --positive (0.5)")
    p.set_defaults(run=run)


def _runtime_flags(group) -> None:
    group.add_argument(
        "--vram",
        default=None,
        help="GPU memory budget, e.g. 8GiB or 12GB: the planner decides which weights stay on the "
        "GPU, which move in per stage from pinned host memory, and when the VAE decodes in "
        "tiles (see `ifengine plan`). Default: no planning, every weight on the device",
    )
    group.add_argument(
        "--weights",
        choices=("auto", "native", "int8"),
        default="auto",
        help="U-Net weights: native (--dtype), int8 (weight-only), or auto (default): int8 only "
        "for U-Nets that --vram would otherwise stream over PCIe every step",
    )
    group.add_argument("--no-cuda-graphs", action="store_true", help="run each step eagerly (debugging)")
    group.add_argument("--compile", action="store_true", help="torch.compile the U-Nets (minutes per shape)")
    group.add_argument("--channels-last", action="store_true", help="channels-last U-Net weights")


def _many_flags(group) -> None:
    group.add_argument(
        "--prompts-file",
        type=Path,
        default=None,
        help="many prompts, one per line (blank lines and lines starting with # are skipped): one "
        "image each, written to the --out folder; reports images per second",
    )
    group.add_argument("--batch-size", type=int, default=1, help="prompts per batch (default 1)")
    group.add_argument(
        "--throughput",
        action="store_true",
        help="on a GPU: overlap stage I of the next batch with stages II/III of the current one "
        "on two CUDA streams (keeps every U-Net resident)",
    )


def _runtime(args):
    """The runtime flags as the RuntimeOptions the Python API takes (a bad --vram fails before loading)."""
    from ..runtime.options import RuntimeOptions

    return RuntimeOptions.of(
        vram_budget=args.vram,
        cuda_graphs=False if args.no_cuda_graphs else None,
        compile=args.compile,
        channels_last=args.channels_last,
        weights=args.weights,
        throughput=args.throughput,
        # buffers and the plan hold this run's batch and size
        max_batch=max(args.batch_size, args.num_images),
        max_size=None if args.height is None and args.width is None else (args.height, args.width),
    )


def prepare(args):
    """Everything checked before loading (configs and --out, no weights): (device, dtype, prompts, runtime)."""
    import torch

    from ..pipeline.limits import check_device
    from ..stage.sizes import aspect_size
    from .preflight import check_before_loading

    if args.from_png is not None:
        apply_png_settings(args)
    if args.num_images is None:  # None until here, so that --from knows an explicit --num-images
        args.num_images = 1
    _warn_conflicts()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    dtype = getattr(torch, args.dtype or ("float16" if device.startswith("cuda") else "float32"))
    if args.aspect:
        args.height, args.width = aspect_size(args.aspect, args.height or 64)
    prompts = _check_prompt_flags(args)  # everything a user can get wrong is refused before any loading
    _check_edit_flags(args)
    backend_flags.check(args)
    check_before_loading(args, torch.device(device), dtype, prompts)  # names the flag a bad size came from
    runtime = _runtime(args)
    return device, dtype, prompts, runtime


def _warn_conflicts() -> None:
    """Both ONNX Runtime packages installed: graphs may silently lose their GPU providers (see installed.py)."""
    from ..installed import ort_conflict

    conflict = ort_conflict()
    if conflict:
        log.warning(conflict)


def run(args) -> int:
    from ..pipeline.cascade import open_cascade
    from ..pipeline.save import output_paths, save_images
    from ..runtime.options import RuntimeOptions

    device, dtype, prompts, runtime = prepare(args)
    source = backend_flags.model_source(args)
    demo = source.is_demo
    if demo:
        log.warning(
            "no checkpoints given: running the built-in tiny DEMO cascade with random weights; "
            "its pictures are noise. Pass --stage1/--stage2/--stage3 for real images."
        )
    if source.uses_graphs:  # the exports fix precision and memory; only graph capture stays a choice
        runtime = RuntimeOptions(cuda_graphs=runtime.cuda_graphs) if source.engines else None
        dtype = dtype if args.dtype is not None else None  # without --dtype: what was exported or built
    pipe = open_cascade(source, device=device, dtype=dtype, safety=not args.no_safety, runtime=runtime)
    for stage, source, scale in args.lora:
        pipe.load_lora_weights(source, stage=stage, scale=scale)
    if prompts is not None:
        return _many(pipe, prompts, args)
    common = dict(
        negative_prompt=args.negative,
        num_images_per_prompt=args.num_images,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        noise_level=args.noise_level,
        timesteps=args.timesteps,
        last_stage=args.last_stage,
        clean_caption=not args.no_clean_caption,
        progress=not args.quiet,
    )
    out = _dispatch(pipe, args, common)
    if demo:
        out.settings["demo"] = True  # `--from` re-runs it on the demo cascade
    paths = output_paths(args.out, len(out.images), out.seed)
    save_images(out.images, paths, out.settings)
    for path in paths:
        sys.stdout.write(f"{path}\n")
    return 0


def _check_prompt_flags(args) -> list[str] | None:
    """The prompts of a --prompts-file run (None for a single prompt), after checking the flags around them."""
    if args.prompts_file is None:
        if args.prompt is None:
            raise ValueError("give a prompt, or --prompts-file FILE with one prompt per line")
        if args.throughput or args.batch_size != 1:
            raise ValueError("--throughput and --batch-size go with --prompts-file")
        return None
    if args.prompt is not None:
        raise ValueError("give either a prompt or --prompts-file, not both")
    if args.image or args.num_images != 1:
        raise ValueError("--prompts-file makes one text-to-image picture per prompt: drop --image/--num-images")
    if args.out.suffix.lower() == ".png":
        raise ValueError(f"--out {args.out} names one PNG file; --prompts-file writes many: give a folder")
    positive_int(args.batch_size, "--batch-size")
    try:
        lines = args.prompts_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read --prompts-file {args.prompts_file}: {err}") from err
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"--prompts-file {args.prompts_file} has no prompts (one per line; # starts a comment)")
    return prompts


def _many(pipe, prompts: list[str], args) -> int:
    from ..pipeline.save import save_images

    out = pipe.generate_many(
        prompts,
        batch_size=args.batch_size,
        seed=args.seed,
        negative_prompt=args.negative,
        height=args.height,
        width=args.width,
        steps=args.steps,
        guidance=args.guidance,
        noise_level=args.noise_level,
        clean_caption=not args.no_clean_caption,
    )
    for i, (image, prompt, seed) in enumerate(zip(out.images, out.prompts, out.seeds, strict=True)):
        path = args.out / f"if-{seed}-{i:04d}.png"
        save_images([image], [path], {**out.settings, "prompt": [prompt], "seed": seed})
        sys.stdout.write(f"{path}\n")
    log.info(
        "%d images in %.2f s: %.3f images/s (text encoding not included)",
        len(out.images),
        out.seconds,
        out.images_per_second,
    )
    return 0


def _check_edit_flags(args) -> None:
    if args.image is None and (args.mask or args.style or args.strength is not None or args.positive):
        raise ValueError("--mask, --strength, --style and --positive need a source --image")
    if args.mask and args.style:
        raise ValueError("choose one editing mode: --mask (inpainting) or --style (style transfer)")
    if (args.positive or args.mixer is not None) and not args.style:
        raise ValueError("--positive and --mixer are style-transfer options (add --style)")


def _dispatch(pipe, args, common: dict):
    """Text to image, or the editing mode the flags ask for."""
    if args.image is None:
        return pipe(args.prompt, height=args.height, width=args.width, **common)
    if args.style:
        return pipe.style_transfer(
            args.image, args.prompt, positive_prompt=args.positive, mixer=args.mixer, strength=args.strength, **common
        )
    if args.mask:
        return pipe.inpaint(args.image, args.mask, args.prompt, strength=args.strength or 1.0, **common)
    return pipe.img2img(args.image, args.prompt, strength=args.strength or 0.7, **common)
