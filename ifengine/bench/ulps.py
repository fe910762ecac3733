"""Distance between floating-point tensors in units in the last place (ulps).

An absolute tolerance means different things at different magnitudes: in float16 one ulp is 2**-10
at 1.0 and 2**-9 at 2.0, so "max abs <= 1e-3" is stricter than one ulp for |x| >= 2 and looser than
many ulps near zero. Counting representable values between two results has one meaning everywhere:
0 is bit-identical (except +0 / -0, which are 0 apart here), 1 is adjacent values.
"""

from __future__ import annotations

import torch

_INTS = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


def _ordered(x: torch.Tensor) -> torch.Tensor:
    """The float bits as integers that increase with the value (negative floats are sign-magnitude)."""
    bits = x.contiguous().view(_INTS[x.dtype]).to(torch.int64)
    width = x.element_size() * 8
    sign = 1 << (width - 1)
    negative = bits < 0  # the sign bit set (signed view)
    magnitude = torch.where(negative, bits + sign, bits)  # the bits below the sign bit
    return torch.where(negative, -magnitude, magnitude)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise count of representable values from ``a`` to ``b`` (same float dtype and shape)."""
    if a.dtype != b.dtype or a.dtype not in _INTS:
        raise ValueError(f"ulp_distance needs two tensors of one float dtype ({list(_INTS)}), got {a.dtype}, {b.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"ulp_distance needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if torch.isnan(a).any() or torch.isnan(b).any():
        raise ValueError("ulp_distance: NaN has no place on the number line; check finiteness first")
    return (_ordered(a.detach().cpu()) - _ordered(b.detach().cpu())).abs()


def max_ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    return int(ulp_distance(a, b).max().item()) if a.numel() else 0
