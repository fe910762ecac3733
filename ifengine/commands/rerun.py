"""`generate --from IMAGE.png` and `--lora`: the flag forms of image settings and LoRA adapters."""

from __future__ import annotations

import argparse
from pathlib import Path

LORA_HELP = (
    "apply a LoRA (diffusers/peft safetensors file, folder or Hub id): [STAGE:]PATH[:SCALE], e.g. "
    "'my-lora.safetensors', '1:my-lora.safetensors:0.8' or '2:user/if-ii-lora:0.5'; STAGE 1, 2 or 3 "
    "(default 1), SCALE the adapter weight (default 1). Repeat for several adapters"
)


def lora_flag(text: str) -> tuple[int, str, float]:
    """'[STAGE:]PATH[:SCALE]' -> (stage, path, scale)."""
    parts = text.split(":")
    stage = int(parts.pop(0)) if len(parts) > 1 and parts[0] in ("1", "2", "3") else 1
    scale = 1.0
    if len(parts) > 1:
        try:
            scale = float(parts[-1])
            parts.pop()
        except ValueError:
            pass  # a ':' inside the path
    path = ":".join(parts)
    if not path:
        raise argparse.ArgumentTypeError(f"--lora {text!r}: expected [STAGE:]PATH[:SCALE]")
    return stage, path, scale


def apply_png_settings(args) -> None:
    """Fill every flag left at its default from the settings stored in ``args.from_png``."""
    from ..pipeline.metadata import MetadataError, read_image

    _, settings = read_image(args.from_png)
    if settings is None:
        raise MetadataError(f"{args.from_png} has no ifengine settings to re-run (only an A1111 'parameters' text)")
    prompts = settings.get("prompt") or []
    if len(prompts) != 1:
        raise MetadataError(f"{args.from_png} came from {len(prompts)} prompts; the CLI re-runs one (use the API)")
    stages = settings.get("stages") or []
    negative = (settings.get("negative_prompt") or [""])[0]
    fill = {
        "prompt": prompts[0],
        "negative": negative or None,
        "seed": settings.get("seed"),
        "steps": tuple(s["steps"] for s in stages) or None,
        "guidance": tuple(s["guidance"] for s in stages) or None,
        "noise_level": tuple(s["noise_level"] for s in stages[1:]) or None,
        "timesteps": _named_timesteps(stages, args.from_png),
        "height": settings.get("height"),
        "width": settings.get("width"),
        "last_stage": settings.get("last_stage"),
        # exported graphs and engines have their own precision (what was exported/built) unless asked
        "dtype": None if getattr(args, "artifacts", None) or getattr(args, "engines", None) else settings.get("dtype"),
        "strength": tuple(settings["strength"]) if settings.get("strength") else None,
        "positive": (settings.get("positive_prompt") or [None])[0],
        "mixer": settings.get("mixer"),
    }
    for name, value in fill.items():
        if getattr(args, name) is None and value is not None:
            setattr(args, name, value)
    if args.num_images is None:  # an explicit --num-images (1 included) wins
        args.num_images = int(settings.get("num_images_per_prompt", 1))
        args.from_run_images = args.num_images  # the image's run made this many: a .png --out cannot hold them
    _models(args, settings)
    if not args.lora:
        args.lora = [(a["stage"], a["source"], a["weight"]) for a in settings.get("lora", []) if a.get("source")]
    _mode(args, settings)


def _named_timesteps(stages, path: Path):
    lists = [s.get("timesteps") for s in stages[:2]]
    if any(isinstance(t, list) for t in lists):
        raise ValueError(f"{path} used an explicit timestep list; the CLI takes named lists (use the Python API)")
    return tuple(t or None for t in lists) if any(lists) else None


def _models(args, settings: dict) -> None:
    if args.stage1 or args.stage2 or args.stage3 or settings.get("demo"):
        return  # explicit checkpoints win; a demo image re-runs on the demo cascade
    if getattr(args, "artifacts", None) or getattr(args, "engines", None):
        # the graphs (and engines) given now decide the models; the image's checkpoints are not loaded
        # (with --engines, --stage1/2/3 given explicitly still add the torch parts)
        return
    for number, source in enumerate(settings.get("models") or [], start=1):
        if source:
            setattr(args, f"stage{number}", source)


def _mode(args, settings: dict) -> None:
    mode = settings.get("mode")
    if mode and args.image is None:
        raise ValueError(f"{args.from_png} was made by {mode} from a source image: give it with --image")
    if mode == "inpaint" and args.mask is None:
        raise ValueError(f"{args.from_png} was made by inpainting: give the source --image and its --mask")
    if mode == "style":
        args.style = True
