#!/usr/bin/env python
"""Load on `ifengine serve` (loopback only, bounded): requests/s and latency at several concurrencies.

Starts a local Ray Serve with the demo cascade on 127.0.0.1, per --layouts (split: one deployment per
stage; single: the whole cascade in one), sends --requests requests at each --concurrency, and records
images/s, p50/p95/p99 latency and the batch sizes each stage actually ran (from each response's settings).
Then the same prompts go through in-process `Cascade.generate_many` (batch size = the concurrency, capped
by --max-batch) with Ray shut down; the table gives server / in-process per concurrency.

On a CPU the whole run (this process, and so Ray and every replica it starts, which inherit it) is pinned
to --cores CPUs (checked over the whole process tree once the server is up), and the in-process run uses
that many torch threads: the stage processes get no more cores than the in-process run, so the ratio is
serving overhead. The default is one core: with more, the server's stage processes overlap consecutive
requests' stages on different cores, which one in-process call cannot, and the ratio would measure that
pipelining instead. The in-process figure is taken before and after the servers (the table gives their
mean, the JSON both) so that a change of machine load shows. Writes <out>/serve_load.json and .md.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _whole_numbers(text: str) -> list[int]:
    """'1,4,16' -> [1, 4, 16], every value >= 1 (an argparse type: one clear line otherwise)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"every value must be >= 1, got {text!r}")
    return values


def _whole_number(text: str) -> int:
    values = _whole_numbers(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one whole number >= 1, got {text!r}")
    return values[0]


def parse_args(argv=None):
    from ifengine.serve.config import LAYOUTS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--concurrency", type=_whole_numbers, default="1,4,16", help="comma-separated client concurrencies")
    p.add_argument("--requests", type=_whole_number, default=16, help="requests per concurrency level")
    p.add_argument("--steps", type=_whole_numbers, default="8,4,4", help="steps per stage of every request")
    p.add_argument("--max-batch", type=_whole_number, default=8, help="max_batch_size of every stage deployment")
    p.add_argument("--batch-wait-ms", type=float, default=50.0)
    p.add_argument(
        "--cores", type=_whole_number, default=1, help="CPUs the run (server and in-process alike) is pinned to"
    )
    p.add_argument("--layouts", default="split,single", help="comma-separated serving layouts: split, single")
    p.add_argument("--max-seconds", type=float, default=900.0, help="per layout: stop sending after this long")
    args = p.parse_args(argv)
    unknown = set(args.layouts.split(",")) - set(LAYOUTS)
    if unknown:
        p.error(f"--layouts: unknown {', '.join(sorted(unknown))}; accepted: {', '.join(LAYOUTS)}")
    if args.cores > len(os.sched_getaffinity(0)):
        p.error(f"--cores {args.cores}: this process may use only {len(os.sched_getaffinity(0))} CPUs")
    if args.batch_wait_ms < 0 or args.max_seconds <= 0:
        p.error("--batch-wait-ms must be >= 0 and --max-seconds > 0")
    return args


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def pin_cores(count: int) -> list[int]:
    """Pin this process (and every process it starts from now on) to its first ``count`` allowed CPUs."""
    cores = sorted(os.sched_getaffinity(0))[:count]
    os.sched_setaffinity(0, cores)
    return cores


def start_server(args, layout: str):
    import ray
    from ray import serve

    from ifengine.serve import ServeConfig, StageConfig, build_app

    stage = StageConfig(
        max_batch_size=args.max_batch,
        batch_wait_timeout_s=args.batch_wait_ms / 1000,
        max_ongoing_requests=2 * args.max_batch,
        max_queued_requests=64,
        torch_threads=1,
    )
    config = ServeConfig(layout=layout, text=stage, stage1=stage, stage2=stage, stage3=stage, single=stage)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Ray's logical CPUs only place the replicas (each reserves a fraction); the affinity mask bounds them
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=128 * 2**20, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name="ifengine", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def _tree(read):
    """``(process, read(process))`` for every live process of this run's tree (Ray's raylet, workers and
    replicas included); those that exit meanwhile are skipped."""
    import psutil

    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            yield proc, read(proc)
        except psutil.Error:
            continue


def tree_affinity() -> dict:
    """The CPUs each process of this run's tree may use."""
    return {proc.pid: sorted(cpus) for proc, cpus in _tree(lambda p: p.cpu_affinity())}


# where a server's CPU time goes, by the process title Ray gives each actor and service
CPU_GROUPS = (
    ("stage replicas", ("ServeReplica:ifengine:text", "ServeReplica:ifengine:stage", "ServeReplica:ifengine:cascade")),
    ("ingress", ("ServeReplica:ifengine:ingress",)),
    ("proxy", ("ProxyActor",)),
    ("controller", ("ServeController",)),
    ("client", ("serve_load.py",)),
)


def cpu_by_group() -> dict[str, float]:
    """CPU seconds so far of every process of this run's tree, summed per ``CPU_GROUPS`` (the rest: Ray's
    own services and idle workers)."""
    out = dict.fromkeys([g for g, _ in CPU_GROUPS] + ["ray services"], 0.0)
    for _, (title, times) in _tree(lambda p: (" ".join(p.cmdline()), p.cpu_times())):
        group = next((g for g, keys in CPU_GROUPS if any(k in title for k in keys)), "ray services")
        out[group] += times.user + times.system
    return out


def stop_server():
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def load_level(url: str, concurrency: int, n: int, steps: list[int], deadline: float) -> dict:
    import httpx

    def one(i: int):
        if time.monotonic() > deadline:
            return None
        body = {"prompt": f"prompt {i % 5}", "seed": 1000 + i, "steps": steps}
        t0 = time.perf_counter()
        r = client.post("/v1/images/generations", json=body)
        return (
            r.status_code,
            time.perf_counter() - t0,
            r.json()["data"][0]["settings"]["batched"] if r.is_success else {},
        )

    with httpx.Client(base_url=url, timeout=300.0) as client:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = [r for r in pool.map(one, range(n)) if r is not None]
        wall = time.perf_counter() - t0
    ok = [r for r in results if r[0] == 200]
    lat = [r[1] for r in ok]
    batches = {}
    for _, _, batched in ok:
        for stage, size in batched.items():
            batches.setdefault(stage, Counter())[size] += 1
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "ok": len(ok),
        "status": dict(Counter(r[0] for r in results)),
        "seconds": wall,
        "requests_per_s": len(ok) / wall if wall > 0 else 0.0,
        "latency_s": {
            "p50": percentile(lat, 0.5) if lat else None,
            "p95": percentile(lat, 0.95) if lat else None,
            "p99": percentile(lat, 0.99) if lat else None,
            "mean": statistics.fmean(lat) if lat else None,
        },
        "batch_sizes": {k: dict(sorted(v.items())) for k, v in batches.items()},
    }


