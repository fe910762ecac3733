"""Section ``budget``: one call under a memory budget (8 GiB), checked against the plan and the image.

The cascade is built on the device, runs one unconstrained call (the reference image), is moved to the
host and planned under the budget with the allocator capped; the budgeted call's peak is compared with
the plan's prediction, and its image with the reference (offloading and streaming must not change the
arithmetic; a tiled VAE decode may, by a few ulps near tile seams, which the figure shows).
"""

from __future__ import annotations

import time

import torch

from .common import build_cascade, call, on_gpu, release
from .config import CheckConfig
from ...memory.sizes import parse_size
from ..fullsize import move_to
from ...runtime import configure
from ...memory.plan_inputs import cascade_modules
from ...memory.workload import Workload
from ...models.int8 import is_quantized
from ..ulps import max_ulps


def run(cfg: CheckConfig, save) -> dict:

    report = {"budget": cfg.budget, "budget_bytes": parse_size(cfg.budget), "weights": cfg.budget_weights}
    cascade = build_cascade(cfg)
    try:
        reference = _reference(cascade, cfg)
        report["reference_shape"] = list(reference.shape)
        save(report)
        move_to(cascade, "cpu")  # planning places every weight from the host
        release(None)
        report.update(_budgeted(cascade, cfg, reference))
    finally:
        release(cascade)
    return report


def _reference(cascade, cfg: CheckConfig) -> torch.Tensor:

    runtime = configure(cascade)
    try:
        return call(cascade, cfg).stages[-1].float().cpu()
    finally:
        runtime.close()


def _budgeted(cascade, cfg: CheckConfig, reference: torch.Tensor) -> dict:

    if on_gpu(cfg):
        torch.cuda.reset_peak_memory_stats()
    workload = Workload(steps=cfg.steps, **({"height": cfg.size, "width": cfg.size} if cfg.size else {}))
    rt = configure(
        cascade, vram_budget=cfg.budget, limit_allocator=on_gpu(cfg), weights=cfg.budget_weights, workload=workload
    )
    result = {
        "plan_modes": rt.plan.modes(),
        "predicted_peak": rt.plan.peak_bytes,
        "vae_tile": rt.plan.vae_tile,
        "int8": [n for n, m in cascade_modules(cascade).items() if is_quantized(m)],
        "context_reserve": rt.plan.options.context_reserve_bytes,
    }
    try:
        started = time.perf_counter()
        image = call(cascade, cfg).stages[-1].float().cpu()
        result.update(seconds=time.perf_counter() - started, image_shape=list(image.shape))
        result["max_ulps_vs_unconstrained"] = max_ulps(image, reference)
        result["max_abs_vs_unconstrained"] = float((image - reference).abs().max())
        if on_gpu(cfg):
            result.update(_peaks())
            result["within_plan"] = result["peak_reserved"] <= result["predicted_peak"]
    finally:
        rt.close()
        if on_gpu(cfg):
            torch.cuda.set_per_process_memory_fraction(1.0)
    return result


def _peaks() -> dict:  # GPU only
    free, total = torch.cuda.mem_get_info()
    peak = torch.cuda.max_memory_reserved()
    return {
        "peak_reserved": peak,
        "peak_allocated": torch.cuda.max_memory_allocated(),
        "device_total": total,
        # the parent holds no CUDA context and this child runs alone: device-wide use is this process's
        "device_used_now": total - free,
    }
