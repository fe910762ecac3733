"""The GPU check's Inductor section: one IF-I-M stage I step, eager torch vs its AOTInductor package vs
that package inside a CUDA graph, with ms, MFU and the time the compile took.

Only the smallest stage is compiled (IF-I-M's step at 64x64, batch 1 with CFG): a full-size stage II or
x4 compile does not fit the check's minutes, and the section says so in its ``note``. The step is the
export wrapper the engines compile (``export.step_graphs.IFStepGraph``) around a random full-size U-Net
(``unet_timing.build_unet``), with static shapes except the schedule length, as ``ifengine build
--compiler inductor`` compiles it. On the CPU (a smoke run, preset ``tiny-I``) there is no graph row.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch

from ..export.spec import DimRange
from ..models.presets import unet_preset
from .flops import if_unet_flops, matmul_peak
from .unet_timing import build_unet
from ..export.inputs import random_inputs
from ..export.step_graphs import IFStepGraph
from ..export.step_spec import if_step_spec
from ..schedule import presets as sched
from ..backends.inductor.load import _load
from ..backends.inductor.network import InductorPackage
from ..engines.inductor_build import QUICK, compile_module
from ..engines.io_plan import IOPlan
from ..backends.base import call
from .unet_timing import _seconds
from .unet_timing import _capture as capture

log = logging.getLogger(__name__)
NOTE = "only stage I (the smallest) is compiled: a stage II / x4 compile does not fit the check's time"


def inductor_section(device: str | torch.device = "cuda", quick: bool = False, seconds: float = 480.0, preset=None):
    """Measure the step three ways; ``seconds`` bounds the timing loops (the compile is counted, not cut)."""
    device = torch.device(device)
    preset = preset or ("IF-I-M" if device.type == "cuda" else "tiny-I")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    start = time.perf_counter()
    step, spec, dims, config, feeds, flops = _step(preset, device, dtype)
    row = {"preset": preset, "dtype": str(dtype).removeprefix("torch."), "batch": 1, "note": NOTE, "flops": flops}
    repeats = 3 if quick else 10
    with torch.no_grad():
        row["eager_ms"] = _ms(lambda: step(*feeds.values()), device, repeats)
        with tempfile.TemporaryDirectory(prefix="ifengine-inductor-") as folder:
            network, times = _compile(step, spec, dims, config, device, Path(folder), quick)
            row |= {k: round(v, 2) for k, v in times.items()}
            row["inductor_ms"] = _ms(lambda: _call(network, feeds), device, repeats)
            if device.type == "cuda":
                graph = _capture(lambda: _call(network, feeds))
                row["inductor_graph_ms"] = _ms(graph.replay, device, repeats)
            row["max_abs_vs_eager"] = (_call(network, feeds) - step(*feeds.values())).abs().max().item()
    peak = matmul_peak(device, dtype)["flops_per_s"]
    for kind in ("eager", "inductor", "inductor_graph"):
        ms = row.get(f"{kind}_ms")
        row[f"mfu_{kind}"] = None if ms is None else flops / (ms / 1e3) / peak
    row["section_s"] = round(time.perf_counter() - start, 1)
    row["within_time"] = row["section_s"] <= seconds
    return row


def _step(preset: str, device, dtype):

    config = unet_preset(preset)
    side, m = config.sample_size, config.downsample_factor
    scheduler = sched.IF_STAGE1_DDPM
    spec = if_step_spec(config, 1, scheduler, DimRange(side, side, side, m)).with_dtype(
        str(dtype).removeprefix("torch.")
    )
    steps = 100
    dims = {
        **{k: DimRange(v.opt, v.opt, v.opt, v.multiple) for k, v in spec.ranges.items()},
        "batch": DimRange(1, 1, 1),
    }
    dims["cfg_batch"], dims["tokens"] = DimRange(2, 2, 2, 2), DimRange(77, 77, 77)
    dims["steps"] = DimRange(2, steps, 1000)
    config_json = {"scheduler": _as_json(scheduler)}
    point = {"batch": 1, "height": side, "width": side, "tokens": 77, "steps": steps}
    feeds = {
        k: v.to(device) for k, v in random_inputs(spec, point, config_json, torch.Generator().manual_seed(0)).items()
    }
    step = IFStepGraph(build_unet(preset, device, dtype), scheduler, 1).eval()
    text = config.encoder_hid_dim or config.cross_attention_dim[0]
    return step, spec, dims, config_json, feeds, if_unet_flops(config, 2, side, side, text)


def _as_json(config) -> dict:
    import dataclasses
    import json

    return json.loads(json.dumps(dataclasses.asdict(config)))


def _compile(step, spec, dims, config, device, folder: Path, quick: bool):

    path = folder / "step1.pt2"
    times = compile_module(step, spec, dims, config, path, str(device), QUICK if quick else None)
    start = time.perf_counter()
    model = _load(path, device)
    times["load_s"] = time.perf_counter() - start
    plan = IOPlan(spec.name, spec, dims, {t.name: t.dtype for t in spec.inputs + spec.outputs})
    return InductorPackage(plan, model, device), times


def _call(network, feeds):

    (out,) = call(network, feeds).values()
    return out


def _ms(fn, device, repeats: int) -> float:

    return 1e3 * _seconds(fn, device, repeats)


def _capture(fn):

    return capture(fn)


def run(cfg, save) -> dict:
    """The GPU check's section (``bench.gpu_check.registry``): the step on ``cfg.device`` within the
    section's share of ``cfg.seconds``; the tiny preset on the CPU smoke run."""
    from .gpu_check.registry import DEFAULT_SECONDS, section  # imported here: the registry imports this module

    share = section("inductor").budget_s * cfg.seconds / DEFAULT_SECONDS
    row = inductor_section(cfg.device, quick=True, seconds=share, preset="IF-I-M" if cfg.device == "cuda" else None)
    save(row)
    return row
