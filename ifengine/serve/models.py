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

from ..stage.options import RunDefaults, run_defaults
from .config import ModelSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """Enough about the loaded cascade to validate a request without holding a model."""

    stages: tuple[int, ...]  # loaded stages
    sample_size: int  # stage I's default height/width
    downsample: dict[int, int]  # stage -> the U-Net's total downsampling
    defaults: RunDefaults


def checkpoint_paths(source: ModelSource) -> dict[int, str]:
    if source.is_demo:
        from ..demo import demo_checkpoints

        paths = demo_checkpoints(Path(source.demo_root) if source.demo_root else None)
        return {1: str(paths["stage1"]), 2: str(paths["stage2"]), 3: str(paths["stage3"])}
    return {n: s for n, s in ((1, source.stage1), (2, source.stage2), (3, source.stage3)) if s}


def model_info(source: ModelSource) -> ModelInfo:
    from ..models.checkpoint import read_run_defaults, resolve
    from ..models.config import UNetConfig

    configs = {
        n: UNetConfig.from_dict(resolve(p, n, source.variant).config("unet"))
        for n, p in checkpoint_paths(source).items()
    }
    recorded = {}
    if source.artifacts:  # what no checkpoint gives comes from the exported graphs' manifests
        from ..backends.onnxruntime.load import graph_run_defaults, graph_unet_configs

        configs = {**graph_unet_configs(Path(source.artifacts)), **configs}
        recorded = graph_run_defaults(Path(source.artifacts))
    if 1 not in configs:
        raise ValueError("serving text to image needs a stage I checkpoint (--stage1)")
    # what the checkpoints (the demo's too) or their graphs record, as the loaded cascade applies them
    recorded |= {n: read_run_defaults(resolve(p, n, source.variant).root) for n, p in checkpoint_paths(source).items()}
    defaults = run_defaults(recorded)
    return ModelInfo(
        stages=tuple(sorted(configs)),
        sample_size=configs[1].sample_size,
        downsample={n: c.downsample_factor for n, c in configs.items()},
        defaults=defaults,
    )


def device_and_dtype(source: ModelSource) -> tuple[torch.device, torch.dtype]:
    device = torch.device(source.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, source.dtype or ("float16" if device.type == "cuda" else "float32"))
    return device, dtype


def load_whole(source: ModelSource):
    """The cascade as ``ifengine generate`` loads it (GPU runtime included on a CUDA device)."""
    from ..demo import demo_cascade
    from ..pipeline.cascade import Cascade

    device, dtype = device_and_dtype(source)
    if source.uses_graphs:
        from ..commands.backend_flags import load_graphs

        return load_graphs(
            engines=source.engines,
            artifacts=source.artifacts,
            providers=source.providers,
            stages=(source.stage1, source.stage2, source.stage3),
            variant=source.variant,
            device=str(device),
            dtype=dtype if source.dtype else None,  # graphs: the exported precision unless asked
        )
    if source.is_demo:
        return demo_cascade(device=device, dtype=dtype, root=Path(source.demo_root) if source.demo_root else None)
    return Cascade.from_pretrained(
        source.stage1, source.stage2, source.stage3, device=device, dtype=dtype, variant=source.variant, safety=False
    )


def load_part(source: ModelSource, part: str):
    """A Cascade holding only ``part`` ("text", "stage1", "stage2" or "stage3")."""
    from ..models.checkpoint import resolve
    from ..stage import components
    from ..pipeline.cascade import Cascade

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
