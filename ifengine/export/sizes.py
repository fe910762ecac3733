"""Height/width ranges of every exported image graph, derived from the cascade they belong to.

Stage II runs at four times stage I's size and the x4 U-Net on latents the size of stage II's image, so
one stage I range fixes them all: stage I from half to twice its checkpoint's ``sample_size``, stage II
and the x4 latents four times that, the VAE decoder the x4 latents. Without stage I, a stage's own
``sample_size`` gives its range. Every bound is rounded up to the stage's U-Net downsampling multiple.
"""

from __future__ import annotations

import math

from .spec import DimRange
from ..facts import SR_SCALE


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, math.ceil(value / multiple) * multiple)


def side_range(lo: int, opt: int, hi: int, multiple: int) -> DimRange:
    return DimRange(*(_round_up(v, multiple) for v in (lo, opt, hi)), multiple=multiple)


def cascade_sizes(sample_sizes: dict[int, int], multiples: dict[int, int]) -> dict[int, DimRange]:
    """Height/width range per stage (1, 2: IF U-Nets; 3: x4 latents and VAE input).

    ``sample_sizes`` holds each present checkpoint's U-Net ``sample_size``; ``multiples`` its total
    downsampling. Stages whose U-Net is absent still get a range when an earlier stage fixes it.
    """
    out: dict[int, DimRange] = {}
    base = _base_range(sample_sizes)
    for stage in (1, 2, 3):
        if base is None or stage not in multiples:
            continue
        lo, opt, hi = base[stage]
        out[stage] = side_range(lo, opt, hi, multiples[stage])
    return out


def _base_range(sample_sizes: dict[int, int]) -> dict[int, tuple[int, int, int]] | None:
    if 1 in sample_sizes:
        s = sample_sizes[1]
        one = (s // 2, s, 2 * s)
    elif 2 in sample_sizes:
        s = sample_sizes[2]
        one = (s // 2 // SR_SCALE, s // SR_SCALE, 2 * s // SR_SCALE)
    elif 3 in sample_sizes:
        # the x4 checkpoint's sample_size is its training latent size (128 for 512 px output); the
        # cascade feeds it stage II's 256 px image
        s = sample_sizes[3]
        one = (s // SR_SCALE, 2 * s // SR_SCALE, 4 * s // SR_SCALE)
    else:
        return None
    up = tuple(v * SR_SCALE for v in one)
    return {1: one, 2: up, 3: up}
