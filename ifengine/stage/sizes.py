"""Image sizes every U-Net of the cascade can downsample and upsample back exactly.

diffusers crashes mid-run on sizes that do not divide by a U-Net's total downsampling (its issue 7842);
we reject them before any work with the nearest sizes that do work.
"""

from __future__ import annotations

import math

from ..facts import scale_of
from .options import RequestError
from ..validate import positive_int


def size_multiple(downsample_factors: dict[int, int]) -> int:
    """The multiple stage I's height/width must have, given each used stage's total downsampling.

    Stage s runs at stage I's size times 4**(s-1), so its factor constrains stage I's size less.
    """
    step = 1
    for stage, factor in downsample_factors.items():
        scale = scale_of(stage)
        need = factor // math.gcd(factor, scale)
        step = step * need // math.gcd(step, need)
    return step


def check_size(height: int, width: int, multiple: int) -> None:
    for name, value in (("height", height), ("width", width)):
        positive_int(value, f"{name} (pixels)", error=RequestError)
    bad = [(n, v) for n, v in (("height", height), ("width", width)) if v % multiple]
    if bad:
        name, value = bad[0]
        raise RequestError(
            f"stage I {name} {value} cannot be processed: every stage's U-Net needs stage I sizes that are "
            f"multiples of {multiple}. Nearest valid {name}s: {', '.join(map(str, nearest(value, multiple)))}"
        )


def nearest(value: int, multiple: int) -> list[int]:
    low = (value // multiple) * multiple
    return [v for v in (low, low + multiple) if v >= multiple]


def aspect_size(ratio: str, short_side: int, multiple: int = 8) -> tuple[int, int]:
    """'W:H' -> (height, width) with the short side fixed and the long side a multiple of ``multiple``."""
    try:
        w, h = (float(x) for x in ratio.split(":"))
        assert w > 0 and h > 0 and math.isfinite(w / h) and w / h > 0  # "inf:1" would overflow below
    except (ValueError, AssertionError):
        raise RequestError(f"aspect ratio must look like '16:9' (width:height), got {ratio!r}") from None
    long_side = max(multiple, round(short_side * max(w, h) / min(w, h) / multiple) * multiple)
    return (short_side, long_side) if w >= h else (long_side, short_side)
