"""Clipping and dynamic thresholding of the predicted clean sample x0.

Everything here is branch-free on tensor values: the mode is fixed when tables are built, and the
quantile uses a top-k whose k comes from the static shape, so it traces, exports to ONNX (TopK,
Gather, Min/Max) and can live inside a CUDA graph. An exact interpolated quantile needs two order
statistics, so a sort-free form is not possible; k is the smaller tail, min(n - below, above + 1)
(616 for a 3x64x64 image at ratio 0.95, well under TensorRT's TopK limit of 3840).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from ._common import static_dim

X0Mode = Literal["none", "clip", "dynamic"]


@dataclass(frozen=True)
class X0Clamp:
    """How x0 is bounded; "clip" clamps to ±bound then divides by divisor (1 for plain clipping)."""

    mode: X0Mode = "none"
    bound: float = 1.0
    divisor: float = 1.0
    ratio: float = 0.995
    max_value: float = 1.0


def make_x0_clamp(
    thresholding: bool,
    clip_sample: bool,
    clip_sample_range: float,
    dynamic_thresholding_ratio: float,
    sample_max_value: float,
) -> X0Clamp:
    """Decide once, at table-build time, which x0 bounding a scheduler config implies."""
    if thresholding:
        if sample_max_value <= 1.0:
            # s = clamp(quantile, 1, max) is then the constant max: a static clip, no quantile needed.
            return X0Clamp("clip", bound=sample_max_value, divisor=sample_max_value)
        return X0Clamp("dynamic", ratio=dynamic_thresholding_ratio, max_value=sample_max_value)
    if clip_sample:
        return X0Clamp("clip", bound=clip_sample_range, divisor=1.0)
    return X0Clamp("none")


def _f32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def _quantile_positions(n: int, q: float, in_float32: bool) -> tuple[int, int, float]:
    # torch.quantile forms the rank in the input's dtype; doing the same keeps the weight identical.
    rounded = _f32 if in_float32 else float
    rank = rounded(rounded(q) * (n - 1))
    below = math.floor(rank)
    above = math.ceil(rank)
    return below, above, rounded(rank - below)


def _order_statistics(x: torch.Tensor, below: int, above: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `below`-th and `above`-th smallest entries (0-based) along the last dim, via one top-k."""
    n = static_dim(x, -1)
    if n - below <= above + 1:
        top = torch.topk(x, n - below, dim=-1, largest=True, sorted=True).values
        return top[..., n - below - 1], top[..., n - above - 1]
    bottom = torch.topk(x, above + 1, dim=-1, largest=False, sorted=True).values
    return bottom[..., below], bottom[..., above]


def quantile_last_dim(x: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile(x, q, dim=-1) with linear interpolation, built from a static-k top-k."""
    below, above, weight = _quantile_positions(static_dim(x, -1), q, x.dtype != torch.float64)
    low, high = _order_statistics(x, below, above)
    if above == below:
        return low
    return torch.lerp(low, high, weight)


def dynamic_threshold(
    x0: torch.Tensor,
    ratio: float,
    max_value: float,
    quantile: Callable[[torch.Tensor, float], torch.Tensor] = quantile_last_dim,
) -> torch.Tensor:
    """Per-sample s = clamp(quantile(|x0|, ratio), 1, max_value); returns clamp(x0, -s, s) / s.

    ``quantile`` is swappable because exported step graphs need one whose top-k follows the runtime shape.
    """
    dtype = x0.dtype
    work = x0 if dtype in (torch.float32, torch.float64) else x0.float()
    flat = work.reshape(work.shape[0], -1)
    s = quantile(flat.abs(), ratio).clamp(min=1.0, max=max_value).unsqueeze(1)
    # minimum/maximum rather than clamp(tensor bounds): ONNX Clip only takes scalar bounds.
    bounded = torch.minimum(torch.maximum(flat, -s), s) / s
    return bounded.reshape(x0.shape).to(dtype)


def apply_x0_clamp(
    spec: X0Clamp, x0: torch.Tensor, quantile: Callable[[torch.Tensor, float], torch.Tensor] = quantile_last_dim
) -> torch.Tensor:
    """Bound x0 as the spec says (the branch is on static config, never on tensor values)."""
    if spec.mode == "dynamic":
        return dynamic_threshold(x0, spec.ratio, spec.max_value, quantile)
    if spec.mode == "clip":
        clipped = x0.clamp(-spec.bound, spec.bound)
        return clipped if spec.divisor == 1.0 else clipped / spec.divisor
    return x0
