"""`ifengine plan`: which weights stay on the GPU under a memory budget, and the predicted peak per stage."""

from __future__ import annotations

import sys

from .common import DTYPES, csv_values, memory_size
from ..facts import DEFAULT_STEPS
from ..stage.options import per_stage
from ..validate import positive_int

STEPS_TEXT = ",".join(map(str, DEFAULT_STEPS))

DEFAULT_PRESET = "IF-I-XL,IF-II-L,x4"


def register(sub) -> None:
    p = sub.add_parser(
        "plan",
        help="print the memory plan for a VRAM budget",
        description="Plan where every weight of the cascade lives under a GPU memory budget (resident, moved "
        "in per stage from pinned host memory, or streamed), whether the VAE decodes in tiles, "
        "and the predicted peak per stage. Nothing is loaded: sizes come from model configs.",
    )
    p.add_argument("--vram", required=True, type=memory_size, help="memory budget, e.g. 8GiB, 12GB or 8000MiB")
    p.add_argument(
        "--preset",
        default=None,
        help=f"stage presets, comma-separated (default {DEFAULT_PRESET}); e.g. IF-I-L,IF-II-M,x4",
    )
    p.add_argument("--stage1", help="plan for this checkpoint's configs instead (folder or Hub id)")
    p.add_argument("--stage2", help="stage II checkpoint (folder or Hub id)")
    p.add_argument("--stage3", help="stage III checkpoint (folder or Hub id)")
    p.add_argument("--height", type=int, default=64, help="stage I height (default 64)")
    p.add_argument("--width", type=int, default=64, help="stage I width (default 64)")
    p.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    p.add_argument("--steps", type=csv_values(int), default=None, help=f"steps per stage (default {STEPS_TEXT})")
    p.add_argument("--dtype", choices=DTYPES, default="float16", help="U-Net precision (default float16)")
    p.add_argument(
        "--weights",
        choices=("auto", "native", "int8"),
        default="auto",
        help="U-Net weights: native (--dtype), int8 (weight-only), or auto (default): int8 only for "
        "U-Nets whose native weights would otherwise stream over PCIe every step",
    )
    p.add_argument("--no-cuda-graphs", action="store_true", help="plan for eager steps")
    p.add_argument("--throughput", action="store_true", help="plan for overlapped stages (all U-Nets resident)")
    p.add_argument("--reserve", type=memory_size, default=None, help="headroom for workspaces (default 512MiB)")
    p.set_defaults(run=run)


def run(args) -> int:
    import torch

    from ..memory.workload import Workload
    from ..memory.plan_inputs import checkpoint_modules, preset_modules
    from ..memory.plan_report import format_plan
    from ..memory.planner import PlanOptions
    from ..memory.weight_precision import choose_weights

    dtype = getattr(torch, args.dtype)
    if args.stage1 or args.stage2 or args.stage3:
        if args.preset:
            raise ValueError("give either --preset or --stage1/--stage2/--stage3, not both")
        if not args.stage1:
            raise ValueError("planning needs stage I: pass --stage1 (with --stage2/--stage3 as wanted)")
        modules = checkpoint_modules(args.stage1, args.stage2, args.stage3, dtype=dtype)
    else:
        modules = preset_modules(tuple(n.strip() for n in (args.preset or DEFAULT_PRESET).split(",")), dtype)
    workload = Workload(
        height=args.height, width=args.width, batch=positive_int(args.batch, "--batch"), steps=_steps(args.steps)
    )
    options = PlanOptions(
        cuda_graphs=not args.no_cuda_graphs,
        mode="throughput" if args.throughput else "latency",
        **({"reserve_bytes": args.reserve} if args.reserve else {}),
    )
    choice = choose_weights(modules, workload, args.vram, options, args.weights)
    sys.stdout.write(format_plan(choice.plan, choice.inputs) + "\n")
    return 0


def _steps(value) -> tuple[int, int, int]:
    """One value for every stage, or up to one per stage (missing ones keep the defaults)."""
    return tuple(positive_int(v, "--steps") for v in per_stage(value, DEFAULT_STEPS, "--steps"))
