"""The one GPU check of the runtime, with a hard time budget (``benchmarks/gpu_check.py`` is its command).

Sections, each bounded by the time left (a section that runs out records what it skipped):

1. ``equality``: every step of each stage replayed from its CUDA graph against the eager step from the
   same state, in ulps (0 = bit for bit; see ``ulps.py`` for why not an absolute tolerance);
2. ``sync_debug``: a whole cached-prompt call under ``torch.cuda.set_sync_debug_mode("error")``;
3. ``step_times``: ms per U-Net call on the CFG batch (the step's work), eager vs CUDA graph, for
   IF-I-M, IF-I-XL, IF-II-L and x4 at batch 1 and 4, with MFU against ``flops.py``'s counts and the
   matmul peak measured on the same device;
4. ``budget``: a fresh process capped at the budget (8 GiB) runs one 1024x1024 call: peak reserved vs plan;
5. ``throughput``: images/s with stages overlapped on two streams vs the latency runtime.

Weights are random and built on the device itself (``fullsize.random_cascade(build_on=...)``): seconds,
not the minutes of CPU ``uniform_``. ``--device cpu --preset tiny`` runs the same code as a smoke test
(the CUDA-only sections record why they were skipped).
"""

from __future__ import annotations

import gc
import json
import logging
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .report import markdown_table, write_outputs
from .ulps import max_ulps

log = logging.getLogger(__name__)
PROMPT = "a photograph of a red cat sitting on a wooden table"
PRESETS = {
    "full": {"cascade": ("IF-I-XL", "IF-II-L", "x4"), "unets": ("IF-I-M", "IF-I-XL", "IF-II-L", "x4")},
    "tiny": {"cascade": ("tiny-I", "tiny-II", "tiny-x4"), "unets": ("tiny-I", "tiny-II", "tiny-x4")},
}
# each section's share of the whole budget (the rest is set-up: building weights, the matmul peak)
SHARES = {"equality": 0.12, "sync_debug": 0.08, "throughput": 0.15, "step_times": 0.3, "budget": 0.3}


@dataclass(frozen=True)
class CheckConfig:
    device: str = "cuda"
    preset: str = "full"
    steps: tuple[int, int, int] = (4, 3, 3)  # few steps: graphs, peaks and per-step times do not need more
    batches: tuple[int, ...] = (1, 4)
    repeats: int = 5
    budget: str = "8GiB"
    budget_weights: str = "native"  # "native" exercises weight streaming; "auto" would quantise on the CPU
    prompts: int = 4
    size: int | None = None  # stage I height = width; None: the model's own (64 -> 1024 for the full cascade)
    seconds: float = 420.0  # the whole check; < 8 min on an H200 by construction, not yet measured

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.seconds <= 0 or self.repeats < 1:
            raise ValueError("seconds must be > 0 and repeats >= 1")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.device == "cuda" else torch.float32


class Deadline:
    """The check's clock: each section may use its share of the budget, and never more than is left."""

    def __init__(self, seconds: float):
        self.total, self.start = seconds, time.perf_counter()

    def left(self) -> float:
        return self.total - (time.perf_counter() - self.start)

    def section(self, name: str) -> float:
        return time.perf_counter() + max(0.0, min(self.total * SHARES[name], self.left()))


def _skip(reason: str) -> dict:
    return {"skipped": reason}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(cascade) -> None:
    """Free a cascade's device memory now: close its runtime (breaks the cascade<->runtime cycle), collect."""
    if cascade is not None and cascade.runtime is not None:
        cascade.runtime.close()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_cascade(cfg: CheckConfig):
    from .fullsize import random_cascade

    presets = PRESETS[cfg.preset]["cascade"]
    return random_cascade(presets, dtype=cfg.dtype, device=cfg.device, build_on=cfg.device)


def _call(cascade, cfg: CheckConfig, prompt: str = PROMPT):
    size = dict(height=cfg.size, width=cfg.size)
    return cascade(prompt, seed=0, steps=cfg.steps, output_type="pt", progress=False, **size)


# 1 -----------------------------------------------------------------------------------------------------
def check_equality(cascade, cfg: CheckConfig, until: float) -> dict:
    if cfg.device != "cuda":
        return _skip("CUDA graphs need a CUDA device")
    from ..runtime import configure
    from .stage_run import stage_inputs, run_stage

    req, embeds = stage_inputs(cascade, cfg.steps, size=cfg.size)
    eager, graphs = configure(cascade, cuda_graphs=False), configure(cascade, cuda_graphs=True)
    report, image = {}, None
    try:
        for stage in (1, 2, 3):
            if time.perf_counter() > until:
                report[f"stage{stage}"] = _skip("time budget")
                continue
            states = []
            eager.runner.observe = lambda n, x, states=states: states.append(x.clone())
            out = run_stage(eager, cascade, req, embeds, stage, image, seed=stage)
            run_stage(graphs, cascade, req, embeds, stage, image, seed=stage)
            report[f"stage{stage}"] = _replay_ulps(graphs, stage, states)
            image = out
    finally:
        eager.close()
        graphs.close()
    return report


