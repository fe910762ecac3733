"""`ifengine bench`: the standard benchmark set for what is installed, or one benchmark by name.

Without a subcommand: FLOP counts (meta device), host overhead per step (CPU, tiny model), and with a
CUDA GPU the cascade latency/throughput/MFU and memory benchmarks; each prints its Markdown table and
writes JSON + Markdown (+ PNG) under --out. ``benchmarks/*.py`` are thin wrappers of the subcommands.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path

from .common import csv_values
from ..facts import DEFAULT_STEPS

log = logging.getLogger("ifengine.cli")


def _tuple(kind):
    parse = csv_values(kind)
    return lambda text: (lambda v: v if isinstance(v, tuple) else (v,))(parse(text))


def _budgets(text: str) -> tuple[float, ...]:
    return () if text.strip().lower() in ("", "none") else _tuple(float)(text)


def register(sub) -> None:
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for JSON/Markdown/PNG results")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    p = sub.add_parser(
        "bench",
        parents=[out],
        help="benchmarks: latency, memory, host overhead, FLOPs",
        description="Run the standard benchmark set for the installed backends, or one of them.",
    )
    p.add_argument("--quick", action="store_true", help="CI-sized runs: few steps and repetitions (a smoke test)")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU benchmarks even when CUDA is available")
    p.set_defaults(run=run)
    which = p.add_subparsers(dest="bench", metavar="BENCHMARK")
    _host_args(which.add_parser("host", parents=[out], help="per-step host overhead on the CPU, tiny model"))
    _cascade_args(which.add_parser("cascade", parents=[out], help="cascade latency, throughput and MFU per stage"))
    _memory_args(which.add_parser("memory", parents=[out], help="peak device memory per stage and per --vram"))
    _work_args(which.add_parser("work", parents=[out], help="FLOP counts per component vs if-facts, matmul peak"))
    _checkpoint_args(which.add_parser("checkpoints", parents=[out], help="build the random benchmark checkpoints"))


def _host_args(p) -> None:
    p.add_argument("--size", type=int, default=8, help="stage I height and width")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--short-steps", type=int, default=5)
    p.add_argument("--long-steps", type=int, default=45)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--systems", type=_tuple(str), default=("diffusers", "ifengine-eager", "ifengine-traced"))
    p.add_argument("--checkpoint", default=None, help="stage I folder (default: the tiny demo stage I)")


def _gpu_common(p) -> None:
    p.add_argument("--preset", default="full", choices=("full", "medium", "tiny"), help="component presets")
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run with --preset tiny")
    p.add_argument("--steps", type=_tuple(int), default=DEFAULT_STEPS, help="steps of stages I, II, III")
    p.add_argument("--size", type=int, default=None, help="stage I size (default: the preset's)")
    p.add_argument("--checkpoints", default=None, help="folder of the random checkpoints (built on first use)")


def _cascade_args(p) -> None:
    _gpu_common(p)
    p.add_argument("--dtypes", type=_tuple(str), default=("float16", "bfloat16"), help="float16,bfloat16[,int8]")
    p.add_argument("--batches", type=_tuple(int), default=(1, 4, 8))
    p.add_argument(
        "--systems",
        type=_tuple(str),
        default=("ifengine-eager", "ifengine-traced", "ifengine-graphs", "diffusers-eager", "diffusers-compile"),
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--artifacts", default=None, help="exported graphs for the ifengine-onnxruntime system")
    p.add_argument(
        "--engines", default=None, help="`ifengine build --compiler inductor` output for the ifengine-inductor system"
    )


def _memory_args(p) -> None:
    _gpu_common(p)
    p.add_argument("--dtype", default="float16")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument(
        "--systems",
        type=_tuple(str),
        default=("ifengine-eager", "ifengine-graphs", "ifengine-graphs-native", "diffusers-eager", "diffusers-offload"),
        help="comma-separated; ifengine-graphs plans with int8 U-Nets where a budget would stream "
        "them, ifengine-graphs-native streams fp16 instead, ifengine-graphs-int8 is int8 always",
    )
    p.add_argument(
        "--vram",
        type=_budgets,
        default=(24.0, 16.0, 12.0, 8.0),
        help="GiB budgets to run under, e.g. 24,16,12 (none: only the unconstrained run)",
    )


def _work_args(p) -> None:
    p.add_argument("--device", default="cpu", help="where to measure the matmul peak")
    p.add_argument("--dtype", default=None, help="matmul peak dtype (default: bfloat16 on CUDA, else float32)")
    p.add_argument("--peak-size", type=int, default=None, help="matmul size (default 8192 on CUDA, 1024 on CPU)")


def _checkpoint_args(p) -> None:
    p.add_argument("--preset", default="full", choices=("full", "medium", "tiny"))
    p.add_argument("--checkpoints", default=None, help="target folder (default: the benchmark cache)")


def run(args) -> int:
    name = getattr(args, "bench", None) or "standard"
    return {
        "standard": _standard,
        "host": _host,
        "cascade": _cascade,
        "memory": _memory,
        "work": _work,
        "checkpoints": _checkpoints,
    }[name](args)


def _show(table: str, paths: dict) -> None:
    sys.stdout.write(table + "\n" + "".join(f"wrote {p}\n" for p in paths.values()))


def _host(args, **override) -> int:
    from ..bench.host import HostConfig, host_table, run_host_overhead, write_host_results

    config = HostConfig(
        size=args.size,
        threads=args.threads,
        short_steps=args.short_steps,
        long_steps=args.long_steps,
        repeats=args.repeats,
        warmup=args.warmup,
        systems=tuple(args.systems),
        checkpoint=args.checkpoint,
        **override,
    )
    payload = run_host_overhead(config, progress=not args.quiet)
    _show(host_table(payload), write_host_results(payload, args.out))
    return 0


def _cascade(args) -> int:
    from ..bench.cascade import CascadeBenchConfig, cascade_table, run_cascade_bench, write_cascade_results

    config = CascadeBenchConfig(
        preset=args.preset,
        device=args.device,
        dtypes=tuple(args.dtypes),
        batches=tuple(args.batches),
        systems=tuple(args.systems),
        steps=tuple(args.steps),
        repeats=args.repeats,
        warmup=args.warmup,
        checkpoints=args.checkpoints,
        artifacts=args.artifacts,
        engines=args.engines,
        size=args.size,
    )
    payload = run_cascade_bench(config, progress=not args.quiet)
    _show(cascade_table(payload), write_cascade_results(payload, args.out))
    return 0


def _memory(args) -> int:
    from ..bench.memory import MemoryBenchConfig, memory_table, run_memory_bench, write_memory_results

    config = MemoryBenchConfig(
        preset=args.preset,
        device=args.device,
        dtype=args.dtype,
        batch=args.batch,
        systems=tuple(args.systems),
        vram=tuple(args.vram),
        steps=tuple(args.steps),
        checkpoints=args.checkpoints,
        size=args.size,
    )
    payload = run_memory_bench(config, progress=not args.quiet)
    _show(memory_table(payload), write_memory_results(payload, args.out))
    return 0


def _work(args) -> int:
    from ..bench.work import WorkConfig, run_work, work_table, write_work_results

    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    payload = run_work(WorkConfig(device=args.device, dtype=dtype, peak_size=args.peak_size))
    _show(work_table(payload), write_work_results(payload, args.out))
    return 0


def _checkpoints(args) -> int:
    from ..bench.cascade import default_checkpoint_root
    from ..bench.checkpoints import build_checkpoints, cascade_spec

    spec = cascade_spec(args.preset)
    root = Path(args.checkpoints) if args.checkpoints else default_checkpoint_root(spec.name)
    for name, path in build_checkpoints(spec, root, progress=not args.quiet).items():
        sys.stdout.write(f"{name}: {path}\n")
    return 0


def _standard(args) -> int:
    """Every benchmark the installed backends allow, with one progress bar over the set."""
    import torch
    from tqdm.auto import tqdm

    plan = _standard_plan(
        args,
        gpu=torch.cuda.is_available() and not args.no_gpu,
        diffusers=importlib.util.find_spec("diffusers") is not None,
    )
    for label, call in tqdm(plan, desc="ifengine bench", disable=args.quiet):
        log.info("benchmark: %s", label)
        call()
    if args.quick:
        sys.stdout.write("--quick is a smoke run of the machinery: its timings are not measurements\n")
    return 0


def _standard_plan(args, gpu: bool, diffusers: bool) -> list:
    quick = args.quick
    host = argparse.Namespace(
        **vars(args),
        size=8,
        threads=1,
        short_steps=2 if quick else 5,
        long_steps=6 if quick else 45,
        repeats=2 if quick else 9,
        warmup=1,
        systems=(("diffusers",) if diffusers else ()) + ("ifengine-eager", "ifengine-traced"),
        checkpoint=None,
    )
    work = argparse.Namespace(
        **vars(args), device="cuda" if gpu else "cpu", dtype=None, peak_size=256 if quick else None
    )
    plan = [("FLOP counts", lambda: _work(work)), ("host overhead", lambda: _host(host))]
    if gpu:
        theirs = ("diffusers-eager", "diffusers-compile") if diffusers else ()
        common = dict(
            preset="full", device="cuda", steps=(10, 5, 5) if quick else DEFAULT_STEPS, size=None, checkpoints=None
        )
        cascade = argparse.Namespace(
            **vars(args),
            **common,
            dtypes=("float16",) if quick else ("float16", "bfloat16"),
            batches=(1,) if quick else (1, 4, 8),
            repeats=2 if quick else 3,
            warmup=1,
            systems=("ifengine-eager", "ifengine-traced", "ifengine-graphs") + theirs,
            artifacts=None,
        )
        memory = argparse.Namespace(
            **vars(args),
            **common,
            dtype="float16",
            batch=1,
            vram=(24.0, 16.0),
            systems=("ifengine-eager", "ifengine-graphs")
            + (("diffusers-eager", "diffusers-offload") if diffusers else ()),
        )
        plan += [("cascade (GPU)", lambda: _cascade(cascade)), ("memory (GPU)", lambda: _memory(memory))]
    return plan
