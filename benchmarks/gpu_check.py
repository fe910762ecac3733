"""The GPU check of the runtime in one command, designed to finish in under 8 minutes on an H200:

    PYTHONPATH=. python benchmarks/gpu_check.py --quick --out DIR

Needs torch with CUDA (plus transformers and safetensors, already dependencies); no diffusers, no
TensorRT, no install of the project (PYTHONPATH=. from the repository root). Writes DIR/gpu_check.json and
DIR/gpu_check.md: graph replay vs eager in ulps per stage, a cached-prompt call under sync debug "error",
ms per U-Net call eager vs graphs with MFU (IF-I-M, IF-I-XL, IF-II-L, x4 at batch 1 and 4), an 8 GiB
budget child at 1024x1024 (peak reserved vs plan) and throughput vs latency images/s. Every section is
bounded by its share of --seconds (default 420). ``--device cpu --preset tiny`` is the CPU smoke test.
Without CUDA (and without --device cpu) it exits with status 2 and says why.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from ifengine.bench.gpu_check import CheckConfig, budget_child, run_check, write_report


def require_cuda() -> None:
    if not torch.cuda.is_available():
        sys.stderr.write(
            f"gpu_check needs a CUDA GPU, but torch.cuda.is_available() is False (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda}). Run it on a machine with an NVIDIA GPU, or pass "
            "--device cpu --preset tiny for the CPU smoke test.\n"
        )
        raise SystemExit(2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--quick", action="store_true", help="few steps and repeats (the default budgeted run)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--preset", default="full", choices=("full", "tiny"))
    p.add_argument("--seconds", type=float, default=420.0, help="time budget of the whole check")
    p.add_argument("--budget", default="8GiB", help="memory budget of the budget child")
    p.add_argument("--budget-child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.budget_child:
        fields = json.loads(args.config)
        fields["steps"], fields["batches"] = tuple(fields["steps"]), tuple(fields["batches"])
        budget_child(CheckConfig(**fields), args.budget_child)
        return 0
    if args.device == "cuda":
        require_cuda()
    steps = (4, 3, 3) if args.quick or args.preset == "full" else (10, 5, 5)
    repeats = 5 if args.quick else 20
    size, batches, prompts = None, (1, 4), 4
    if args.preset == "tiny":  # the smoke test: seconds on a CPU
        steps, repeats, size, batches, prompts = (2, 2, 2), 1, 8, (1,), 2
    cfg = CheckConfig(
        device=args.device,
        preset=args.preset,
        steps=steps,
        batches=batches,
        repeats=repeats,
        budget=args.budget,
        prompts=prompts,
        size=size,
        seconds=args.seconds,
    )
    report = run_check(cfg, Path(__file__).resolve())
    paths = write_report(report, args.out)
    print(f"wrote {paths['json']} and {paths['md']} in {report['total_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
