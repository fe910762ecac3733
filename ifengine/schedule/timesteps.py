"""Inference timestep selection: evenly spaced, explicit lists and IF's named lists."""

from __future__ import annotations

import numbers
from collections.abc import Iterable

from .named_lists import NAMED_LISTS
from ..facts import TRAIN_TIMESTEPS

SPACINGS = ("leading", "trailing", "linspace")
NAMED_TIMESTEP_LISTS: tuple[str, ...] = tuple(NAMED_LISTS)


def named_timesteps(name: str) -> tuple[int, ...]:
    """One of IF's hand-tuned timestep lists (fast27, smart27, ..., super100), descending."""
    try:
        return NAMED_LISTS[name]
    except (KeyError, TypeError):
        valid = ", ".join(NAMED_TIMESTEP_LISTS)
        raise ValueError(f"unknown named timestep list {name!r}; valid names: {valid}") from None


def _leading(num_steps: int, num_train: int, steps_offset: int) -> list[int]:
    ratio = num_train // num_steps
    return [k * ratio + steps_offset for k in reversed(range(num_steps))]


def _trailing(num_steps: int, num_train: int) -> list[int]:
    # The reference builds these with a float arange, whose increment is (start + step) - start;
    # reproducing that rounding keeps the half-way cases (e.g. 937.5) landing on the same side.
    delta = (num_train - num_train / num_steps) - num_train
    return [round(num_train + k * delta) - 1 for k in range(num_steps)]


def _linspace(num_steps: int, num_train: int) -> list[int]:
    if num_steps == 1:
        return [0]
    step = (num_train - 1) / (num_steps - 1)
    points = [k * step for k in range(num_steps - 1)] + [float(num_train - 1)]
    return [round(p) for p in reversed(points)]


def spaced_timesteps(
    num_inference_steps: int,
    num_train_timesteps: int = TRAIN_TIMESTEPS,
    spacing: str = "leading",
    steps_offset: int = 0,
) -> tuple[int, ...]:
    """Evenly spaced descending timesteps; steps_offset applies to "leading" only (as in diffusers)."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral):
        raise ValueError(f"num_inference_steps must be an int, got {num_inference_steps!r}")
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be in [1, {num_train_timesteps}], got {num_inference_steps}")
    n = int(num_inference_steps)
    if spacing == "leading":
        steps = _leading(n, num_train_timesteps, steps_offset)
    elif spacing == "trailing":
        steps = _trailing(n, num_train_timesteps)
    elif spacing == "linspace":
        steps = _linspace(n, num_train_timesteps)
    else:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; supported: {', '.join(SPACINGS)}")
    return validate_timesteps(steps, num_train_timesteps)


def _as_int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"timesteps must be integers, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return _as_int(value.item())  # numpy / torch scalars built on the host
    raise ValueError(f"timesteps must be integers, got {value!r}")


def validate_timesteps(timesteps: Iterable[object], num_train_timesteps: int = TRAIN_TIMESTEPS) -> tuple[int, ...]:
    """Check an explicit list: non-empty, integers in [0, num_train_timesteps), strictly descending."""
    if isinstance(timesteps, (str, bytes)):
        raise ValueError(f"timesteps must be a sequence of integers, got {timesteps!r}")
    steps = tuple(_as_int(t) for t in timesteps)
    if not steps:
        raise ValueError("timesteps must not be empty")
    bad = [t for t in steps if not 0 <= t < num_train_timesteps]
    if bad:
        raise ValueError(f"timesteps must lie in [0, {num_train_timesteps}); out of range: {bad[:5]}")
    for k in range(1, len(steps)):
        if steps[k] >= steps[k - 1]:
            raise ValueError(f"timesteps must be strictly descending; position {k} has {steps[k]} after {steps[k - 1]}")
    return steps


def resolve_timesteps(
    num_inference_steps: int | None,
    timesteps: Iterable[object] | str | None,
    num_train_timesteps: int,
    spacing: str,
    steps_offset: int,
) -> tuple[int, ...]:
    """Exactly one of a step count, an explicit list or a named list (a str) → validated timesteps."""
    if (num_inference_steps is None) == (timesteps is None):
        raise ValueError("pass exactly one of num_inference_steps or timesteps")
    if isinstance(timesteps, str):
        return validate_timesteps(named_timesteps(timesteps), num_train_timesteps)
    if timesteps is not None:
        return validate_timesteps(timesteps, num_train_timesteps)
    return spaced_timesteps(num_inference_steps, num_train_timesteps, spacing, steps_offset)