def measured_level(url: str, concurrency: int, n: int, steps: list[int], deadline: float) -> dict:
    """``load_level`` plus the CPU seconds each process group spent meanwhile."""
    before = cpu_by_group()
    run = load_level(url, concurrency, n, steps, deadline)
    after = cpu_by_group()
    return {**run, "cpu_s": {g: round(after[g] - before[g], 3) for g in after}}


def in_process(levels: list[int], n: int, steps: list[int], max_batch: int, threads: int) -> list[dict]:
    import torch

    from ifengine.pipeline.cascade import open_cascade

    torch.set_num_threads(threads)  # as many cores as the server's processes share
    pipe = open_cascade(device="cpu")
    prompts = [f"prompt {i % 5}" for i in range(n)]
    pipe.generate_many(prompts[:1], batch_size=1, seed=0, steps=steps)  # warm-up
    out = []
    for c in levels:
        batch = min(c, max_batch)
        t0 = time.perf_counter()
        pipe.generate_many(prompts, batch_size=batch, seed=1000, steps=steps)
        wall = time.perf_counter() - t0
        out.append(
            {"concurrency": c, "batch_size": batch, "seconds": wall, "images_per_s": n / wall, "threads": threads}
        )
    return out


def mean_runs(before: list[dict], after: list[dict]) -> list[dict]:
    """Per concurrency: the mean of the runs before and after the servers, both kept."""
    out = []
    for a, b in zip(before, after, strict=True):
        rates = [a["images_per_s"], b["images_per_s"]]
        seconds = statistics.fmean([a["seconds"], b["seconds"]])
        mean = {"seconds": seconds, "images_per_s": statistics.fmean(rates), "images_per_s_before_after": rates}
        out.append({**a, **mean})
    return out


