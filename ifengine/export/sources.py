"""What each exportable component is made of: checkpoint files, config, spec, and a loader.

``plan_sources`` turns the given checkpoints into one ``ComponentSource`` per component to export. The
loader builds the component's export wrapper (``graphs.py``/``step_graphs.py``) in a requested dtype,
through the same meta-device + memory-mapped loading the torch backend uses, so an fp16 export never
holds an fp32 copy of the weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..models.checkpoint import Checkpoint, CheckpointError
from ..models.config import UNetConfig, VAEConfig
from ..models.weights import DIFFUSERS_STEM, TRANSFORMERS_STEM, weight_files
from ..schedule.ddim import DDIMConfig
from ..schedule.ddpm import DDPMConfig
from ..facts import ALL_COMPONENTS, NETWORKS, STAGE_OF, STEP_GRAPHS, UNET_OF  # noqa: F401 (re-exported)
from .sizes import cascade_sizes
from .spec import ComponentSpec, clip_spec, if_unet_spec, t5_spec, vae_decoder_spec, x4_unet_spec
from .step_spec import if_step_spec, x4_step_spec
from ..facts import TEXT_TOKENS, X4_MAX_NOISE_LEVEL
from .graphs import TextEncoderGraph
from ..models.if_unet import IFUNet
from ..models.x4_unet import X4UNet
from ..stage.components import load_unet
from .graphs import UNetGraph
from .step_graphs import IFStepGraph, X4StepGraph
from ..models.vae import DECODER_PREFIXES, VAEDecoder
from ..models.weights import load_component
from .graphs import VAEDecoderGraph

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ComponentSource:
    name: str
    stage: int
    checkpoint: Checkpoint
    spec: ComponentSpec  # dtype "model" where the precision decides
    config: dict[str, Any]  # JSON-able; everything the runtime needs besides the graph
    files: tuple[Path, ...]  # the files the graph and its config are made from (hashed)
    load: Callable[[torch.dtype], nn.Module]  # the export wrapper with weights in that dtype
    assets: Mapping[str, Path] = field(default_factory=dict)  # folders copied next to the graph


def plan_sources(
    ckpts: Mapping[int, Checkpoint], names: list[str] | None = None, variant: str | None = None
) -> list[ComponentSource]:
    """One source per component in ``names`` (default: every component the checkpoints provide).

    ``variant`` (e.g. "fp16") picks the checkpoint's variant weight files where they exist."""
    unknown = sorted(set(names or ()) - set(ALL_COMPONENTS))
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; choose from {', '.join(ALL_COMPONENTS)}")
    stage_parts = _stage_parts(ckpts, variant)
    wanted = list(names) if names else [n for n in ALL_COMPONENTS if _available(n, ckpts)]
    sources = []
    for name in wanted:
        if not _available(name, ckpts):
            raise CheckpointError(
                f"component {name!r} needs a stage {STAGE_OF[name]} checkpoint"
                + (" with text_encoder/" if name == "t5" else "")
                + "; pass it with --stage"
                f"{STAGE_OF[name]}"
            )
        sources.append(_BUILDERS[name](ckpts[STAGE_OF[name]], stage_parts))
    return sources


def _available(name: str, ckpts: Mapping[int, Checkpoint]) -> bool:
    ckpt = ckpts.get(STAGE_OF[name])
    return ckpt is not None and (name != "t5" or ckpt.has("text_encoder"))


@dataclass(frozen=True)
class _StageParts:
    unets: dict[int, UNetConfig]
    sizes: dict[int, Any]
    variant: str | None


def _stage_parts(ckpts: Mapping[int, Checkpoint], variant: str | None) -> _StageParts:
    unets = {n: UNetConfig.from_dict(c.config("unet")) for n, c in ckpts.items()}
    sizes = cascade_sizes(
        {n: u.sample_size for n, u in unets.items()}, {n: u.downsample_factor for n, u in unets.items()}
    )
    return _StageParts(unets, sizes, variant)


