#!/usr/bin/env python
"""ms per guided IF step on this CPU, four ways: eager torch, the traced step, ONNX Runtime, Inductor.

    PYTHONPATH=. python benchmarks/inductor_cpu.py [--cases demo,IF-I-M,IF-II-M] [--out benchmarks/results]
        [--repeats 7 --warmup 2] [--append]

``--append`` keeps the cases already in ``<out>/inductor_cpu.json`` (a case run again replaces its row), so
a slow case can run on its own later; each row records its own repeat and warm-up counts and machine load.

Each case is one stage I/II step with classifier-free guidance at batch 1 (the U-Net on the CFG batch of
2, guidance, the DDPM update with thresholding): ``demo`` is the tiny demo stage I at 16x16; ``IF-I-M``
random full-size weights at 64x64; ``IF-II-M`` random full-size weights at 256x256 (with its upscaled
image and noise level). The four systems run the same step:

- eager: ``stage.steps.if_step`` on the torch U-Net (what `ifengine generate` runs by default);
- traced: the same step through the traced executor (frozen TorchScript, invariant prologue hoisted);
- onnxruntime: the exported step graph (``export.step_graphs.IFStepGraph``) on ORT's CPU provider;
- inductor: that step graph compiled by ``torch.export`` + AOTInductor, called through the backend seam
  (``InductorPackage``: static buffers), static shapes except the schedule length.

Build time (export + compile) and load time are recorded for ORT and Inductor. At the demo size a second
Inductor package with a dynamic batch (``torch.export.Dim``, batch 1..2) is timed at batch 1 against the
static one. Results go to ``<out>/inductor_cpu.json`` and ``.md`` after every case, so a case that runs
out of time leaves the earlier ones written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ifengine.bench.machine import describe, summary_line

RESULTS = Path(__file__).resolve().parent / "results"
REPEATS, WARMUP = 7, 2


def step_case(name: str):
    """(torch U-Net, stage, scheduler, side) for a case."""
    from ifengine.schedule import presets as sched

    if name == "demo":
        from ifengine.demo import demo_checkpoints
        from ifengine.models.checkpoint import resolve
        from ifengine.models.if_unet import IFUNet
        from ifengine.stage.components import load_unet

        ckpt = resolve(demo_checkpoints()["stage1"], 1, None)
        unet = load_unet(ckpt, IFUNet, torch.float32, "cpu", None)
        return unet, 1, sched.IF_STAGE1_DDPM, unet.config.sample_size
    from ifengine.bench.unet_timing import build_unet

    stage = 2 if name.startswith("IF-II") else 1
    scheduler = sched.IF_STAGE2_DDPM if stage == 2 else sched.IF_STAGE1_DDPM
    return build_unet(name, "cpu", torch.float32), stage, scheduler, 256 if stage == 2 else 64


def feeds_for(unet, stage: int, scheduler, side: int, batch: int = 1, steps: int = 100):
    """The step graph's named inputs (as the cascade feeds them) and the DDPM tables they pack."""
    from ifengine.export.step_graphs import pack_ddpm
    from ifengine.export.step_spec import if_sample_channels
    from ifengine.schedule import ddpm_tables

    g = torch.Generator().manual_seed(0)
    c = if_sample_channels(unet.config, stage)
    text = unet.config.encoder_hid_dim or unet.config.cross_attention_dim[0]
    tables = ddpm_tables(scheduler, num_inference_steps=steps)
    feeds = {
        "sample": torch.randn(batch, c, side, side, generator=g),
        "step": torch.tensor([steps // 2]),
        "schedule": pack_ddpm(tables),
        "text_embeds": torch.randn(2 * batch, 77, text, generator=g),
        "noise": torch.randn(batch, c, side, side, generator=g),
        "guidance": torch.tensor([7.0]),
    }
    if stage == 2:
        feeds["upscaled"] = torch.randn(batch, unet.config.in_channels - c, side, side, generator=g)
        feeds["noise_level"] = torch.full((2 * batch,), 250.0)
    return feeds, tables


def spec_and_dims(unet, stage: int, scheduler, side: int, batch=(1, 1)):
    from ifengine.export.spec import DimRange
    from ifengine.export.step_spec import if_step_spec

    m = unet.config.downsample_factor
    spec = if_step_spec(unet.config, stage, scheduler, DimRange(side, side, side, m)).with_dtype("float32")
    lo, hi = batch
    dims = {
        "batch": DimRange(lo, hi, hi),
        "cfg_batch": DimRange(2 * lo, 2 * hi, 2 * hi, 2),
        "height": DimRange(side, side, side, m),
        "width": DimRange(side, side, side, m),
        "tokens": DimRange(77, 77, 77),
        "steps": DimRange(2, 100, 1000),
    }
    return spec, dims


def ms(fn, warmed: int = 0) -> dict:
    for _ in range(max(WARMUP - warmed, 0)):
        fn()
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        samples.append(1e3 * (time.perf_counter() - start))
    return {"median_ms": round(statistics.median(samples), 3), "min_ms": round(min(samples), 3)}


@torch.no_grad()
def run_case(name: str, folder: Path) -> dict:
    from ifengine.backends.traced.executor import IF_STEP, TracedStep
    from ifengine.export.step_graphs import IFStepGraph
    from ifengine.stage.steps import if_step

    unet, stage, scheduler, side = step_case(name)
    unet = unet.eval()
    feeds, tables = feeds_for(unet, stage, scheduler, side)
    spec, dims = spec_and_dims(unet, stage, scheduler, side)
    graph = IFStepGraph(unet, scheduler, stage).eval()
    extra = {"upscaled": feeds.get("upscaled"), "noise_level": feeds.get("noise_level")}
    args = (tables, feeds["step"][0], feeds["sample"], feeds["text_embeds"], feeds["noise"], feeds["guidance"][0], True)
    row = {"case": name, "stage": stage, "size": side, "batch": 1, "cfg_rows": 2}
    row.update(repeats=REPEATS, warmup=WARMUP, load_average_at_start=_load_average())
    row["params"] = sum(p.numel() for p in unet.parameters())
    ref = if_step(unet, *args, **extra)  # the reference output doubles as the eager warm-up call
    row["eager"] = ms(lambda: if_step(unet, *args, **extra), warmed=1)
    traced = TracedStep(IF_STEP)
    row["traced"] = ms(lambda: traced(unet, *args, **extra))
    row["onnxruntime"] = _onnxruntime(graph, spec, feeds, folder, ref)
    row["inductor"] = _inductor(graph, spec, dims, feeds, folder / "static.pt2", ref)
    if name == "demo":
        spec2, dims2 = spec_and_dims(unet, stage, scheduler, side, batch=(1, 2))
        row["inductor_dynamic_batch"] = _inductor(graph, spec2, dims2, feeds, folder / "dynamic.pt2", ref)
    return row


def _onnxruntime(graph, spec, feeds, folder: Path, ref) -> dict:
    import onnxruntime as ort

    from ifengine.export.onnx_export import trace_to_onnx

    path = folder / "step.onnx"
    start = time.perf_counter()
    trace_to_onnx(graph, spec, tuple(feeds.values()), path, opset=19)
    build = time.perf_counter() - start
    start = time.perf_counter()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    load = time.perf_counter() - start
    inputs = {k: v.numpy() for k, v in feeds.items()}
    out = torch.from_numpy(session.run(None, inputs)[0])
    row = ms(lambda: session.run(None, inputs))
    return {**row, "build_s": round(build, 1), "load_s": round(load, 2), "max_abs_vs_eager": _err(out, ref)}


def _inductor(graph, spec, dims, feeds, path: Path, ref) -> dict:
    from ifengine.backends.base import call
    from ifengine.backends.inductor.load import _load
    from ifengine.backends.inductor.network import InductorPackage
    from ifengine.engines.inductor_build import compile_module
    from ifengine.engines.io_plan import IOPlan

    config = {"scheduler": _json(graph.scheduler)}
    times = compile_module(graph, spec, dims, config, path, "cpu")
    start = time.perf_counter()
    model = _load(path, torch.device("cpu"))
    load = time.perf_counter() - start
    plan = IOPlan(spec.name, spec, dims, {t.name: t.dtype for t in spec.inputs + spec.outputs})
    network = InductorPackage(plan, model, "cpu")
    run = lambda: call(network, feeds)  # noqa: E731
    (out,) = run().values()
    return {
        **ms(run),
        "build_s": round(times["export_s"] + times["compile_s"], 1),
        "export_s": round(times["export_s"], 1),
        "compile_s": round(times["compile_s"], 1),
        "load_s": round(load, 2),
        "package_mb": round(path.stat().st_size / 1e6, 1),
        "max_abs_vs_eager": _err(out, ref),
    }


def _load_average() -> list[float]:
    import os

    return [round(x, 2) for x in os.getloadavg()]


def _json(config) -> dict:
    import dataclasses

    return json.loads(json.dumps(dataclasses.asdict(config)))


def _err(out, ref) -> float:
    return float((out - ref).abs().max())


def markdown(payload: dict) -> str:
    lines = [
        f"# IF step on the CPU: eager vs traced vs ONNX Runtime vs Inductor ({payload['date']})",
        "",
        f"Machine: {summary_line(payload['machine'])}; torch threads {payload['threads']}. Command: "
        f"`{payload['command']}`. Median of `repeats` after `warmup` calls (per row), ms per guided step "
        "(batch 1, CFG batch 2).",
        "",
        "| case | size | eager ms | traced ms | ORT ms | Inductor ms | ORT build s | ORT load s "
        "| Inductor build s | Inductor load s | repeats / warm-up | load avg at start |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["cases"]:
        o, i = r["onnxruntime"], r["inductor"]
        lines.append(
            f"| {r['case']} | {r['size']}² | {r['eager']['median_ms']} | {r['traced']['median_ms']} | "
            f"{o['median_ms']} | {i['median_ms']} | {o['build_s']} | {o['load_s']} | {i['build_s']} | {i['load_s']} | "
            f"{r.get('repeats', 7)} / {r.get('warmup', 2)} | {r.get('load_average_at_start', '-')} |"
        )
    for r in payload["cases"]:
        d = r.get("inductor_dynamic_batch")
        if d:
            lines += [
                "",
                f"{r['case']}: Inductor with a dynamic batch (Dim 1..2) {d['median_ms']} ms at batch 1 vs static "
                f"{r['inductor']['median_ms']} ms (build {d['build_s']} s vs {r['inductor']['build_s']} s).",
            ]
    for note in payload.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def write(payload: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "inductor_cpu.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "inductor_cpu.md").write_text(markdown(payload))


def main() -> None:
    global REPEATS, WARMUP  # the timing helpers read them; set once from the flags
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="demo,IF-I-M,IF-II-M")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed calls per system (median reported)")
    parser.add_argument("--warmup", type=int, default=WARMUP, help="untimed calls before them")
    parser.add_argument("--append", action="store_true", help="keep the other cases of OUT/inductor_cpu.json")
    args = parser.parse_args()
    REPEATS, WARMUP = args.repeats, args.warmup
    payload = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/inductor_cpu.py " + " ".join(sys.argv[1:]),
        "machine": describe("cpu"),
        "threads": torch.get_num_threads(),
        "cases": [],
    }
    names = args.cases.split(",")
    previous = args.out / "inductor_cpu.json"
    if args.append and previous.is_file():
        old = json.loads(previous.read_text())
        payload["cases"] = [c for c in old["cases"] if c["case"] not in names]
        payload["notes"] = old.get("notes", [])
        payload["earlier_runs"] = old.get("earlier_runs", []) + [{k: old[k] for k in ("date", "command", "machine")}]
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"inductor-{name}-") as folder:
            start = time.perf_counter()
            payload["cases"].append(run_case(name, Path(folder)))
            payload["cases"][-1]["case_s"] = round(time.perf_counter() - start, 1)
        write(payload, args.out)
        print(markdown(payload), flush=True)


if __name__ == "__main__":
    main()
