"""Valid random inputs for a component's graph at given dims: for tracing, proofs and tests.

Each input gets values of the kind the cascade feeds it (token ids inside the vocabulary, a padded
attention mask, timesteps and noise levels in their ranges, a real schedule table for step graphs), so
a traced or checked graph runs the code paths a real run takes.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

import torch

from ..schedule import ddim_tables, ddpm_tables
from ..schedule.ddim import DDIMConfig
from ..schedule.ddpm import DDPMConfig
from .spec import ComponentSpec, TensorSpec

from ..dtypes import torch_dtype  # noqa: F401 (re-exported)
from ..facts import TRAIN_TIMESTEPS
from .step_graphs import pack_ddim, pack_ddpm


def random_inputs(
    spec: ComponentSpec, dims: Mapping[str, int], config: Mapping[str, Any], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """One tensor per input of a concrete spec (no "model" dtypes left), on the CPU."""
    dims = spec.complete(dims)
    spec.check_dims(dims)
    return {t.name: _value(t, spec.shape(t, dims), dims, config, generator) for t in spec.inputs}


def _value(t: TensorSpec, shape: tuple[int, ...], dims, config, gen) -> torch.Tensor:
    dtype = torch_dtype(t.dtype)
    if t.name == "input_ids":
        return torch.randint(0, config["text_encoder"]["vocab_size"], shape, generator=gen)
    if t.name == "attention_mask":
        mask = torch.ones(shape, dtype=torch.int64)
        mask[0, max(1, shape[1] // 3) :] = 0  # one padded prompt, so the masking path is exercised
        return mask
    if t.name == "schedule":
        return _schedule(config, dims["steps"])
    if t.name == "step":
        return torch.randint(0, dims["steps"], shape, generator=gen)
    if t.name == "guidance":
        return torch.full(shape, 7.0, dtype=dtype)
    if t.name == "timestep":
        return torch.randint(0, TRAIN_TIMESTEPS, shape, generator=gen).to(dtype)
    if t.name in ("class_labels", "noise_level"):
        top = config.get("max_noise_level", TRAIN_TIMESTEPS)
        return torch.randint(0, top, shape, generator=gen).to(dtype)
    return torch.randn(shape, generator=gen).to(dtype)


def _schedule(config: Mapping[str, Any], steps: int) -> torch.Tensor:

    raw = config["scheduler"]
    if "variance_type" in raw:
        return pack_ddpm(ddpm_tables(DDPMConfig.from_dict(raw), num_inference_steps=steps))
    return pack_ddim(ddim_tables(DDIMConfig.from_dict(raw), steps))