def as_json(config) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _component_files(folder: Path, stem: str, variant: str | None) -> tuple[Path, ...]:
    return (folder / "config.json", *weight_files(folder, stem, variant))


def _folder_files(folder: Path) -> tuple[Path, ...]:
    return tuple(p for p in sorted(folder.rglob("*")) if p.is_file())


def _scheduler(ckpt: Checkpoint, name: str, cls):
    return cls.from_dict(ckpt.config(name, "scheduler_config.json"))


def _scheduler_files(ckpt: Checkpoint, *names: str) -> tuple[Path, ...]:
    return tuple(ckpt.root / n / "scheduler_config.json" for n in names)


def _t5(ckpt: Checkpoint, parts: _StageParts) -> ComponentSource:
    folder = ckpt.root / "text_encoder"
    raw = ckpt.config("text_encoder")
    config = {"text_encoder": raw, "use_mask": True, "max_length": TEXT_TOKENS}
    files = _component_files(folder, TRANSFORMERS_STEM, parts.variant) + _folder_files(ckpt.root / "tokenizer")
    return ComponentSource(
        "t5",
        ckpt.stage,
        ckpt,
        t5_spec(raw["d_model"]),
        config,
        files,
        lambda dtype: _text_encoder("t5", folder, dtype, parts.variant),
        {"tokenizer": ckpt.root / "tokenizer"},
    )


def _clip(ckpt: Checkpoint, parts: _StageParts) -> ComponentSource:
    folder = ckpt.root / "text_encoder"
    raw = ckpt.config("text_encoder")
    config = {"text_encoder": raw, "use_mask": bool(raw.get("use_attention_mask", False)), "max_length": TEXT_TOKENS}
    files = _component_files(folder, TRANSFORMERS_STEM, parts.variant) + _folder_files(ckpt.root / "tokenizer")
    return ComponentSource(
        "clip",
        3,
        ckpt,
        clip_spec(raw["hidden_size"]),
        config,
        files,
        lambda dtype: _text_encoder("clip", folder, dtype, parts.variant, config["use_mask"]),
        {"tokenizer": ckpt.root / "tokenizer"},
    )


def _text_encoder(kind: str, folder: Path, dtype: torch.dtype, variant: str | None, use_mask: bool = True) -> nn.Module:
    from transformers import CLIPTextModel, T5EncoderModel

    from .precision import keep_t5_ffn_output_fp32  # imported here: precision.py imports this module

    cls = T5EncoderModel if kind == "t5" else CLIPTextModel
    # the same files the source hash covered: the variant's when it exists, else the default weights
    has_variant = variant is not None and f".{variant}" in weight_files(folder, TRANSFORMERS_STEM, variant)[0].name
    model = cls.from_pretrained(folder, dtype=dtype, variant=variant if has_variant else None)
    model.set_attn_implementation("eager")  # one attention path that the TorchScript exporter traces
    if kind == "t5" and dtype == torch.float16:
        keep_t5_ffn_output_fp32(model)
    return TextEncoderGraph(model.eval().requires_grad_(False), use_mask=use_mask)


def _stage_config(ckpt: Checkpoint, parts: _StageParts) -> tuple[dict[str, Any], tuple[Path, ...]]:
    """The U-Net and scheduler configs a stage's runtime needs, and the files they come from."""
    unet = parts.unets[ckpt.stage]
    if ckpt.stage == 3:
        index = json.loads((ckpt.root / "model_index.json").read_text())
        config = {
            "unet": as_json(unet),
            "scheduler": as_json(_scheduler(ckpt, "scheduler", DDIMConfig)),
            "low_res": as_json(_scheduler(ckpt, "low_res_scheduler", DDPMConfig)),
            "max_noise_level": int(index.get("max_noise_level", X4_MAX_NOISE_LEVEL)),
        }
        extra = _scheduler_files(ckpt, "scheduler", "low_res_scheduler") + (ckpt.root / "model_index.json",)
    else:
        config = {"unet": as_json(unet), "scheduler": as_json(_scheduler(ckpt, "scheduler", DDPMConfig))}
        extra = _scheduler_files(ckpt, "scheduler")
        if ckpt.stage == 2:
            config["noising"] = as_json(_scheduler(ckpt, "image_noising_scheduler", DDPMConfig))
            extra += _scheduler_files(ckpt, "image_noising_scheduler")
    return config, _component_files(ckpt.root / "unet", DIFFUSERS_STEM, parts.variant) + extra


