"""Shared plumbing for the scheduler configs and their per-step tables."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import torch

log = logging.getLogger(__name__)

C = TypeVar("C")
T = TypeVar("T", bound="StepTables")

# Keys of diffusers scheduler configs that change the maths but that this package does not implement.
_UNSUPPORTED_IF_TRUTHY = ("rescale_betas_zero_snr",)


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Build a frozen config from a scheduler_config.json dict, ignoring bookkeeping keys."""
    for key in _UNSUPPORTED_IF_TRUTHY:
        if data.get(key):
            raise ValueError(f"{cls.__name__}: {key}={data[key]!r} is not supported")
    names = {f.name for f in dataclasses.fields(cls)}
    known = {k: v for k, v in data.items() if k in names}
    ignored = sorted(k for k in data if k not in names)
    if ignored:
        log.debug("%s.from_dict ignores keys: %s", cls.__name__, ", ".join(ignored))
    if known.get("trained_betas") is not None:
        known["trained_betas"] = tuple(float(b) for b in known["trained_betas"])
    return cls(**known)


def check_choice(owner: str, name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{owner}: unsupported {name}={value!r}; supported: {', '.join(allowed)}")


def check_positive(owner: str, name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{owner}: {name} must be > 0, got {value!r}")


def static_dim(x: torch.Tensor, dim: int) -> int:
    """A dimension as a Python int, also while tracing (which hands sizes out as 0-d tensors).

    Baking the traced size in is intended: exported graphs and CUDA graphs are built per shape.
    """
    size = x.shape[dim]
    if isinstance(size, int):
        return size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return int(size)


def step_index(i: torch.Tensor | int, device: torch.device) -> torch.Tensor:
    """The step index as a 1-element int64 tensor (a 0-d tensor stays on the graph, no host sync)."""
    if isinstance(i, torch.Tensor):
        return i.reshape(1).to(device=device, dtype=torch.long)
    return torch.tensor([int(i)], dtype=torch.long, device=device)


def gather(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Entry `index` of a per-step table, shaped (1,) so it broadcasts against any sample."""
    return table.index_select(0, index)


class StepTables:
    """What the samplers' frozen per-step table dataclasses share: one row per step, tensors as fields.

    A plain mixin, not a dataclass, so each sampler's tables keep exactly their own fields.
    """

    host_timesteps: tuple[int, ...]
    # Indexed by training timestep, not by step: moved along with the rest but never sliced.
    _WHOLE_SCHEDULE: ClassVar[tuple[str, ...]] = ("alphas_cumprod",)

    def __len__(self) -> int:
        return len(self.host_timesteps)

    def to(self: T, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> T:
        """Move every tensor; floating ones also take `dtype`, integer ones keep theirs.

        Keep the tables float32 even for half samples (x0 at t=999 overflows fp16).
        """
        changes = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                target = dtype if (dtype is not None and value.is_floating_point()) else value.dtype
                changes[f.name] = value.to(device=device, dtype=target)
        return dataclasses.replace(self, **changes)

    def from_step(self: T, start: int) -> T:
        """The tail of the run from step `start` (img2img keeps the last steps of a full schedule)."""
        count = len(self.host_timesteps)
        if not 0 <= start < count:
            raise ValueError(f"start must be in [0, {count}), got {start}")
        changes: dict[str, Any] = {"host_timesteps": self.host_timesteps[start:]}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and f.name not in self._WHOLE_SCHEDULE:
                changes[f.name] = value[start:]
        return dataclasses.replace(self, **changes)
