"""`ifengine export`: every network and step graph of the cascade to ONNX, in the asked precisions."""

from __future__ import annotations

import logging

from ..facts import ALL_COMPONENTS, PRECISIONS
import sys
from pathlib import Path

log = logging.getLogger("ifengine.cli")


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export the cascade's networks and step graphs to ONNX",
        description="Export T5, the U-Nets, the x4 VAE decoder, the x4 text encoder and one whole denoising "
        "step per stage to ONNX, checked with onnx.checker and shape inference. Each artifact "
        "(ARTIFACTS/<component>/<precision>/) carries a manifest; up-to-date artifacts are kept, "
        "others are replaced atomically. Prints the manifest paths.",
    )
    p.add_argument("--stage1", help="stage I checkpoint (folder in the Hub layout or Hub id): T5, unet1, step1")
    p.add_argument("--stage2", help="stage II checkpoint: unet2, step2")
    p.add_argument("--stage3", help="stage III (x4 upscaler) checkpoint: clip, x4_unet, vae_decoder, step3")
    p.add_argument("--out", type=Path, required=True, help="artifacts folder")
    p.add_argument(
        "--components",
        type=_names(ALL_COMPONENTS),
        default=None,
        help=f"comma-separated subset of {','.join(ALL_COMPONENTS)} (default: all the checkpoints have)",
    )
    p.add_argument(
        "--precision",
        type=_names(PRECISIONS),
        default=None,
        help=f"comma-separated precisions from {','.join(PRECISIONS)} (default: what the checkpoints record, "
        "else fp16; the demo records fp32)",
    )
    p.add_argument("--variant", default=None, help="weight variant to read, e.g. fp16")
    p.add_argument("--calibration-samples", type=int, default=16, help="int8 calibration samples (default 16)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _names(allowed):
    import argparse

    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"{', '.join(bad) or 'nothing'}: choose from {', '.join(allowed)}")
        return names

    return parse


def run(args) -> int:
    from ..export.api import ExportOptions, export_artifacts
    from ..export.calibration import CalibrationSettings

    stages = {n: s for n, s in ((1, args.stage1), (2, args.stage2), (3, args.stage3)) if s}
    if not stages:
        raise ValueError("give at least one checkpoint: --stage1, --stage2 and/or --stage3")
    options = ExportOptions(calibration=CalibrationSettings(samples=args.calibration_samples))
    paths = export_artifacts(
        stages,
        args.out,
        components=args.components,
        precisions=args.precision,
        progress=not args.quiet,
        options=options,
        variant=args.variant,
    )
    for path in paths:
        sys.stdout.write(f"{path}\n")
    return 0