def _sizes(parts: _StageParts, stage: int):
    return parts.sizes[stage]


def _unet(ckpt: Checkpoint, parts: _StageParts) -> ComponentSource:
    config, files = _stage_config(ckpt, parts)
    unet = parts.unets[ckpt.stage]
    if ckpt.stage == 3:
        spec, name = x4_unet_spec(unet, sizes=_sizes(parts, 3)), "x4_unet"
    else:
        spec, name = if_unet_spec(unet, ckpt.stage, sizes=_sizes(parts, ckpt.stage)), UNET_OF[ckpt.stage]
    return ComponentSource(
        name, ckpt.stage, ckpt, spec, config, files, lambda dtype: _unet_graph(ckpt, dtype, parts.variant)
    )


def _load_unet(ckpt: Checkpoint, dtype: torch.dtype, variant: str | None) -> nn.Module:

    return load_unet(ckpt, X4UNet if ckpt.stage == 3 else IFUNet, dtype, "cpu", variant)


def _unet_graph(ckpt: Checkpoint, dtype: torch.dtype, variant: str | None) -> nn.Module:

    return UNetGraph(_load_unet(ckpt, dtype, variant)).eval()


def _step(ckpt: Checkpoint, parts: _StageParts) -> ComponentSource:

    config, files = _stage_config(ckpt, parts)
    unet, stage = parts.unets[ckpt.stage], ckpt.stage
    if stage == 3:
        scheduler = DDIMConfig.from_dict(config["scheduler"])
        spec = x4_step_spec(unet, scheduler, _sizes(parts, 3))
        load = lambda dtype: X4StepGraph(_load_unet(ckpt, dtype, parts.variant), scheduler).eval()  # noqa: E731
    else:
        scheduler = DDPMConfig.from_dict(config["scheduler"])
        spec = if_step_spec(unet, stage, scheduler, _sizes(parts, stage))
        load = lambda dtype: IFStepGraph(_load_unet(ckpt, dtype, parts.variant), scheduler, stage).eval()  # noqa: E731
    return ComponentSource(f"step{stage}", stage, ckpt, spec, config, files, load)


def _vae(ckpt: Checkpoint, parts: _StageParts) -> ComponentSource:
    vae = VAEConfig.from_dict(ckpt.config("vae"))
    files = _component_files(ckpt.root / "vae", DIFFUSERS_STEM, parts.variant)
    return ComponentSource(
        "vae_decoder",
        3,
        ckpt,
        vae_decoder_spec(vae, sizes=_sizes(parts, 3)),
        {"vae": as_json(vae)},
        files,
        lambda dtype: _vae_graph(ckpt, vae, dtype, parts.variant),
    )


def _vae_graph(ckpt: Checkpoint, vae: VAEConfig, dtype: torch.dtype, variant: str | None) -> nn.Module:

    keep = lambda key: key.startswith(DECODER_PREFIXES)  # noqa: E731
    module = load_component(lambda: VAEDecoder(vae), ckpt.root / "vae", dtype, variant, keep=keep)
    return VAEDecoderGraph(module).eval()


_BUILDERS = {
    "t5": _t5,
    "clip": _clip,
    "unet1": _unet,
    "unet2": _unet,
    "x4_unet": _unet,
    "vae_decoder": _vae,
    "step1": _step,
    "step2": _step,
    "step3": _step,
}