def _replay_ulps(graphs, stage: int, states: list[torch.Tensor]) -> dict:
    """Replay the captured step from each eager state and count ulps to the eager next state."""
    graph = list(graphs.runner.graphs[stage]._graphs.values())[-1]  # latency mode: stages share one cache
    arena = graphs.runner.arenas[stage]
    x, index = arena.view("x", tuple(states[0].shape), states[0].dtype), arena.view("index", (), torch.long)
    ulps = []
    for k in range(len(states) - 1):
        x.copy_(states[k])
        index.fill_(k + 1)
        graph.replay_no_sync()
        ulps.append(max_ulps(x, states[k + 1]))
    return {"steps": len(states), "max_ulps_per_step": ulps, "bitwise": all(u == 0 for u in ulps)}


# 2 -----------------------------------------------------------------------------------------------------
def check_sync_debug(cascade, cfg: CheckConfig, until: float) -> dict:
    if cfg.device != "cuda":
        return _skip("sync debug mode is a CUDA feature")
    from ..runtime import configure

    runtime = configure(cascade, cuda_graphs=True)
    try:
        _call(cascade, cfg)  # encodes the prompt, captures every graph (capture synchronises by design)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            _call(cascade, cfg)  # the cached prompt: the only sync allowed is the final fetch's event wait
            return {"ok": True}
        except RuntimeError as err:
            return {"ok": False, "error": str(err).splitlines()[0][:500]}
        finally:
            torch.cuda.set_sync_debug_mode("default")
    finally:
        runtime.close()


# 3 -----------------------------------------------------------------------------------------------------
def check_step_times(cfg: CheckConfig, until: float) -> dict:
    from .flops import matmul_peak
    from .unet_timing import time_unet

    device = torch.device(cfg.device)
    peak = matmul_peak(device, cfg.dtype, repeats=cfg.repeats)
    rows = []
    for preset in PRESETS[cfg.preset]["unets"]:
        for batch in cfg.batches:
            if time.perf_counter() > until:
                rows.append({"unet": preset, "batch": batch, "skipped": "time budget"})
                continue
            rows.append(time_unet(preset, batch, device, cfg.dtype, cfg.repeats, peak["flops_per_s"], cfg.size))
            release(None)  # the U-Net (8 GiB for IF-I-XL) and its graph pool go before the next is built
    return {"matmul_peak": peak, "rows": rows}