def table(payload: dict) -> str:
    from ifengine.bench.machine import summary_line
    from ifengine.bench.report import markdown_table

    direct = {r["concurrency"]: r for r in payload["in_process"]}
    rows = []
    for layout, runs in payload["serve"].items():
        for r in runs:
            lat, d = r["latency_s"], direct.get(r["concurrency"])
            sizes = "; ".join(f"{k} {v}" for k, v in r["batch_sizes"].items())
            ms = lambda v: "n/a" if v is None else f"{v * 1000:.0f}"  # noqa: E731
            ratio = f"{100 * r['requests_per_s'] / d['images_per_s']:.0f}%" if d and d["images_per_s"] else "n/a"
            rows.append(
                [
                    layout,
                    r["concurrency"],
                    f"{r['ok']}/{r['requests']}",
                    f"{r['requests_per_s']:.3f}",
                    _direct(d),
                    ratio,
                    ms(lat["p50"]),
                    ms(lat["p95"]),
                    sizes,
                ]
            )
    header = [
        "layout",
        "concurrency",
        "ok",
        "server img/s",
        "in-process generate_many img/s",
        "server / in-process",
        "p50 ms",
        "p95 ms",
        "images per stage call (size: requests)",
    ]
    cfg = payload["config"]
    head = (
        f"`ifengine serve` on the demo cascade, steps {cfg['steps']}, {cfg['requests']} requests per level, "
        f"max batch {cfg['max_batch']}, loopback, server and in-process both pinned to CPUs {payload['cores']} "
        f"(processes of the server checked pinned: {payload['processes_pinned']}); "
        f"load average before {payload['load_before']}, after {payload['load_after']}; "
        f"{summary_line(payload['machine'])}\n\n"
    )
    return head + markdown_table(header, rows) + "\n\n" + cpu_table(payload, direct)


def cpu_table(payload: dict, direct: dict) -> str:
    """Where the server's CPU seconds went per level, next to the in-process run's wall time."""
    from ifengine.bench.report import markdown_table

    groups = [g for g, _ in CPU_GROUPS] + ["ray services"]
    rows = []
    for layout, runs in payload["serve"].items():
        for r in runs:
            cpu, d = r.get("cpu_s", {}), direct.get(r["concurrency"])
            rows.append(
                [layout, r["concurrency"], f"{r['seconds']:.2f}", *(f"{cpu.get(g, 0):.2f}" for g in groups)]
                + [f"{d['seconds']:.2f}" if d else "n/a"]
            )
    header = ["layout", "concurrency", "server wall s", *(f"{g} CPU s" for g in groups), "in-process wall s (mean)"]
    return "CPU seconds per process group while each level ran:\n\n" + markdown_table(header, rows)


def _direct(d: dict | None) -> str:
    if not d:
        return "n/a"
    a, b = d["images_per_s_before_after"]
    return f"{d['images_per_s']:.3f} (batch {d['batch_size']}; {a:.3f} before, {b:.3f} after)"


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from ifengine.bench.machine import describe
    from ifengine.bench.report import command_line, write_outputs

    levels, steps = args.concurrency, args.steps
    cores = pin_cores(args.cores)
    load_before = [round(v, 2) for v in os.getloadavg()]
    serve_runs, pinned = {}, {}
    before = in_process(levels, args.requests, steps, args.max_batch, len(cores))
    for layout in args.layouts.split(","):
        url = start_server(args, layout)
        deadline = time.monotonic() + args.max_seconds  # per layout: one slow start must not starve the next
        try:
            load_level(url, 2, 2, steps, deadline)  # warm-up: first calls trace and allocate
            affinity = tree_affinity()
            if any(set(cpus) - set(cores) for cpus in affinity.values()):
                raise RuntimeError(f"a server process may run outside CPUs {cores}: {affinity}")
            pinned[layout] = len(affinity)
            serve_runs[layout] = [measured_level(url, c, args.requests, steps, deadline) for c in levels]
        finally:
            stop_server()
    payload = {
        "benchmark": "serve_load",
        "command": command_line(),
        "machine": describe("cpu"),
        "cores": cores,
        "config": {**vars(args), "out": str(args.out), "steps": steps, "concurrency": levels},
        "serve": serve_runs,
        "processes_pinned": pinned,
        "in_process": mean_runs(before, in_process(levels, args.requests, steps, args.max_batch, len(cores))),
    }
    payload["load_before"], payload["load_after"] = load_before, [round(v, 2) for v in os.getloadavg()]
    paths = write_outputs(args.out, "serve_load", payload, table(payload))
    sys.stdout.write(Path(paths["md"]).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
