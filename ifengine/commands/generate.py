"""`ifengine generate`: text to image through the cascade (or the tiny demo cascade)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from .common import DTYPES, csv_values as _csv

log = logging.getLogger("ifengine.cli")


def register(sub) -> None:
    p = sub.add_parser(
        "generate", help="text to image through the cascade",
        description="Generate images with DeepFloyd IF. Without --stage1/2/3 a built-in tiny demo cascade "
                    "with random weights runs in seconds on a CPU (its pictures are noise).")
    p.add_argument("prompt", help="the text prompt")
    p.add_argument("--negative", default=None, help="negative prompt (default: empty)")
    p.add_argument("--stage1", help="stage I checkpoint: local folder in the Hub layout or Hub id, "
                                    "e.g. DeepFloyd/IF-I-XL-v1.0")
    p.add_argument("--stage2", help="stage II checkpoint, e.g. DeepFloyd/IF-II-L-v1.0")
    p.add_argument("--stage3", help="stage III checkpoint, e.g. stabilityai/stable-diffusion-x4-upscaler")
    p.add_argument("--out", type=Path, required=True,
                   help="a .png file (one image) or a folder for numbered PNGs")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, reported)")
    p.add_argument("--steps", type=_csv(int), default=None, help="steps per stage, e.g. 100,50,75 or 20")
    p.add_argument("--guidance", type=_csv(float), default=None, help="guidance per stage, e.g. 7,4,9")
    p.add_argument("--noise-level", type=_csv(int), default=None,
                   help="noise level of stage II and III, e.g. 250,20")
    p.add_argument("--timesteps", type=_csv(str), default=None,
                   help="named timestep lists for stages I and II, e.g. smart100,smart50")
    p.add_argument("--height", type=int, default=None, help="stage I height (default 64)")
    p.add_argument("--width", type=int, default=None, help="stage I width (default 64)")
    p.add_argument("--aspect", default=None, help="aspect ratio W:H, e.g. 16:9 (sets height/width)")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt")
    p.add_argument("--last-stage", type=int, default=None, choices=(1, 2, 3),
                   help="stop after this stage (default: the last loaded one)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="float16 on GPU, float32 on CPU by default")
    p.add_argument("--variant", default=None, help="weight variant to load, e.g. fp16")
    p.add_argument("--no-safety", action="store_true", help="skip the safety checker and watermark")
    p.add_argument("--no-clean-caption", action="store_true", help="do not clean the prompt text")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args) -> int:
    import torch

    from .. import Cascade
    from ..demo import demo_cascade
    from ..pipeline.save import output_paths, save_images
    from ..pipeline.sizes import aspect_size

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("float16" if device.startswith("cuda") else "float32"))
    if args.aspect:
        args.height, args.width = aspect_size(args.aspect, args.height or 64)
    output_paths(args.out, args.num_images, None)  # reject a bad --out before any work
    if not (args.stage1 or args.stage2 or args.stage3):
        log.warning("no checkpoints given: running the built-in tiny DEMO cascade with random weights; "
                    "its pictures are noise. Pass --stage1/--stage2/--stage3 for real images.")
        pipe = demo_cascade(device=device, dtype=dtype)
    else:
        pipe = Cascade.from_pretrained(args.stage1, args.stage2, args.stage3, device=device, dtype=dtype,
                                       variant=args.variant, safety=not args.no_safety)
    out = pipe(args.prompt, negative_prompt=args.negative, height=args.height, width=args.width,
               num_images_per_prompt=args.num_images, seed=args.seed, steps=args.steps,
               guidance=args.guidance, noise_level=args.noise_level, timesteps=args.timesteps,
               last_stage=args.last_stage, clean_caption=not args.no_clean_caption, progress=not args.quiet)
    paths = output_paths(args.out, len(out.images), out.seed)
    save_images(out.images, paths, out.settings)
    for path in paths:
        sys.stdout.write(f"{path}\n")
    return 0