# 4 -----------------------------------------------------------------------------------------------------
def check_budget(cfg: CheckConfig, until: float, script: Path) -> dict:
    if cfg.device != "cuda":
        return _skip("a memory budget caps the CUDA allocator")
    timeout = max(1, int(until - time.perf_counter()))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "budget.json"
        cmd = [sys.executable, str(script), "--budget-child", str(path), "--config", json.dumps(asdict(cfg))]
        try:
            done = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout} s (the section's share of the budget)"}
        entry = json.loads(path.read_text()) if path.exists() else {"ok": False}
        if done.returncode:
            entry["stderr_tail"] = done.stderr[-2000:]
    return entry


def budget_child(cfg: CheckConfig, out: Path) -> None:
    """In a fresh process: weights built on the GPU, moved to the host, then planned and placed."""
    from ..memory.plan_inputs import cascade_modules
    from ..memory.sizes import parse_size
    from ..memory.workload import Workload
    from ..models.int8 import is_quantized
    from ..runtime import configure
    from .fullsize import move_to

    result = {"budget": cfg.budget, "budget_bytes": parse_size(cfg.budget), "weights": cfg.budget_weights}
    try:
        cascade = build_cascade(cfg)
        move_to(cascade, "cpu")  # planning places every weight from the host
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        workload = Workload(steps=cfg.steps)  # 64 -> 256 -> 1024
        rt = configure(
            cascade, vram_budget=cfg.budget, limit_allocator=True, weights=cfg.budget_weights, workload=workload
        )
        result.update(
            plan_modes=rt.plan.modes(),
            predicted_peak=rt.plan.peak_bytes,
            int8=[n for n, m in cascade_modules(cascade).items() if is_quantized(m)],
            context_reserve=rt.plan.options.context_reserve_bytes,
        )
        started = time.perf_counter()
        image = _call(cascade, cfg).stages[-1]
        result.update(
            ok=True,
            seconds=time.perf_counter() - started,
            image_shape=list(image.shape),
            peak_reserved=torch.cuda.max_memory_reserved(),
            peak_allocated=torch.cuda.max_memory_allocated(),
            device_total=torch.cuda.get_device_properties(0).total_memory,
            device_used_by_process=_device_used(),
        )
        result["within_plan"] = result["peak_reserved"] <= result["predicted_peak"]
    except Exception as err:  # an OOM is a result here, not a crash
        result.update(ok=False, error=f"{type(err).__name__}: {err}"[:2000])
    out.write_text(json.dumps(result, indent=2))


def _device_used() -> int:
    free, total = torch.cuda.mem_get_info()
    return total - free  # this process only in a fresh child: allocator + CUDA context + libraries


# 5 -----------------------------------------------------------------------------------------------------
def check_throughput(cascade, cfg: CheckConfig, until: float) -> dict:
    from ..runtime import configure
    from ..runtime.throughput import run_throughput

    report, size = {}, dict(height=cfg.size, width=cfg.size)
    for mode in ("throughput", "latency"):
        if time.perf_counter() > until:
            report[mode] = _skip("time budget")
            continue
        runtime = configure(cascade, mode=mode)
        try:
            run_throughput(cascade, runtime, [PROMPT], steps=cfg.steps, check_finite=False, **size)  # captures
            res = run_throughput(cascade, runtime, [PROMPT] * cfg.prompts, steps=cfg.steps, check_finite=False, **size)
            report[mode] = {"images": res.images, "seconds": res.seconds, "images_per_second": res.images_per_second}
        finally:
            runtime.close()
    return report


# the whole check ---------------------------------------------------------------------------------------
@contextmanager
def _timed(report: dict, name: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        report.setdefault("section_seconds", {})[name] = round(time.perf_counter() - started, 2)


def run_check(cfg: CheckConfig, script: Path) -> dict:
    from .machine import describe

    deadline = Deadline(cfg.seconds)
    report = {"config": asdict(cfg), "machine": describe(cfg.device)}
    with _timed(report, "build"):
        cascade = build_cascade(cfg)
    for name, run in (("equality", check_equality), ("sync_debug", check_sync_debug), ("throughput", check_throughput)):
        with _timed(report, name):
            report[name] = run(cascade, cfg, deadline.section(name))
    release(cascade)
    cascade = None
    release(None)  # nothing of the cascade may hold device memory while the budget child runs
    with _timed(report, "step_times"):
        report["step_times"] = check_step_times(cfg, deadline.section("step_times"))
    with _timed(report, "budget"):
        report["budget"] = check_budget(cfg, deadline.section("budget"), script)
    report["total_seconds"] = round(time.perf_counter() - deadline.start, 2)
    return report


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    return write_outputs(out_dir, "gpu_check", report, markdown(report))


def markdown(report: dict) -> str:
    cfg = report["config"]
    lines = [
        f"# GPU check ({cfg['preset']} presets on {cfg['device']}, steps {tuple(cfg['steps'])}): "
        f"{report.get('total_seconds')} s of a {cfg['seconds']} s budget\n",
        f"Machine: {report['machine']}\n",
        "## Graph replay vs eager (max ulps per step; 0 = bit for bit)\n",
        json.dumps(report.get("equality"), indent=1),
        "\n## Cached-prompt call under sync debug mode 'error'\n",
        json.dumps(report.get("sync_debug")),
        "\n## U-Net call on the CFG batch: eager vs CUDA graph\n",
        _step_table(report.get("step_times", {})),
        "\n## Budget child\n",
        json.dumps(report.get("budget"), indent=1),
        "\n## Throughput vs latency mode\n",
        json.dumps(report.get("throughput"), indent=1),
        f"\nSection seconds: {report.get('section_seconds')}\n",
    ]
    return "\n".join(lines)


def _step_table(step_times: dict) -> str:
    header = ["U-Net", "batch", "eager ms", "graph ms", "GFLOP/call", "MFU eager", "MFU graph"]
    rows = []
    for r in step_times.get("rows", []):
        if "skipped" in r:
            rows.append([r["unet"], r["batch"], r["skipped"], "", "", "", ""])
            continue
        rows.append(
            [r["unet"], r["batch"], _f(r["eager_ms"]), _f(r.get("graph_ms")), _f(r["flops"] / 1e9)]
            + [_f(r.get("mfu_eager"), 3), _f(r.get("mfu_graph"), 3)]
        )
    return markdown_table(header, rows)


def _f(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
