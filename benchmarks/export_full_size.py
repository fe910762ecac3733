#!/usr/bin/env python
"""Full-size ONNX export on a CPU machine: peak RSS and wall time per component, and int8 fidelity.

    python benchmarks/export_full_size.py export --work /big/disk [--components t5,unet1] [--preset full]
    python benchmarks/export_full_size.py int8 --work /big/disk [--preset medium]

``export`` writes a random-weight stage I checkpoint (T5-XXL encoder + IF-I-XL, fp16 safetensors, built on
the meta device) and exports each component in fp16 through ``ifengine export``'s API, one fresh process
per component so that each peak RSS (``os.wait4``) is that component's alone. ``int8`` exports a random
U-Net's fp32 and int8 graphs and reports the int8 output's cosine to fp32 on held-out inputs. Results
are merged into benchmarks/results/export_full_size.{json,md}; big files are deleted unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = {"full": ("IF-I-XL", "t5-v1_1-xxl"), "tiny": ("tiny-I", "tiny-t5"), "medium": ("IF-I-M", None)}
GB = 2**30


def write_stage1(root: Path, unet_name: str, t5_name: str | None, t5_layers: int | None = None) -> Path:
    """A random stage I checkpoint in the Hub layout, fp16 weights, never holding an fp32 model copy."""
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel

    from ifengine.bench.checkpoints import random_state
    from ifengine.demo.build import scheduler_json, unet_config_json
    from ifengine.demo.tokenizers import t5_tokenizer_dir
    from ifengine.models.if_unet import IFUNet
    from ifengine.models.presets import text_preset, unet_preset
    from ifengine.models.weights import build_on_meta
    from ifengine.schedule.presets import IF_STAGE1_DDPM

    if (root / "model_index.json").is_file():
        return root
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    config = unet_preset(unet_name)
    (tmp / "unet").mkdir(parents=True)
    save_file(
        random_state(build_on_meta(lambda: IFUNet(config)), seed=1),
        str(tmp / "unet" / "diffusion_pytorch_model.safetensors"),
    )
    _json(tmp / "unet" / "config.json", unet_config_json(config))
    _json(tmp / "scheduler" / "scheduler_config.json", scheduler_json(IF_STAGE1_DDPM, "DDPMScheduler"))
    shutil.copytree(t5_tokenizer_dir(), tmp / "tokenizer")
    index = {
        "_class_name": "IFPipeline",
        "_diffusers_version": "0.30.0",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "tokenizer": ["transformers", "T5Tokenizer"],
    }
    if t5_name is not None:
        preset = text_preset(t5_name)
        if t5_layers is not None:
            preset = replace(preset, num_layers=t5_layers, ffn_size=1024)
        t5 = build_on_meta(lambda: T5EncoderModel(T5Config(**preset.transformers_kwargs())))
        t5.save_pretrained(tmp / "text_encoder", state_dict=random_state(t5, seed=2), max_shard_size="2GB")
        index["text_encoder"] = ["transformers", "T5EncoderModel"]
    _json(tmp / "model_index.json", index)
    os.replace(tmp, root)
    return root


def _json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))


def child(args) -> None:
    """Runs in its own process: export one component, print what it did as JSON."""
    from ifengine.export.api import export_artifacts
    from ifengine.export.manifest import read_manifest

    start = time.perf_counter()
    (path,) = export_artifacts(
        {1: args.checkpoint}, args.out, components=[args.component], precisions=[args.precision], progress=False
    )
    manifest = read_manifest(path)
    sizes = {name: meta["size"] for name, meta in manifest["files"].items() if name.endswith((".onnx", ".data"))}
    print(
        json.dumps(
            {
                "wall_s": round(time.perf_counter() - start, 1),
                "export_s": manifest["export_seconds"],
                "graph_bytes": sizes,
                "external_data": manifest["external_data"],
                "note": manifest["variant"]["note"],
                "opset": manifest["opset"],
            }
        )
    )


def run_child(argv: list[str]) -> dict:
    """Run this script as a child; its peak RSS comes from the kernel's accounting for that process.

    RSS counts the memory-mapped checkpoint pages too (clean page cache the kernel can drop), so the
    anonymous part (the process's own allocations) is sampled every 0.2 s alongside.
    """
    proc = subprocess.Popen([sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True)
    anon = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        anon = max(anon, _rss_anon_kib(proc.pid))
        time.sleep(0.2)
    out = proc.stdout.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"child {argv} failed with exit code {code}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_gib"] = round(usage.ru_maxrss * 1024 / GB, 2)  # ru_maxrss is in KiB on Linux
    result["peak_anon_rss_gib"] = round(anon * 1024 / GB, 2)
    return result


def _rss_anon_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def export(args) -> dict:
    unet_name, t5_name = PRESETS[args.preset]
    work = Path(args.work)
    t0 = time.perf_counter()
    reused = (work / f"stage1-{args.preset}" / "model_index.json").is_file()
    ckpt = write_stage1(work / f"stage1-{args.preset}", unet_name, t5_name)
    built = None if reused else round(time.perf_counter() - t0, 1)
    results = {}
    for component in args.components.split(","):
        print(f"exporting {component} ({args.preset}, {args.precision}) ...", file=sys.stderr, flush=True)
        results[component] = run_child(
            [
                "child",
                "--checkpoint",
                str(ckpt),
                "--out",
                str(work / "artifacts"),
                "--component",
                component,
                "--precision",
                args.precision,
            ]
        )
        print(f"  {results[component]}", file=sys.stderr, flush=True)
    if not args.keep:
        shutil.rmtree(work / "artifacts", ignore_errors=True)
        shutil.rmtree(ckpt, ignore_errors=True)
    return {
        "preset": args.preset,
        "models": {"unet1": unet_name, "t5": t5_name},
        "precision": args.precision,
        "checkpoint_write_s": built,
        "components": results,
        "machine": machine(),
    }


def int8(args) -> dict:
    """int8 vs fp32 cosine of one U-Net on held-out inputs, as the exporter measures and records it."""
    from ifengine.export.api import ExportOptions, export_artifacts
    from ifengine.export.calibration import CalibrationSettings
    from ifengine.export.manifest import read_manifest

    unet_name = PRESETS[args.preset][0]
    # a shallow T5-XXL-width encoder gives the U-Net real T5-shaped conditioning without 19 GB of fp32 T5
    t5_name, layers = ("tiny-t5", None) if args.preset == "tiny" else ("t5-v1_1-xxl", 2)
    work = Path(args.work)
    ckpt = write_stage1(work / f"stage1-int8-{args.preset}", unet_name, t5_name, layers)
    options = ExportOptions(calibration=CalibrationSettings(samples=args.samples, held_out_samples=8))
    start = time.perf_counter()
    paths = export_artifacts(
        {1: ckpt},
        work / "artifacts-int8",
        components=["unet1"],
        precisions=["fp32", "int8"],
        progress=False,
        options=options,
    )
    quant = read_manifest(paths[1])["quantization"]
    if not args.keep:
        shutil.rmtree(work / "artifacts-int8", ignore_errors=True)
        shutil.rmtree(ckpt, ignore_errors=True)
    return {
        "preset": args.preset,
        "unet": unet_name,
        "calibration_samples": quant["calibration_samples"],
        "calibration_size": quant["calibration_size"],
        "held_out_samples": quant["held_out_samples"],
        "cosine_min": quant["held_out_cosine_min"],
        "cosine_mean": quant["held_out_cosine_mean"],
        "wall_s": round(time.perf_counter() - start, 1),
        "machine": machine(),
    }


def machine() -> dict:
    import onnx
    import onnxruntime
    import torch

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpus": os.cpu_count(),
        "ram_gib": round(ram / GB, 1),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def save(kind: str, key: str, result: dict, results_dir: Path) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "export_full_size.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault(kind, {})[key] = result
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (results_dir / "export_full_size.md").write_text(markdown(data))


def markdown(data: dict) -> str:
    lines = [
        "# ONNX export on a CPU machine",
        "",
        "Written by `benchmarks/export_full_size.py`. Random weights; one fresh process per component.",
        "",
    ]
    for key, run in sorted(data.get("export", {}).items()):
        m = run["machine"]
        lines += [
            f"## Export, {key} ({run['precision']}): {m['cpus']} CPUs, {m['ram_gib']} GiB RAM, "
            f"load average at the end {m['load_average']}",
            "",
            "| component | model | peak RSS (GiB) | peak anonymous RSS (GiB) | wall (s) | graph + data (GiB) "
            "| external data | note |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for comp, r in run["components"].items():
            size = sum(r["graph_bytes"].values()) / GB
            lines.append(
                f"| {comp} | {run['models'][comp]} | {r['peak_rss_gib']} | {r.get('peak_anon_rss_gib', '-')} | "
                f"{r['wall_s']} | {size:.2f} | {r['external_data']} | {r['note']} |"
            )
        wrote = run["checkpoint_write_s"]
        lines += [
            "",
            (
                f"Writing the random checkpoint took {wrote} s"
                if wrote is not None
                else "The random checkpoint was reused from an earlier run"
            )
            + " (not included above). Wall time "
            "includes the first component's sha256 of the whole checkpoint (cached for the next). Peak RSS "
            "includes pages of the memory-mapped checkpoint (page cache the kernel can reclaim); the anonymous "
            "peak is the process's own memory, sampled every 0.2 s.",
            "",
        ]
    if data.get("int8"):
        lines += [
            "## int8 U-Net fidelity (cosine of int8 to fp32 output, held-out inputs)",
            "",
            "| preset | U-Net | calibration samples | size | held-out | cosine min | cosine mean |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, r in sorted(data["int8"].items()):
            lines.append(
                f"| {key} | {r['unet']} | {r['calibration_samples']} | {r['calibration_size']} | "
                f"{r['held_out_samples']} | {r['cosine_min']} | {r['cosine_mean']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("export", "int8"):
        p = sub.add_parser(name)
        p.add_argument("--work", required=True, help="scratch folder (full preset: ~45 GB free disk)")
        p.add_argument("--preset", choices=sorted(PRESETS), default="full" if name == "export" else "medium")
        p.add_argument("--keep", action="store_true", help="keep checkpoints and artifacts")
        p.add_argument("--results", type=Path, default=RESULTS, help="results folder")
        if name == "export":
            p.add_argument("--components", default="t5,unet1")
            p.add_argument("--precision", default="fp16")
        else:
            p.add_argument("--samples", type=int, default=16)
    c = sub.add_parser("child")
    for flag in ("--checkpoint", "--out", "--component", "--precision"):
        c.add_argument(flag, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "child":
        child(args)
        return 0
    result = export(args) if args.cmd == "export" else int8(args)
    save(args.cmd, args.preset, result, args.results)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
