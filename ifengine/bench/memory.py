"""Peak device memory per stage and end to end, unconstrained and under each --vram budget.

Each system is loaded alone (its weights are part of what a budget must hold), run once, and unloaded.
A budget caps the process with ``torch.cuda.set_per_process_memory_fraction``: allocations beyond it
fail as they would on a smaller GPU, so a run either fits (its peaks are recorded) or is reported OOM.
Systems that plan for a budget get it too (ifengine-graphs: ``runtime.configure(vram_budget=...)``
places, offloads and streams weights to fit); the others simply run or fail under the cap.
Peaks are ``torch.cuda.max_memory_reserved`` (what the caching allocator holds from the device: tensors,
CUDA-graph pools, cached free blocks), reset at every stage boundary. ``max_memory_allocated`` would omit
graph-pool memory, and a budget is a limit on what is reserved. "resident" is the reserved bytes once
the weights are loaded, before the run. The CUDA context is on top of both (see PlanOptions).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..memory.sizes import GiB as GIB
from . import timing
from .cascade import bench_device, default_checkpoint_root
from .checkpoints import build_checkpoints, cascade_spec
from .machine import describe, summary_line
from .report import command_line, markdown_table, stage_chart, write_outputs
from .systems import STAGES, RunSpec, load_systems
from ..facts import DEFAULT_STEPS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemoryBenchConfig:
    preset: str = "full"
    device: str = "cuda"
    dtype: str = "float16"
    batch: int = 1
    systems: tuple[str, ...] = (
        "ifengine-eager",
        "ifengine-graphs",
        "ifengine-graphs-native",
        "diffusers-eager",
        "diffusers-offload",
    )
    vram: tuple[float, ...] = (24.0, 16.0, 12.0, 8.0)  # GiB budgets, after the unconstrained run
    steps: tuple[int, int, int] = DEFAULT_STEPS
    checkpoints: str | None = None
    size: int | None = None


class Probe:
    """Times regions and records each region's peak reserved bytes (nested regions fold upward)."""

    def __init__(self, device: torch.device):
        self.device, self.clock = device, timing.Clock(device)
        self.peaks: dict[str, int] = {}
        self._open: list[str] = []

    @contextmanager
    def region(self, name: str) -> Iterator[None]:
        with self.clock.region(name):
            self._fold()
            self._reset()
            self._open.append(name)
            if self.device.type == "cuda":  # the CPU has no allocator statistics: peaks stay unknown
                self.peaks[name] = 0
            try:
                yield
            finally:
                self._fold()
                self._open.pop()
                self._reset()

    def _fold(self) -> None:
        if self.device.type != "cuda":
            return
        peak = torch.cuda.max_memory_reserved(self.device)
        for name in self._open:
            self.peaks[name] = max(self.peaks[name], peak)

    def _reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)


def run_memory_bench(config: MemoryBenchConfig, progress: bool = True) -> dict:
    device = bench_device(config.device)
    if config.vram and device.type != "cuda":
        raise ValueError("--vram budgets cap CUDA memory; on the CPU run without them (--vram none)")
    spec = cascade_spec(config.preset)
    root = Path(config.checkpoints) if config.checkpoints else default_checkpoint_root(spec.name)
    paths = build_checkpoints(spec, root, progress=progress)
    run = RunSpec(batch=config.batch, size=config.size or spec.size, steps=config.steps)
    budgets: list[float | None] = [None, *config.vram]
    results = []
    from tqdm.auto import tqdm

    with tqdm(total=len(budgets) * len(config.systems), desc="memory", disable=not progress, leave=False) as bar:
        for budget in budgets:
            for name in config.systems:
                results.append(_one(name, budget, paths, device, getattr(torch, config.dtype), run))
                bar.update()
    return {
        "benchmark": "memory",
        "command": command_line(),
        "machine": describe(device),
        "config": dataclasses.asdict(config),
        "units": "bytes and seconds",
        "results": results,
    }


def _one(name: str, budget: float | None, paths, device: torch.device, dtype: torch.dtype, run: RunSpec) -> dict:
    entry = {"system": name, "vram_gib": budget, "status": "ok", "resident": None, "peaks": {}, "seconds": {}}
    with ExitStack() as stack:
        if budget is not None:
            stack.enter_context(_budget(device, budget))
        systems = {}
        try:
            systems = load_systems(
                [name], paths, device, dtype, vram_budget=None if budget is None else int(budget * GIB)
            )
            entry["resident"] = torch.cuda.memory_reserved(device) if device.type == "cuda" else None
            probe = Probe(device)
            systems[name].run(run, probe)
            entry["seconds"], entry["peaks"] = probe.clock.collect(), dict(probe.peaks)
        except torch.OutOfMemoryError as err:
            entry["status"], entry["error"] = "OOM", str(err).splitlines()[0]
        finally:
            for system in systems.values():
                system.close()
            systems = None
            _release(device)
    return entry


@contextmanager
def _budget(device: torch.device, gib: float) -> Iterator[None]:
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * GIB / total), device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        time.sleep(0.1)  # let the driver return freed pages before the next system loads


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / GIB:.2f}"


def memory_table(payload: dict) -> str:
    header = (
        ["budget (GiB)", "system", "status", "resident (GiB)"]
        + [f"peak {s} (GiB)" for s in STAGES]
        + ["peak total (GiB)", "total (s)"]
    )
    rows = []
    for e in payload["results"]:
        budget = "none" if e["vram_gib"] is None else f"{e['vram_gib']:g}"
        total = e["seconds"].get("total")
        rows.append(
            [budget, e["system"], e["status"], _gib(e["resident"])]
            + [_gib(e["peaks"].get(s)) for s in STAGES]
            + [_gib(e["peaks"].get("total")), "n/a" if total is None else f"{total:.2f}"]
        )
    cfg = payload["config"]
    head = (
        f"Peak device memory (torch.cuda.max_memory_reserved), {cfg['preset']} presets, {cfg['dtype']}, "
        f"batch {cfg['batch']}, steps {tuple(cfg['steps'])}; {summary_line(payload['machine'])}\n\n"
    )
    return head + markdown_table(header, rows)


def write_memory_results(payload: dict, out_dir: Path, name: str = "memory") -> dict[str, Path]:
    free = [e for e in payload["results"] if e["vram_gib"] is None and e["status"] == "ok"]
    chart = None
    if free and any(e["peaks"].get("total") for e in free):
        data = {e["system"]: {s: e["peaks"].get(s, 0) for s in STAGES} for e in free}
        title = f"peak reserved memory per stage\n{summary_line(payload['machine'])}"
        chart = lambda path: stage_chart(path, data, title, ylabel="GiB", scale=1 / GIB)  # noqa: E731
    return write_outputs(out_dir, name, payload, memory_table(payload), chart)
