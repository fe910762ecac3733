#!/usr/bin/env python
"""Cost of dequantising one int8 layer: cast-then-scale (two passes, the old code) vs one fused multiply.

    PYTHONPATH=. python benchmarks/int8_dequant.py [--device cpu|cuda] [--out benchmarks/results]

Bytes per weight are counted from the passes (not measured): cast reads 1 and writes 2 (fp16), the
in-place scale reads 2 and writes 2, so two passes move 7 bytes per weight; the fused multiply reads 1
and writes 2. Times are measured on the device given; the figure that matters (GPU) needs a GPU run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ifengine.bench.machine import describe
from ifengine.bench.report import markdown_table, write_outputs

SHAPES = {"IF-I-XL conv 3x3 (2816 ch)": (2816, 2816, 3, 3), "IF-I-XL attention proj (2816)": (2816, 2816)}


def _seconds(fn, device: torch.device, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def measure(device: torch.device, dtype: torch.dtype, repeats: int) -> list[dict]:
    rows = []
    for name, shape in SHAPES.items():
        q = torch.randint(-127, 128, shape, dtype=torch.int8, device=device)
        scale = torch.rand(shape[0], dtype=dtype, device=device).view((-1,) + (1,) * (len(shape) - 1))
        two = _seconds(lambda q=q, scale=scale: q.to(dtype).mul_(scale), device, repeats)
        fused = _seconds(lambda q=q, scale=scale: torch.mul(q, scale), device, repeats)
        size = dtype.itemsize
        rows.append(
            {
                "layer": name,
                "weights": q.numel(),
                "two_pass_ms": two * 1e3,
                "fused_ms": fused * 1e3,
                "two_pass_bytes_per_weight": 1 + size + 2 * size,
                "fused_bytes_per_weight": 1 + size,
                "bit_identical": bool(torch.equal(q.to(dtype).mul_(scale), torch.mul(q, scale))),
            }
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rows = measure(device, dtype, args.repeats)
    payload = {"benchmark": "int8_dequant", "machine": describe(device), "dtype": args.dtype, "rows": rows}
    header = ["layer", "weights", "two passes (ms)", "fused (ms)", "bytes/weight two", "fused", "bit-identical"]
    table = markdown_table(
        header,
        [
            [r["layer"], r["weights"], f"{r['two_pass_ms']:.1f}", f"{r['fused_ms']:.1f}"]
            + [r["two_pass_bytes_per_weight"], r["fused_bytes_per_weight"], r["bit_identical"]]
            for r in rows
        ],
    )
    write_outputs(args.out, f"int8_dequant_{device.type}", payload, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
