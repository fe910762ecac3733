"""The work of one image, counted on the meta device, and the physical floor it implies on this device.

Counts every full-size component at the shapes of if-facts.md's "Work per image" table (CFG batch 2,
stage I 64x64, II 256x256, III latent 256x256, VAE to 1024x1024, T5 on 2 x 77 tokens), compares them
with the recorded figures, and divides the total by the matmul peak measured here: the time no runtime
can beat on this device.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from . import flops as F
from .machine import describe, summary_line
from .report import command_line, markdown_table, write_outputs
from ..facts import DEFAULT_STEPS
from ..models.presets import text_preset, unet_preset, vae_preset

log = logging.getLogger(__name__)
DEFAULT_CALLS = {"t5": 1, **{f"stage{n}": steps for n, steps in enumerate(DEFAULT_STEPS, start=1)}, "vae": 1}


@dataclass(frozen=True)
class WorkConfig:
    device: str = "cpu"
    dtype: str = "float32"  # of the matmul peak; bfloat16 on GPUs
    peak_size: int | None = None


def count_per_call() -> dict[str, int]:
    """FLOPs per call of each full-size component at the if-facts shapes."""

    u1, u2 = unet_preset("IF-I-XL"), unet_preset("IF-II-L")
    return {
        "t5": F.text_flops(text_preset("t5-v1_1-xxl"), 2),
        "stage1": F.if_unet_flops(u1, 2, 64, 64, u1.encoder_hid_dim),
        "stage2": F.if_unet_flops(u2, 2, 256, 256, u2.encoder_hid_dim),
        "stage3": F.x4_unet_flops(unet_preset("x4-upscaler"), 2, 256, 256),
        "vae": F.vae_decode_flops(vae_preset("x4-vae"), 1, 256, 256),
    }


def run_work(config: WorkConfig) -> dict:
    counted = count_per_call()
    rows = {}
    for key, (label, expected) in F.IF_FACTS.items():
        rows[key] = {
            "label": label,
            "flops_per_call": counted[key],
            "if_facts": expected,
            "rel_diff": counted[key] / expected - 1,
            "calls": DEFAULT_CALLS[key],
            "total": counted[key] * DEFAULT_CALLS[key],
        }
    device = torch.device(config.device)
    peak = F.matmul_peak(device, getattr(torch, config.dtype), config.peak_size)
    total = sum(r["total"] for r in rows.values())
    return {
        "benchmark": "work",
        "command": command_line(),
        "machine": describe(device),
        "config": dataclasses.asdict(config),
        "components": rows,
        "total_flops": total,
        "matmul_peak": peak,
        "floor_seconds": total / peak["flops_per_s"],
    }


def work_table(payload: dict) -> str:
    rows = [
        [
            r["label"],
            f"{r['flops_per_call'] / 1e12:.3f} T",
            f"{r['if_facts'] / 1e12:.2f} T",
            f"{r['rel_diff']:+.2%}",
            r["calls"],
            f"{r['total'] / 1e12:.1f} T",
        ]
        for r in payload["components"].values()
    ]
    peak = payload["matmul_peak"]
    tail = (
        f"\nOne 1024x1024 image at default steps: {payload['total_flops'] / 1e15:.3f} PFLOP. Measured "
        f"{peak['dtype']} matmul peak ({peak['size']}^3) on {payload['machine']['device']}: "
        f"{peak['flops_per_s'] / 1e12:.2f} TFLOP/s, so the arithmetic floor here is "
        f"{payload['floor_seconds']:.1f} s per image.\n"
    )
    head = f"FLOPs counted with torch.utils.flop_counter on meta tensors; {summary_line(payload['machine'])}\n\n"
    return head + markdown_table(["component", "counted / call", "if-facts", "diff", "calls", "total"], rows) + tail


def write_work_results(payload: dict, out_dir: Path, name: str = "work") -> dict[str, Path]:
    return write_outputs(out_dir, name, payload, work_table(payload))
