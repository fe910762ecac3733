"""Section ``throughput``: images/s with stages overlapped on two streams vs the latency runtime."""

from __future__ import annotations

from .common import build_cascade, release
from .config import PROMPTS, CheckConfig
from ...runtime import configure
from ...runtime.throughput import run_throughput


def run(cfg: CheckConfig, save) -> dict:

    cascade = build_cascade(cfg)
    report, kw = {}, dict(steps=cfg.steps, check_finite=False, height=cfg.size, width=cfg.size)
    try:
        for mode in ("throughput", "latency"):
            runtime = configure(cascade, mode=mode)
            try:
                run_throughput(cascade, runtime, [PROMPTS[0]], **kw)  # captures
                res = run_throughput(cascade, runtime, [PROMPTS[0]] * cfg.prompts, **kw)
                report[mode] = {
                    "images": res.images,
                    "seconds": res.seconds,
                    "images_per_second": res.images_per_second,
                }
            finally:
                runtime.close()
            save(report)
    finally:
        release(cascade)
    return report
