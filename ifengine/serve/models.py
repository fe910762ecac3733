"""What each deployment loads, and the few model facts the HTTP front needs to validate requests.

A stage deployment loads only its own components (stage I's replicas never hold T5), through the same
loaders ``Cascade.from_pretrained`` uses; ``--layout single`` and the edits deployment load the whole
cascade exactly as ``ifengine generate`` does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..pipeline.cascade import Cascade, open_cascade
from ..pipeline.loader import checkpoints_of, defaults_of, placement
from ..pipeline.source import ModelSource
from ..stage.options import RunDefaults
from ..models.checkpoint import resolve
from ..models.config import UNetConfig
from ..stage import components

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """Enough about the loaded cascade to validate a request without holding a model."""

    stages: tuple[int, ...]  # loaded stages
    sample_size: int  # stage I's default height/width
    downsample: dict[int, int]  # stage -> the U-Net's total downsampling
    defaults: RunDefaults


def checkpoint_paths(source: ModelSource) -> dict[int, str]:
    return {n: str(p) for n, p in checkpoints_of(source).items()}


def model_info(source: ModelSource) -> ModelInfo:

    configs = {
        n: UNetConfig.from_dict(resolve(p, n, source.variant).config("unet"))
        for n, p in checkpoint_paths(source).items()
    }
    if source.artifacts:  # what no checkpoint gives comes from the exported graphs' manifests
        from ..backends.onnxruntime.load import graph_unet_configs  # onnxruntime: an optional extra

        configs = {**graph_unet_configs(Path(source.artifacts)), **configs}
    if 1 not in configs:
        raise ValueError("serving text to image needs a stage I checkpoint (--stage1)")
    defaults = defaults_of(source)
    return ModelInfo(
        stages=tuple(sorted(configs)),
        sample_size=configs[1].sample_size,
        downsample={n: c.downsample_factor for n, c in configs.items()},
        defaults=defaults,
    )


def device_and_dtype(source: ModelSource) -> tuple[torch.device, torch.dtype]:
    return placement(source.device, source.dtype)


def load_whole(source: ModelSource):
    """The cascade as ``ifengine generate`` loads it (GPU runtime included on a CUDA device)."""
    return open_cascade(source, safety=False)


def load_part(source: ModelSource, part: str):
    """A Cascade holding only ``part`` ("text", "stage1", "stage2" or "stage3")."""

    device, dtype = device_and_dtype(source)
    paths = checkpoint_paths(source)
    parts = {}
    if part == "text":
        ckpt = resolve(paths[1], 1, source.variant)
        parts["text"] = components.load_t5(ckpt, dtype, device, source.variant)
    elif part in ("stage1", "stage2"):
        n = int(part[-1])
        parts[part] = components.load_if_stage(resolve(paths[n], n, source.variant), dtype, device, source.variant)
    elif part == "stage3":
        parts["stage3"] = components.load_x4_stage(resolve(paths[3], 3, source.variant), dtype, device, source.variant)
    else:
        raise ValueError(f"unknown part {part!r}")
    pipe = Cascade(
        text=parts.get("text"),
        stage1=parts.get("stage1"),
        stage2=parts.get("stage2"),
        stage3=parts.get("stage3"),
        device=device,
        dtype=dtype,
    )
    log.info("loaded %s on %s (%s)", part, device, dtype)
    return pipe
