#!/usr/bin/env python
"""Weight-only int8 U-Nets (``weights="int8"``, what the planner picks under tight budgets): fidelity to
fp32, weight bytes, and how long quantising takes. CPU only; nothing is downloaded.

    python benchmarks/int8_weights.py [--presets IF-I-M,IF-II-M] [--out benchmarks/results]

Each U-Net gets random full-size weights twice: torch's default init (uniform, every channel alike) and
a heavy-tailed draw (Student-t, 3 degrees of freedom: a few large weights per channel, closer to what
trained nets hold and harder on per-channel scales). For each, the int8 U-Net's output is compared with
the fp32 U-Net's on the CFG batch at several timesteps. Trained IF weights were not available: these
figures bound the rounding on synthetic weights, not the quality on the real checkpoints.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ifengine.models.if_unet import IFUNet
from ifengine.models.int8 import quantize_module
from ifengine.models.presets import unet_preset
from ifengine.bench.fullsize import randomize

RESULTS = Path(__file__).resolve().parent / "results"
TIMESTEPS = (999, 500, 50)


def heavy_tailed(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Matrices and kernels ~ Student-t(3), scaled to torch's default bound; everything else as randomize."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 2:
                normal = torch.randn(p.shape, generator=generator)
                chi2 = torch.randn((3,) + tuple(p.shape), generator=generator).pow(2).sum(0)
                p.copy_(normal / torch.sqrt(chi2 / 3) / math.sqrt(3 * p[0].numel()))


def inputs(config, size: int, generator: torch.Generator) -> list[dict]:
    text_dim = config.encoder_hid_dim or config.cross_attention_dim[0]
    cases = []
    for t in TIMESTEPS:
        args = dict(
            sample=torch.randn(2, config.in_channels, size, size, generator=generator),
            timestep=torch.tensor([t, t]),
            encoder_hidden_states=torch.randn(2, 77, text_dim, generator=generator),
        )
        if config.class_embed_type == "timestep":
            args["class_labels"] = torch.tensor([250, 250])
        cases.append(args)
    return cases


@torch.no_grad()
def measure(name: str, init: str, size: int) -> dict:
    config = unet_preset(name)
    generator = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        meta = IFUNet(config)
    fp32 = randomize(meta, generator)
    if init == "heavy-tailed":
        heavy_tailed(fp32, generator)
    int8 = copy.deepcopy(fp32)
    start = time.perf_counter()
    report = quantize_module(int8)
    quantise_s = time.perf_counter() - start
    cosines, rel = [], []
    for args in inputs(config, size, generator):
        ref, out = fp32(**args), int8(**args)
        cosines.append(F.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item())
        rel.append(((out - ref).norm() / ref.norm()).item())
    params = sum(p.numel() for p in fp32.parameters())
    return {
        "unet": name,
        "init": init,
        "size": size,
        "params": params,
        "layers_int8": report.layers,
        "fp16_weight_gib": round(params * 2 / 2**30, 3),
        "int8_weight_gib": round(_fp16_bytes(int8) / 2**30, 3),
        "quantise_s_fp32_cpu": round(quantise_s, 2),
        "timesteps": list(TIMESTEPS),
        "cosine_min": round(min(cosines), 6),
        "rel_l2_max": round(max(rel), 5),
    }


def _fp16_bytes(module: torch.nn.Module) -> int:
    """Weight bytes when the model computes in fp16: int8 tensors 1 byte, every float tensor 2."""
    return sum(p.numel() * (1 if p.dtype == torch.int8 else 2) for p in module.parameters())


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# Weight-only int8 U-Nets vs fp32 (random weights)",
        "",
        f"Written by `benchmarks/int8_weights.py` on {m['cpus']} CPUs ({m['processor']}), torch {m['torch']}. "
        "Output of one forward on the CFG batch (2) at timesteps " + ", ".join(map(str, TIMESTEPS)) + ".",
        "",
        "| U-Net | weights | size | int8 layers | weights fp16 -> int8 (GiB) | cosine min | rel. L2 max "
        "| quantise (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["runs"]:
        lines.append(
            f"| {r['unet']} | {r['init']} | {r['size']} | {r['layers_int8']} | "
            f"{r['fp16_weight_gib']} -> {r['int8_weight_gib']} | {r['cosine_min']} | "
            f"{r['rel_l2_max']} | {r['quantise_s_fp32_cpu']} |"
        )
    lines += [
        "",
        "Synthetic weights only: trained IF weights were unreachable, so the quality of int8 on the real "
        "checkpoints is unmeasured.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="IF-I-M,IF-II-M", help="IF U-Net presets, comma-separated")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (int8_weights.json/.md)")
    args = p.parse_args(argv)
    runs = []
    for name in args.presets.split(","):
        size = unet_preset(name).sample_size
        for init in ("uniform", "heavy-tailed"):
            runs.append(measure(name, init, size))
            print(json.dumps(runs[-1]), flush=True)
    data = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_weights.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / "int8_weights.md").write_text(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
