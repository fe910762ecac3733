"""`ifengine generate --engines DIR` / `--artifacts DIR [--providers ...]`: which backend runs the networks."""

from __future__ import annotations

from pathlib import Path

from ..dtypes import precision_of

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
        help="TensorRT engines built by `ifengine build` (its --out folder); components without an "
        "engine run on torch from --stage1/2/3, else on ONNX Runtime from --artifacts. Every engine is "
        "checked (GPU, TensorRT version, checksum, staleness against --artifacts) before any work",
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


def load(args, device: str, dtype):
    """The cascade from --engines or --artifacts, or None when neither was given."""
    return load_graphs(
        engines=args.engines,
        artifacts=args.artifacts,
        providers=args.providers,
        stages=(args.stage1, args.stage2, args.stage3),
        variant=args.variant,
        device=device,
        dtype=dtype,
        cuda_graphs=not args.no_cuda_graphs,
    )


def load_graphs(*, engines, artifacts, providers, stages, variant, device: str, dtype, cuda_graphs: bool = True):
    """``generate`` and ``serve`` alike: engines (checked first), else graphs on ONNX Runtime, else None."""
    from .. import Cascade

    if engines is not None:
        index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        stage1, stage2, stage3 = stages
        return Cascade.from_engines(
            engines,
            artifacts=artifacts,
            stage1=stage1,
            stage2=stage2,
            stage3=stage3,
            device=index,
            dtype=dtype,
            variant=variant,
            cuda_graphs=cuda_graphs,
        )
    if artifacts is not None:
        providers = providers or ("cuda" if device.startswith("cuda") else "cpu")
        return Cascade.from_artifacts(artifacts, providers=providers, precision=precision_of(dtype))
    return None
