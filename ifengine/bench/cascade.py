"""Cascade latency, throughput and model FLOP utilisation, per stage, ifengine against diffusers.

For every dtype the systems are loaded once from the same random checkpoints; for every batch size
they run alternately (ABBA) after warm-up, each run timing T5, I, II, III and the whole chain. MFU per
stage is the counted FLOPs of the stage's model calls over the median time and the matmul peak
measured on the same device in the same dtype.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from . import flops as F
from . import timing
from .checkpoints import CascadeSpec, build_checkpoints, cascade_spec
from .machine import describe, require_cuda, summary_line
from .report import command_line, markdown_table, stage_chart, write_outputs
from .systems import STAGES, RunSpec, load_systems
from ..facts import DEFAULT_STEPS
from ..demo.build import cache_root
from ..models.presets import text_preset, unet_preset, vae_preset

log = logging.getLogger(__name__)
INT8_NOTE = (
    "int8 as a dtype row: skipped; int8 U-Net weights are the system ifengine-graphs-int8 (fp16 compute), and "
    "int8 ONNX/TensorRT engines come from `ifengine export`/`build`"
)


@dataclass(frozen=True)
class CascadeBenchConfig:
    preset: str = "full"
    device: str = "cuda"
    dtypes: tuple[str, ...] = ("float16", "bfloat16")
    batches: tuple[int, ...] = (1, 4, 8)
    systems: tuple[str, ...] = (
        "ifengine-eager",
        "ifengine-traced",
        "ifengine-graphs",
        "diffusers-eager",
        "diffusers-compile",
    )
    steps: tuple[int, int, int] = DEFAULT_STEPS
    repeats: int = 3
    warmup: int = 1
    checkpoints: str | None = None  # where the random checkpoints live (built there on first use)
    artifacts: str | None = None  # exported graphs for ifengine-onnxruntime
    engines: str | None = None  # `ifengine build --compiler inductor` output for ifengine-inductor
    size: int | None = None  # stage I size; default: the preset's


def default_checkpoint_root(preset: str) -> Path:

    return cache_root().parent / "bench-checkpoints" / preset


def bench_device(name: str) -> torch.device:
    return require_cuda("this benchmark") if name == "cuda" else torch.device(name)


def run_cascade_bench(config: CascadeBenchConfig, progress: bool = True) -> dict:
    device = bench_device(config.device)
    spec = cascade_spec(config.preset)
    root = Path(config.checkpoints) if config.checkpoints else default_checkpoint_root(spec.name)
    paths = build_checkpoints(spec, root, progress=progress)
    runs, skipped, peaks = [], [], {}
    for dtype_name in config.dtypes:
        if dtype_name == "int8":
            skipped.append(INT8_NOTE)
            continue
        dtype = getattr(torch, dtype_name)
        peaks[dtype_name] = F.matmul_peak(device, dtype)
        systems = load_systems(
            list(config.systems),
            paths,
            device,
            dtype,
            Path(config.artifacts) if config.artifacts else None,
            engines=Path(config.engines) if config.engines else None,
        )
        for batch in config.batches:
            run = RunSpec(batch=batch, size=config.size or spec.size, steps=config.steps)
            runs.append(_measure(systems, run, dtype_name, device, config, progress))
        for system in systems.values():
            system.close()
        del systems
        _release(device)
    work = {
        str(b): stage_flops(spec, RunSpec(batch=b, size=config.size or spec.size, steps=config.steps))
        for b in config.batches
    }
    for entry in runs:
        entry["mfu"] = _mfu(entry, work[str(entry["batch"])], peaks[entry["dtype"]]["flops_per_s"])
    return {
        "benchmark": "cascade",
        "command": command_line(),
        "machine": describe(device),
        "config": dataclasses.asdict(config),
        "checkpoints": {k: str(v) for k, v in paths.items()},
        "units": "seconds",
        "matmul_peak": peaks,
        "flops": work,
        "runs": runs,
        "skipped": skipped,
    }


def _measure(systems, run: RunSpec, dtype_name: str, device, config: CascadeBenchConfig, progress: bool) -> dict:
    clock = timing.Clock(device)

    def timed(system):
        def once() -> timing.Durations:
            system.run(run, clock)
            return clock.collect()

        return once

    samples = timing.alternate(
        {n: timed(s) for n, s in systems.items()},
        config.repeats,
        config.warmup,
        progress,
        desc=f"cascade {dtype_name} batch {run.batch}",
    )
    stats = timing.summarise(samples)
    return {
        "dtype": dtype_name,
        "batch": run.batch,
        "size": run.size,
        "steps": list(run.steps),
        "stats": stats,
        "samples": samples,
        "images_per_s": {n: run.batch / s["total"]["median"] for n, s in stats.items()},
        "per_step": {
            n: {st: s[st]["median"] / k for st, k in zip(STAGES[1:], run.steps, strict=True)} for n, s in stats.items()
        },
    }


def stage_flops(spec: CascadeSpec, run: RunSpec) -> dict[str, int]:
    """Counted FLOPs of one cascade run per stage (CFG doubles every U-Net and text batch)."""

    b2, s = 2 * run.batch, run.size
    u1, u2, u3 = (unet_preset(n) for n in (spec.stage1, spec.stage2, spec.stage3))
    # text: one prompt and the negative, encoded once for the whole batch (num_images_per_prompt)
    return {
        "T5": F.text_flops(text_preset(spec.t5), 2),
        "I": run.steps[0] * F.if_unet_flops(u1, b2, s, s, u1.encoder_hid_dim),
        "II": run.steps[1] * F.if_unet_flops(u2, b2, 4 * s, 4 * s, u2.encoder_hid_dim),
        "III": run.steps[2] * F.x4_unet_flops(u3, b2, 4 * s, 4 * s)
        + F.text_flops(text_preset(spec.clip), 2)
        + F.vae_decode_flops(vae_preset(spec.vae), run.batch, 4 * s, 4 * s),
    }


def _mfu(entry: dict, work: dict[str, int], peak: float) -> dict[str, dict[str, float]]:
    return {n: {st: work[st] / (s[st]["median"] * peak) for st in STAGES} for n, s in entry["stats"].items()}


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def cascade_table(payload: dict) -> str:
    header = (
        ["dtype", "batch", "system"]
        + [f"{s} (ms)" for s in STAGES]
        + ["total (ms)", "spread", "images/s"]
        + [f"MFU {s}" for s in STAGES[1:]]
    )
    rows = []
    for entry in payload["runs"]:
        for name, stats in entry["stats"].items():
            total = stats["total"]
            rows.append(
                [entry["dtype"], entry["batch"], name]
                + [timing.fmt_ms(stats[s]["median"]) for s in STAGES]
                + [
                    timing.fmt_ms(total["median"]),
                    f"±{timing.fmt_ms(total['iqr'] / 2)}",
                    f"{entry['images_per_s'][name]:.3f}",
                ]
                + [f"{entry['mfu'][name][s]:.1%}" for s in STAGES[1:]]
            )
    cfg = payload["config"]
    head = (
        f"Cascade {cfg['preset']} presets, stage I {payload['runs'][0]['size'] if payload['runs'] else '?'}px, "
        f"steps {tuple(cfg['steps'])}, median of {cfg['repeats']} alternated runs after {cfg['warmup']} warm-up; "
        f"{summary_line(payload['machine'])}\n\n"
    )
    notes = "".join(f"\n- {s}" for s in payload["skipped"])
    return head + markdown_table(header, rows) + notes + ("\n" if notes else "")


def write_cascade_results(payload: dict, out_dir: Path, name: str = "cascade") -> dict[str, Path]:
    first = payload["runs"][0] if payload["runs"] else None
    chart = None
    if first is not None:
        times = {n: {s: st[s]["median"] for s in STAGES} for n, st in first["stats"].items()}
        title = (
            f"per-stage time, {first['dtype']}, batch {first['batch']}, steps {tuple(first['steps'])}\n"
            f"{summary_line(payload['machine'])}"
        )
        chart = lambda path: stage_chart(path, times, title)  # noqa: E731
    return write_outputs(out_dir, name, payload, cascade_table(payload), chart)
