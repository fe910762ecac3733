"""The GPU check of the runtime in one command, built to end within 9 minutes, start-up included:

    PYTHONPATH=. python3 benchmarks/gpu_check.py --quick --out DIR

Needs torch with CUDA (plus transformers and safetensors, already dependencies); no diffusers, no
TensorRT, no install of the project (PYTHONPATH=. from the repository root). Each section runs in its own
process, killed at its share of --seconds (default 480; not yet timed on a GPU); DIR/gpu_check.json
and .md are rewritten after every section, and DIR/gpu_check.<section>.log holds each section's output. Sections
(ifengine/bench/gpu_check/registry.py): machine, CUDA context size, graph replay vs eager in ulps per
stage, graph reuse across two calls, an uncached-prompt call under sync debug "error", throughput vs
latency images/s, ms per U-Net call eager vs graphs with MFU, and an 8 GiB budget child at 1024x1024
(peak vs plan, image vs the unconstrained one). ``--device cpu --preset tiny`` runs every section's code
on tiny models in a minute or two on a CPU (the default test suite does). Without CUDA (and without
--device cpu) it exits with status 2 and says why.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from ifengine.bench.gpu_check import DEFAULT_SECONDS, names, quick_config, run_check


def require_cuda() -> None:
    # asked through NVML, so this process never initialises CUDA: each section's child has the device alone
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    if not torch.cuda.is_available():
        sys.stderr.write(
            f"gpu_check needs a CUDA GPU, but torch.cuda.is_available() is False (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda}). Run it on a machine with an NVIDIA GPU, or pass "
            "--device cpu --preset tiny for the CPU smoke test.\n"
        )
        raise SystemExit(2)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--quick", action="store_true", help="5 timing repeats instead of 20 (the budgeted run)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--preset", default="full", choices=("full", "tiny"))
    p.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="time budget of the whole check")
    p.add_argument("--budget", default="8GiB", help="memory budget of the budget section")
    p.add_argument("--sections", help=f"comma-separated subset of: {','.join(names())}")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.device == "cuda":
        require_cuda()
    only = tuple(args.sections.split(",")) if args.sections else None
    unknown = set(only or ()) - set(names())
    if unknown:
        sys.stderr.write(f"unknown section(s) {sorted(unknown)}; the sections are {', '.join(names())}\n")
        return 2
    more = {} if args.quick or args.preset == "tiny" else {"repeats": 20}
    cfg = quick_config(args.device, args.preset, budget=args.budget, seconds=args.seconds, **more)
    started = time.monotonic()
    report = run_check(cfg, args.out, only)
    failed = [n for n, e in report["sections"].items() if e.get("status") != "ok"]
    print(f"wrote {args.out}/gpu_check.json and .md in {time.monotonic() - started:.1f} s; not ok: {failed or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
