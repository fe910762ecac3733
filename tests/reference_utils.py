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


def diffusers_chain(pipes, embeds, *, steps, guidance, noise_level, generator, last=3, per_stage=({}, {}, {})):
    """diffusers' IF chain as the model card runs it, one generator throughout: stage I's pipeline, stage
    II's on its output, the x4 upscaler on stage II's. ``embeds``: T5's (prompt, negative) for stages I-II;
    ``per_stage``: each call's own keywords (sizes, strengths, stage III's prompts), which win."""
    (pe, ne), outs = embeds, []
    for stage, (pipe, own) in enumerate(zip(pipes[:last], per_stage, strict=False), start=1):
        settings = dict(num_inference_steps=steps[stage - 1], guidance_scale=guidance[stage - 1])
        if stage < 3:
            settings.update(prompt_embeds=pe, negative_prompt_embeds=ne)
        if stage > 1:
            settings.update(image=outs[-1], noise_level=noise_level[stage - 2])
        outs.append(pipe(**{**settings, **own}, generator=generator, output_type="pt").images)
    return outs
