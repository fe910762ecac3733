"""What each deployment loads, and the few model facts the HTTP front needs to validate requests.

Every deployment loads through the one loader (``open_cascade``), from any source (checkpoints, exported
graphs, engines, or a mix), and runs what ``ifengine generate`` runs: the GPU runtime on a CUDA replica.
A stage deployment keeps only its own parts: the text deployment holds T5, stage III's CLIP and the
safety checker; stage I and II replicas their U-Net; stage III replicas the x4 U-Net and the VAE (the CLIP
embeddings come with the request). ``--layout single`` holds the whole cascade. Edits run through the same deployments.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..pipeline.cascade import open_cascade
from ..pipeline.loader import checkpoints_of, defaults_of, placement
from ..pipeline.source import ModelSource
from ..runtime.options import RuntimeOptions
from ..stage.options import RunDefaults
from ..models.checkpoint import resolve
from ..models.config import UNetConfig
from .config import StageConfig
from .work import NO_CLIP, captured_sizes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """Enough about the loaded cascade to validate a request without holding a model."""

    stages: tuple[int, ...]  # loaded stages
    sample_size: int  # stage I's default height/width
    downsample: dict[int, int]  # stage -> the U-Net's total downsampling
    defaults: RunDefaults
    sample_sizes: dict[int, int] | None = None  # stage -> the U-Net's sample size (sizes the watermark)

    def watermark_size(self, last_stage: int) -> int | None:
        """As ``Cascade.watermark_size``: IF stages scale the logo by their sample size, stage III by the image."""
        return None if last_stage == 3 or not self.sample_sizes else self.sample_sizes.get(last_stage)


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
        sample_sizes={n: c.sample_size for n, c in configs.items()},
    )


def device_and_dtype(source: ModelSource) -> tuple[torch.device, torch.dtype]:
    return placement(source.device, source.dtype)


PARTS = ("text", "stage1", "stage2", "stage3")
_READS = {"text": (1, 3), "stage1": (1,), "stage2": (2,), "stage3": (3,)}  # the checkpoints a part loads


def runtime_options(cfg: StageConfig) -> RuntimeOptions:
    """The GPU runtime of a replica: planned for its largest (padded) batch, in the deployment's mode."""
    sizes = captured_sizes(cfg, graphs=True)
    return RuntimeOptions(max_batch=max(sizes or (cfg.max_batch_size,)), mode=cfg.runtime_mode)


def load_whole(source: ModelSource, cfg: StageConfig | None = None, safety: bool = False):
    """The cascade as ``ifengine generate`` loads it (GPU runtime included on a CUDA device)."""
    return open_cascade(source, safety=safety, **_runtime_keywords(source, cfg))


def _runtime_keywords(source: ModelSource, cfg: StageConfig | None) -> dict:
    # graphs and engines fix precision and memory themselves: open_cascade takes no runtime options for them
    return {} if cfg is None or source.uses_graphs else {"runtime": runtime_options(cfg)}


def part_source(source: ModelSource, part: str) -> ModelSource:
    """A checkpoint source narrowed to the checkpoints ``part`` reads (the demo's included); graphs and
    engines as they are (their loader opens every component; the part keeps its own)."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; the parts are {PARTS}")
    if source.uses_graphs:
        return source
    found = checkpoints_of(source)
    stages = {f"stage{n}": str(found[n]) if n in found and n in _READS[part] else None for n in (1, 2, 3)}
    return dataclasses.replace(source, demo_root=None, **stages)


def load_part(source: ModelSource, part: str, cfg: StageConfig | None = None, safety: bool = False) -> PartModels:
    """What one stage deployment holds, through the one loader, with the runtime ``generate`` would use."""
    held: dict = {}
    pipe = open_cascade(
        part_source(source, part),
        safety=safety and part == "text",
        text_encoder="auto" if part == "text" else None,
        select=lambda parts: _keep(parts, part, held),
        **_runtime_keywords(source, cfg),
    )
    log.info("loaded %s on %s (%s), runner %s", part, pipe.device, pipe.dtype, type(pipe.runner).__name__)
    if part == "text" and not safety:
        log.warning("the safety checker is off (ServeConfig.safety=False, --no-safety): images are not checked")
    return PartModels(pipe, held.get("clip"), pipe.safety)


@dataclass
class PartModels:
    """A stage deployment's models: the cascade holding only its part, and for the text part CLIP."""

    cascade: object
    clip: object = None  # stage III's CLIP encoder (the text part only)
    safety: object = None  # the checkpoints' safety checker (the text part only, when they ship one)


def _keep(parts, part: str, held: dict):
    """Drop every part the deployment does not serve, before the runtime plans its buffers."""
    drop = dict(stage1=None, stage2=None, stage3=None)
    if part == "text":
        held["clip"] = parts.stage3.text if parts.stage3 is not None else None
        return dataclasses.replace(parts, **drop)
    keep = getattr(parts, part)
    if keep is None:
        raise ValueError(f"the source has no {part}; serve it with the checkpoint or graphs that hold it")
    if part == "stage3":
        keep = dataclasses.replace(keep, text=NO_CLIP)  # the text deployment encodes the CLIP prompts
    return dataclasses.replace(parts, text=None, safety=None, **{**drop, part: keep})


def lora_names(folder: str | Path | None) -> list[str]:
    """The LoRA adapters a request may name: ``<name>.safetensors`` files in the configured folder."""
    if not folder:
        return []
    return sorted(p.stem for p in Path(folder).glob("*.safetensors") if p.is_file())
