"""Host overhead per denoising step: stage I of a tiny model where the arithmetic is negligible.

At 8x8 with a U-Net a few channels wide, on one CPU thread, a step's time is what the host spends
around the arithmetic (Python, module calls, dispatch, scheduler bookkeeping): what every step costs
before a GPU does any work. ifengine and diffusers load the same checkpoint (the built-in tiny demo
stage I by default) and run stage I through their public calls; the per-step time is the difference
between a long and a short run divided by the step difference, so prompt encoding, noise and setup
cancel. The U-Net call alone is timed too, to split a step into "in the U-Net" and "around it".
"""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import torch

from . import timing
from .machine import describe, summary_line
from .report import command_line, markdown_table, stage_chart, write_outputs
from ..facts import TEXT_TOKENS
from ..pipeline.cascade import Cascade
from ..demo.build import demo_checkpoints

log = logging.getLogger(__name__)
PROMPT = "a red cat on a blue sofa"
TARGET_RATIO = 0.5  # ifengine's per-step time must be at most half of diffusers'


@dataclass(frozen=True)
class HostConfig:
    size: int = 8
    threads: int = 1
    short_steps: int = 5
    long_steps: int = 45
    repeats: int = 9
    warmup: int = 1
    unet_calls: int = 50
    guidance: float = 7.0
    systems: tuple[str, ...] = ("diffusers", "ifengine-eager", "ifengine-traced")
    checkpoint: str | None = None  # a stage I folder in the Hub layout; default: the tiny demo stage I


@contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_host_overhead(config: HostConfig, progress: bool = True) -> dict:
    """Measure every system in one process, alternated; returns the JSON payload."""
    checkpoint = Path(config.checkpoint) if config.checkpoint else _demo_stage1()
    with torch_threads(config.threads), torch.no_grad():
        loaded = {name: _load(name, checkpoint, config) for name in config.systems}
        runs = {name: _two_lengths(sys_.run, config) for name, sys_ in loaded.items()}
        steps = timing.alternate(runs, config.repeats, config.warmup, progress, desc="host overhead: steps")
        calls = timing.alternate(
            {n: s.unet_call for n, s in loaded.items() if s.unet_call},
            config.repeats,
            config.warmup,
            progress,
            desc="host overhead: U-Net",
        )
        machine = describe("cpu")
    return _payload(config, checkpoint, steps, calls, machine)


@dataclass(frozen=True)
class _System:
    run: Callable[[int], None]
    unet_call: Callable[[], timing.Durations] | None


def _two_lengths(run: Callable[[int], None], config: HostConfig) -> Callable[[], timing.Durations]:
    """Wall time and this thread's CPU time of a short and a long run.

    The CPU time counts only while the thread runs, so on a machine shared with other work it still
    measures what a step costs the host (one torch thread: the ops run on this thread).
    """

    def both() -> timing.Durations:
        out = {}
        for name, steps in (("short", config.short_steps), ("long", config.long_steps)):
            wall, cpu = time.perf_counter(), time.thread_time()
            run(steps)
            out[name], out[f"{name}_cpu"] = time.perf_counter() - wall, time.thread_time() - cpu
        return out

    return both


def _load(name: str, checkpoint: Path, config: HostConfig) -> _System:
    if name == "diffusers":
        return _diffusers_system(checkpoint, config)
    if name.startswith("ifengine-"):
        return _ifengine_system(checkpoint, config, executor=name[len("ifengine-") :])
    raise ValueError(f"unknown system {name!r}; use diffusers or ifengine-<executor> (eager, traced, auto)")


def _ifengine_system(checkpoint: Path, config: HostConfig, executor: str) -> _System:

    pipe = Cascade.from_pretrained(checkpoint, safety=False)
    pipe.set_executor(executor)

    def run(steps: int) -> None:
        pipe(
            PROMPT,
            height=config.size,
            width=config.size,
            steps=steps,
            guidance=config.guidance,
            last_stage=1,
            output_type="pt",
            clean_caption=False,
            progress=False,
            seed=0,
        )

    unet = pipe.stage1.unet
    inputs = _unet_inputs(unet.config.in_channels, pipe.text.encode([PROMPT])[0].shape[-1], config)
    call = _unet_timer(lambda: unet(inputs[0], inputs[1], inputs[2]), config.unet_calls)
    return _System(run=run, unet_call=call if executor == "eager" else None)


def _diffusers_system(checkpoint: Path, config: HostConfig) -> _System:
    from diffusers import IFPipeline  # the reference being measured against, never an engine dependency

    pipe = IFPipeline.from_pretrained(
        checkpoint,
        torch_dtype=torch.float32,
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)

    def run(steps: int) -> None:
        pipe(
            PROMPT,
            height=config.size,
            width=config.size,
            num_inference_steps=steps,
            guidance_scale=config.guidance,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
            clean_caption=False,
        )

    x, t, states = _unet_inputs(pipe.unet.config.in_channels, pipe.text_encoder.config.d_model, config)
    call = _unet_timer(lambda: pipe.unet(x, t, encoder_hidden_states=states, return_dict=False), config.unet_calls)
    return _System(run=run, unet_call=call)


