"""Calibration and held-out inputs for int8 graphs: prompt embeddings x timesteps across the schedule.

Each sample is one CFG call of a stage as the cascade makes it: embeddings of ["", prompt] from the
stage's own text encoder, a timestep taken evenly across the stage's default schedule, x_t made by
noising a smooth random image to that timestep (the noised low-res conditioning image too on stages II
and III). The same samples feed a bare U-Net graph or a step graph (``feeds``). Held-out samples use
other prompts and another seed, so the int8 fidelity figure is not measured on calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..schedule import add_noise, ddim_tables, ddpm_tables
from ..schedule.ddim import DDIMConfig
from ..schedule.ddpm import DDPMConfig
from .spec import ComponentSpec
from ..facts import DEFAULT_NOISE_LEVEL, DEFAULT_STEPS
from .step_graphs import pack_ddim, pack_ddpm

CALIBRATION_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a red cat sitting on a wooden table",
    "an oil painting of a lighthouse in a storm",
    "a bowl of ramen, studio lighting, top view",
    "a watercolor map of an imaginary island",
    "a neon sign that says OPEN in a rainy street",
    "portrait of an old fisherman, 85mm, shallow depth of field",
    "a cozy cabin in snowy mountains at dusk",
    "a low-poly 3d render of a fox",
    "macro photo of a dew drop on a leaf",
    "a busy market in Marrakech",
    "a robot reading a book in a library",
    "an isometric pixel art castle",
    "a sailboat on a calm lake",
    "a bouquet of sunflowers in a blue vase",
    "a sci-fi city skyline at night with flying cars",
)
HELD_OUT_PROMPTS = (
    "a corgi wearing sunglasses on a beach",
    "a steam locomotive crossing a stone bridge",
    "a chalk drawing of a dragon on a blackboard",
    "a plate of pancakes with blueberries",
    "an abandoned greenhouse overgrown with vines",
    "a jazz band playing in a smoky club",
    "a paper origami crane on a white background",
    "a desert canyon under the milky way",
)
NOISE_LEVELS = dict(zip((2, 3), DEFAULT_NOISE_LEVEL, strict=True))
Embedder = Callable[[list[str]], torch.Tensor]


@dataclass(frozen=True)
class CalibrationSettings:
    samples: int = 16
    seed: int = 0
    held_out_samples: int = 8


@dataclass(frozen=True)
class StageCall:
    """One CFG call of a stage: what both the bare U-Net and the step graph are fed from."""

    x_t: torch.Tensor  # (1, C, H, W)
    cond: torch.Tensor | None  # (1, 3, H, W): noised upscaled (II) / noised low-res (III) image
    noise: torch.Tensor
    step: int
    timestep: int
    schedule: torch.Tensor
    embeds: torch.Tensor  # (2, tokens, D): ["", prompt]
    level: int | None


def stage_calls(
    stage: int,
    config: Mapping[str, Any],
    embed: Embedder,
    prompts: tuple[str, ...],
    count: int,
    height: int,
    width: int,
    seed: int,
) -> list[StageCall]:

    gen = torch.Generator().manual_seed(seed)
    tables = _tables(stage, config)
    schedule = (pack_ddim if stage == 3 else pack_ddpm)(tables)
    uncond = embed([""])
    conds = embed([prompts[i % len(prompts)] for i in range(count)])
    channels = config["unet"]["out_channels"] if stage == 3 else 3
    calls = []
    for i in range(count):
        step = round(i * (len(tables) - 1) / max(count - 1, 1))
        t = tables.host_timesteps[step]
        x0 = _smooth_image((1, channels, height, width), gen)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = add_noise(tables.alphas_cumprod, x0, noise, t)
        calls.append(
            StageCall(
                x_t,
                _condition(stage, config, height, width, gen),
                torch.randn(x0.shape, generator=gen),
                step,
                t,
                schedule,
                torch.cat([uncond, conds[i : i + 1]]),
                NOISE_LEVELS.get(stage),
            )
        )
    return calls


def _tables(stage: int, config: Mapping[str, Any]):
    if stage == 3:
        return ddim_tables(DDIMConfig.from_dict(config["scheduler"]), DEFAULT_STEPS[2])
    return ddpm_tables(DDPMConfig.from_dict(config["scheduler"]), num_inference_steps=DEFAULT_STEPS[stage - 1])


def _smooth_image(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A random image with structure at several scales, in [-1, 1] like the cascade's images."""
    b, c, h, w = shape
    coarse = torch.randn((b, c, max(2, h // 8), max(2, w // 8)), generator=gen)
    fine = 0.3 * torch.randn(shape, generator=gen)
    return torch.tanh(1.5 * F.interpolate(coarse, (h, w), mode="bilinear", align_corners=True) + fine)


def _condition(stage: int, config, height: int, width: int, gen: torch.Generator) -> torch.Tensor | None:
    if stage == 1:
        return None
    if stage == 2:
        low = _smooth_image((1, 3, max(1, height // 4), max(1, width // 4)), gen)
        image = F.interpolate(low, (height, width), mode="bilinear", align_corners=True)
        alphas = DDPMConfig.from_dict(config["noising"]).alphas_cumprod()
    else:
        image = _smooth_image((1, 3, height, width), gen)
        alphas = DDPMConfig.from_dict(config["low_res"]).alphas_cumprod()
    return add_noise(alphas, image, torch.randn(image.shape, generator=gen), NOISE_LEVELS[stage])


def feeds(component: str, spec: ComponentSpec, calls: list[StageCall]) -> list[dict[str, np.ndarray]]:
    """Calls as input dicts for ``spec`` (a bare U-Net or a step graph, dtypes as the spec says)."""
    make = _step_feed if component.startswith("step") else _unet_feed
    dtypes = {t.name: t.dtype for t in spec.inputs}
    return [{k: _numpy(v, dtypes[k]) for k, v in make(component, c).items()} for c in calls]


def _unet_feed(component: str, c: StageCall) -> dict[str, torch.Tensor]:
    model_in = c.x_t if c.cond is None else torch.cat([c.x_t, c.cond], dim=1)
    feed = {
        "sample": torch.cat([model_in, model_in]),
        "timestep": torch.full((2,), float(c.timestep)),
        "encoder_hidden_states": c.embeds,
    }
    if c.level is not None:
        feed["class_labels"] = torch.full((2,), c.level)
    return feed


def _step_feed(component: str, c: StageCall) -> dict[str, torch.Tensor]:
    feed = {
        "sample": c.x_t,
        "step": torch.tensor([c.step]),
        "schedule": c.schedule,
        "text_embeds": c.embeds,
        "noise": c.noise,
        "guidance": torch.tensor([7.0]),
    }
    if component == "step2":
        feed |= {"upscaled": c.cond, "noise_level": torch.full((2,), float(c.level))}
    if component == "step3":
        del feed["noise"]
        feed |= {"image": torch.cat([c.cond, c.cond]), "noise_level": torch.full((2,), c.level)}
    return feed


def _numpy(t: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        raise ValueError("calibration feeds are for fp32 graphs")
    return t.to(torch.int64 if dtype == "int64" else getattr(torch, dtype)).numpy()
