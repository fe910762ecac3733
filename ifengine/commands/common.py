"""Argument helpers shared by the command modules."""

from __future__ import annotations

import argparse

from ..dtypes import FLOAT_DTYPES

DTYPES = FLOAT_DTYPES  # the --dtype choices


def memory_size(text: str) -> int:
    """'8GiB', '12GB', a bare number of bytes -> bytes, as an argparse type (one clear line when unreadable)."""
    from ..memory.sizes import SizeError, parse_size

    try:
        return parse_size(text)
    except SizeError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def csv_values(kind):
    """'100,50,75' -> (100, 50, 75), empty fields keep the stage default; one value applies to all."""

    def parse(text: str):
        try:
            values = tuple(kind(v) if v.strip() else None for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}") from None
        return values[0] if len(values) == 1 else values

    return parse
