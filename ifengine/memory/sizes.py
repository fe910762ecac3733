"""Memory sizes as users write them ("8GiB", "12GB", "8000MiB") and as the plan prints them."""

from __future__ import annotations

import re
from ..errors import IFEngineError

# Decimal units are what GPU vendors print on the box; binary units are what CUDA reports. Both are
# accepted, spelled out, because "8G" is ambiguous by 7 % and that is enough to break a tight plan.
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")
GiB = 2**30


class SizeError(IFEngineError, ValueError):
    """A memory size that cannot be read."""


def parse_size(text: str | int | float) -> int:
    """'8GiB' -> 8589934592; '12GB' -> 12000000000; '8000MiB'; a bare number is bytes."""
    if isinstance(text, bool):
        raise SizeError(f"not a memory size: {text!r}")
    if isinstance(text, (int, float)):
        return _positive(int(text), str(text))
    match = _PATTERN.match(str(text))
    if not match:
        raise SizeError(f"cannot read {text!r} as a memory size: write a number and a unit, e.g. 8GiB, 12GB or 8000MiB")
    number, unit = float(match.group(1)), match.group(2).lower()
    if unit not in _UNITS:
        raise SizeError(
            f"unknown size unit {match.group(2)!r} in {text!r}: use B, KB/MB/GB/TB (powers of "
            "1000) or KiB/MiB/GiB/TiB (powers of 1024), e.g. 8GiB"
        )
    return _positive(int(number * _UNITS[unit]), str(text))


def _positive(value: int, text: str) -> int:
    if value <= 0:
        raise SizeError(f"a memory size must be more than 0 bytes, got {text!r}")
    return value


def format_size(nbytes: int | float) -> str:
    """Bytes in the binary unit that keeps 1-3 digits before the point: '8.00 GiB', '512.0 MiB'."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
