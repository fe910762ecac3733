"""Helpers for the tests that check our modules against a diffusers reference built from the same config."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest
import torch


def config_kwargs(config) -> dict:
    """A config dataclass as diffusers constructor keyword arguments (diffusers takes lists, not tuples)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def perturb(model: torch.nn.Module, scale: float = 0.02) -> None:
    """Add noise to every parameter so zero or unit initialisations cannot hide a wiring mistake."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def assert_strict_load_refuses(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], drop: str, extra: Mapping[str, torch.Tensor]
) -> None:
    """A strict load of `state` without key `drop`, or with the `extra` entries, fails and says why."""
    with pytest.raises(RuntimeError, match="Missing"):
        model.load_state_dict({k: v for k, v in state.items() if k != drop})
    with pytest.raises(RuntimeError, match="Unexpected"):
        model.load_state_dict({**state, **extra})


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|, in float32."""
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