def _unet_inputs(channels: int, text_dim: int, config: HostConfig):
    batch = 2 if config.guidance > 1 else 1  # the CFG batch a step feeds the U-Net
    gen = torch.Generator().manual_seed(0)
    return (
        torch.randn(batch, channels, config.size, config.size, generator=gen),
        torch.tensor(500),
        torch.randn(batch, TEXT_TOKENS, text_dim, generator=gen),
    )


def _unet_timer(call: Callable[[], object], n: int) -> Callable[[], timing.Durations]:
    def timed() -> timing.Durations:
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in range(n):
            call()
        return {"call": (time.perf_counter() - wall) / n, "call_cpu": (time.thread_time() - cpu) / n}

    return timed


def _demo_stage1() -> Path:

    return demo_checkpoints()["stage1"]


def _payload(config: HostConfig, checkpoint: Path, steps, calls, machine: dict) -> dict:
    delta = config.long_steps - config.short_steps
    out = {
        "benchmark": "host_overhead",
        "command": command_line(),
        "machine": machine,
        "config": dataclasses.asdict(config),
        "checkpoint": str(checkpoint),
        "units": "seconds",
    }
    for clock, suffix in (("wall", ""), ("cpu", "_cpu")):
        per_step = {n: timing.per_step(r["long" + suffix], r["short" + suffix], delta) for n, r in steps.items()}
        stats = {n: timing.Stats.of(v).to_dict() for n, v in per_step.items()}
        out[clock] = {
            "per_step": stats,
            "per_step_samples": per_step,
            "ratio_to_diffusers": _ratios(stats),
            "unet_call": {n: timing.Stats.of(r["call" + suffix]).to_dict() for n, r in calls.items()},
        }
    out["target"] = {clock: _target(out[clock]["ratio_to_diffusers"]) for clock in ("wall", "cpu")}
    out["samples"] = {"runs": steps, "unet_calls": calls}
    return out


def _ratios(stats: dict) -> dict[str, float]:
    if "diffusers" not in stats:
        return {}
    base = stats["diffusers"]["median"]
    return {n: s["median"] / base for n, s in stats.items() if n != "diffusers"}


def _target(ratios: dict[str, float]) -> dict:
    best = min(ratios, key=ratios.get) if ratios else None
    return {
        "max_ratio": TARGET_RATIO,
        "system": best,
        "ratio": ratios.get(best),
        "met": best is not None and ratios[best] <= TARGET_RATIO,
    }


def host_table(payload: dict) -> str:
    wall, cpu = payload["wall"], payload["cpu"]
    rows = []
    for name, stats in wall["per_step"].items():
        c = cpu["per_step"][name]
        call = cpu["unet_call"].get(name, {}).get("median")
        rows.append(
            [
                name,
                timing.fmt_ms(stats["median"]),
                timing.fmt_ms(stats["iqr"]),
                timing.fmt_ms(c["median"]),
                timing.fmt_ms(c["iqr"]),
                timing.fmt_ms(call),
                timing.fmt_ms(None if call is None else c["median"] - call),
                _ratio(wall, name),
                _ratio(cpu, name),
            ]
        )
    cfg = payload["config"]
    head = (
        f"Stage I per-step host time, {cfg['size']}x{cfg['size']}, CFG batch 2, {cfg['threads']} torch "
        f"thread(s); median of {cfg['repeats']} alternated repetitions of ({cfg['long_steps']} - "
        f"{cfg['short_steps']}) steps; wall clock and this thread's CPU time; "
        f"{summary_line(payload['machine'])}\n\n"
    )
    return head + markdown_table(
        [
            "system",
            "wall / step (ms)",
            "wall IQR",
            "CPU / step (ms)",
            "CPU IQR",
            "U-Net call, CPU (ms)",
            "around U-Net, CPU (ms)",
            "vs diffusers (wall)",
            "vs diffusers (CPU)",
        ],
        rows,
    )


def _ratio(clock: dict, name: str) -> str:
    if name == "diffusers":
        return "1.00"
    value = clock["ratio_to_diffusers"].get(name)
    return "n/a" if value is None else f"{value:.2f}"


def write_host_results(payload: dict, out_dir: Path, name: str = "host_overhead") -> dict[str, Path]:
    cpu = payload["cpu"]
    values = {
        n: {"per step": s["median"], **({"U-Net call": cpu["unet_call"][n]["median"]} if n in cpu["unet_call"] else {})}
        for n, s in cpu["per_step"].items()
    }
    title = f"stage I host CPU time per step ({payload['config']['size']}px)\n{summary_line(payload['machine'])}"
    return write_outputs(
        out_dir, name, payload, host_table(payload), chart=lambda path: stage_chart(path, values, title, ylabel="ms")
    )
