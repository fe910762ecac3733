"""`ifengine generate --engines DIR` / `--artifacts DIR [--providers ...]`: which backend runs the networks."""

from __future__ import annotations

from pathlib import Path


# GPU-runtime flags that act on torch modules only (the memory planner, int8 weights, torch.compile)
_TORCH_ONLY = (("vram", "--vram"), ("compile", "--compile"), ("channels_last", "--channels-last"))


def add(parser) -> None:
    group = parser.add_argument_group(
        "exported graphs and TensorRT engines (instead of, or mixed with, --stage1/2/3 checkpoints)"
    )
    group.add_argument(
        "--engines",
        type=Path,
        default=None,
        help="engines built by `ifengine build` (its --out folder): TensorRT engines and/or Inductor packages "
        "(--compiler inductor); components without an engine run on torch from --stage1/2/3, else on ONNX "
        "Runtime from --artifacts. Every engine is checked (device, compiler version, checksum, staleness "
        "against --artifacts or the checkpoints) before any work",
    )
    group.add_argument(
        "--artifacts",
        type=Path,
        default=None,
        help="exported graphs (`ifengine export --out DIR`): run them on ONNX Runtime, or with --engines, "
        "the exports the engines were built from (checked for staleness, used for what has no engine)",
    )
    group.add_argument(
        "--providers",
        default=None,
        help="ONNX Runtime execution providers for --artifacts: cpu, cuda or tensorrt (comma list; "
        "cuda and tensorrt need onnxruntime-gpu). Default: cuda on a CUDA --device, else cpu",
    )


def check(args) -> None:
    """Refuse flag combinations that cannot apply, before anything is loaded."""
    if args.providers is not None and args.artifacts is None:
        raise ValueError("--providers chooses ONNX Runtime providers for --artifacts: add --artifacts DIR")
    if args.engines is None and args.artifacts is None:
        return
    used = [flag for attr, flag in _TORCH_ONLY if getattr(args, attr)]
    if args.weights != "auto":
        used.append("--weights")
    if args.throughput:  # TensorRT engines share one scratch allocation: they must not run on two streams
        used.append("--throughput")
    if used:
        raise ValueError(
            f"{', '.join(used)} act on torch checkpoints only; with --engines/--artifacts the exported "
            "graphs fix precision and memory: drop them (or run from --stage1/2/3)"
        )
    if args.engines is None and (args.stage1 or args.stage2 or args.stage3):
        raise ValueError("--artifacts runs every component from its graphs: drop --stage1/2/3 (or add --engines)")


def model_source(args):
    """The ``ModelSource`` the flags name: engines, exported graphs, checkpoints, or (none) the demo."""
    from ..pipeline.source import ModelSource

    text = lambda v: None if v is None else str(v)  # noqa: E731 - Path flags, str fields
    return ModelSource(
        stage1=args.stage1,
        stage2=args.stage2,
        stage3=args.stage3,
        variant=args.variant,
        artifacts=text(args.artifacts),
        engines=text(args.engines),
        providers=args.providers,
    )
