"""Section ``step_times``: ms per U-Net call on the CFG batch, eager vs CUDA graph, with MFU.

IF-I-M, IF-I-XL, IF-II-L and the x4 U-Net at each batch of the config, against ``flops.py``'s counts and
the matmul peak measured on the same device. Each row is saved as soon as it is measured.
"""

from __future__ import annotations

import torch

from .common import dtype_of, release
from .config import PRESETS, CheckConfig
from ..flops import matmul_peak
from ..unet_timing import time_unet


def run(cfg: CheckConfig, save) -> dict:

    device, dtype = torch.device(cfg.device), dtype_of(cfg)
    report = {"matmul_peak": matmul_peak(device, dtype, repeats=cfg.repeats), "rows": []}
    peak = report["matmul_peak"]["flops_per_s"]
    save(report)
    for preset in PRESETS[cfg.preset]["unets"]:
        for batch in cfg.batches:
            report["rows"].append(time_unet(preset, batch, device, dtype, cfg.repeats, peak, cfg.size))
            release(None)  # the U-Net (8 GiB for IF-I-XL) and its graph pool go before the next is built
            save(report)
    return report
