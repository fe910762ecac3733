"""Replica counts per stage from measured per-stage times (``ifengine bench cascade`` JSON).

In a stage-disaggregated pipeline every request passes every stage once, so the stages' throughputs
must match: stage s with per-image time t_s and r_s replicas serves r_s / t_s images per second, and the
slowest stage sets the whole service's rate. With R replicas to hand out, r_s proportional to t_s
balances them (largest-remainder rounding, at least one replica per stage).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

BENCH_STAGES = {"T5": "text", "I": "stage1", "II": "stage2", "III": "stage3"}


def stage_times(bench: dict, system: str | None = None, batch: int | None = None) -> tuple[dict[str, float], dict]:
    """Seconds per image of each stage from a cascade benchmark's JSON (median of its runs)."""
    runs = bench.get("runs") or []
    if bench.get("benchmark") not in (None, "cascade") or not runs:
        raise ValueError("expected the JSON of `ifengine bench cascade` (a 'runs' list with per-stage 'stats')")
    if batch is not None:
        runs = [r for r in runs if r.get("batch") == batch]
        if not runs:
            raise ValueError(f"the benchmark has no run with batch {batch}")
    run = max(runs, key=lambda r: r.get("batch", 1))  # the largest batch is closest to a loaded server
    systems = run["stats"]
    ours = [n for n in systems if n.startswith("ifengine")] or list(systems)
    system = system or min(ours, key=lambda n: sum(v["median"] for k, v in systems[n].items() if k in BENCH_STAGES))
    if system not in systems:
        raise ValueError(f"no system {system!r} in the benchmark; it has {sorted(systems)}")
    stats, per = systems[system], run.get("batch", 1)
    times = {name: stats[key]["median"] / per for key, name in BENCH_STAGES.items() if key in stats}
    return times, {"system": system, "batch": per, "dtype": run.get("dtype")}


def propose(times: dict[str, float], replicas: int) -> dict:
    """``replicas`` in total over the stages in ``times``, proportional to each stage's time."""
    if replicas < len(times):
        raise ValueError(f"need at least one replica per stage: {len(times)} stages, got {replicas}")
    total = sum(times.values())
    share = {s: replicas * t / total for s, t in times.items()}
    counts = {s: max(1, math.floor(v)) for s, v in share.items()}
    while sum(counts.values()) < replicas:
        s = max(share, key=lambda k: share[k] - counts[k])
        counts[s] += 1
    while sum(counts.values()) > replicas:
        s = max((k for k in counts if counts[k] > 1), key=lambda k: counts[k] - share[k])
        counts[s] -= 1
    rate = {s: counts[s] / t for s, t in times.items()}
    bottleneck = min(rate, key=rate.get)
    return {
        "replicas": counts,
        "seconds_per_image": times,
        "images_per_second": rate[bottleneck],
        "bottleneck": bottleneck,
        "single_replica_images_per_second": 1 / total,
    }


def propose_from_file(path: str | Path, replicas: int, system: str | None = None, batch: int | None = None) -> dict:
    try:
        bench = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read benchmark JSON {path}: {err}") from err
    times, source = stage_times(bench, system, batch)
    return {**propose(times, replicas), "from": {"file": str(path), **source}}
