"""The cascade on ONNX Runtime: exported graphs behind the torch backend's own stage runners.

``load_onnx_cascade`` builds a ``Cascade`` whose U-Nets, VAE decoder and text encoders are ORT-backed
callables with the torch modules' signatures (``onnx_parts.py``), so the same request validation, noise
drawing, schedules and stage loops run; only the networks execute in ONNX Runtime. Where a stage's step
graph was exported, each guided step is one ORT call (``IFStage.step_fn``/``X4Stage.step_fn``); steps
without guidance, or with an inpainting mask or style mixer, use the bare U-Net graph and the torch step.
Artifacts of one stage must come from one checkpoint (their manifests' ``checkpoint_sha256`` agree).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from collections.abc import Mapping, Sequence

import torch

from ...export.manifest import MANIFEST_NAME, ArtifactError
from ...export.precision import supports
from ...models.config import UNetConfig, VAEConfig
from ...pipeline.stages import IFStage, X4Stage
from ...schedule.ddim import DDIMConfig
from ...schedule.ddpm import DDPMConfig
from .parts import OrtIFStep, OrtPromptEncoder, OrtTextModel, OrtUNet, OrtVAE, OrtX4Step, UNetStub
from .session import CPU, OrtGraph, binding_device

log = logging.getLogger(__name__)
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.float32}
STAGE_COMPONENTS = {1: ("t5", "unet1", "step1"), 2: ("unet2", "step2"), 3: ("clip", "x4_unet", "vae_decoder", "step3")}


def load_onnx_cascade(
    cls,
    artifacts: Path,
    providers: Sequence[Any] | None = None,
    precision: str | Mapping[str, str] = "fp32",
    use_step_graphs: bool = True,
    verify: str = "size",
):
    """A ``cls`` (Cascade) running the graphs under ``artifacts`` on ``providers`` (default: CPU).

    ``precision`` picks the artifacts: one name for all, or a dict per component with an optional
    "default" (e.g. {"default": "fp16", "t5": "int8"}); "int8" means fp32 for the CLIP text encoder and
    the VAE decoder, which have no int8 graphs. ``verify`` "hash" re-hashes every file first.
    """
    artifacts, providers = Path(artifacts), list(providers or [CPU])
    if not artifacts.is_dir():
        raise ArtifactError(f"{artifacts} is not a folder of exported graphs: run `ifengine export --out {artifacts}`")
    choose = _chooser(precision)
    paths = {c: artifacts / c / choose(c) / MANIFEST_NAME for comps in STAGE_COMPONENTS.values() for c in comps}
    graphs = {c: OrtGraph(p, providers, verify) for c, p in paths.items() if p.is_file()}
    if not graphs:
        raise ArtifactError(f"no exported graphs for precision {precision!r} under {artifacts}: run `ifengine export`")
    _check_sources(graphs)
    dtype = _DTYPES[choose("unet1")]
    steps = {c: g for c, g in graphs.items() if c.startswith("step")} if use_step_graphs else {}
    stages = {n: _if_stage(n, graphs, steps) for n in (1, 2)} | {3: _x4_stage(graphs, steps, dtype)}
    text = _t5(graphs, dtype) if stages[1] or stages[2] else None
    log.info("ONNX Runtime cascade from %s: %s on %s", artifacts, ", ".join(sorted(graphs)), providers)
    return cls(
        text=text,
        stage1=stages[1],
        stage2=stages[2],
        stage3=stages[3],
        device=binding_device(providers),
        dtype=dtype,
        safety=None,
    )


def _chooser(precision: str | Mapping[str, str]):
    """component -> precision; int8 falls back to fp32 where no int8 graph exists (CLIP, VAE)."""
    table = {"default": precision} if isinstance(precision, str) else dict(precision)

    def choose(component: str) -> str:
        chosen = table.get(component, table.get("default", "fp32"))
        return chosen if supports(component, chosen) else "fp32"

    return choose


def _check_sources(graphs: Mapping[str, OrtGraph]) -> None:
    """All artifacts of a stage were exported from the same checkpoint."""
    for stage, comps in STAGE_COMPONENTS.items():
        seen = {c: graphs[c].manifest["checkpoint_sha256"] for c in comps if c in graphs}
        if len(set(seen.values())) > 1:
            listing = ", ".join(f"{c} from {graphs[c].manifest.get('source', '?')} ({h[:12]})" for c, h in seen.items())
            raise ArtifactError(
                f"stage {stage} artifacts come from different checkpoints: {listing}. Export them "
                f"again from one checkpoint (ifengine export --stage{stage} ...)"
            )


def _stage_config(graphs: Mapping[str, OrtGraph], *names: str) -> dict[str, Any] | None:
    return next((graphs[n].config for n in names if n in graphs), None)


def _if_stage(n: int, graphs: Mapping[str, OrtGraph], steps: Mapping[str, OrtGraph]) -> IFStage | None:
    config = _stage_config(graphs, f"unet{n}", f"step{n}")
    if config is None:
        return None
    unet_config = UNetConfig.from_dict(config["unet"])
    unet = OrtUNet(graphs[f"unet{n}"], unet_config) if f"unet{n}" in graphs else UNetStub(unet_config, n)
    noising = DDPMConfig.from_dict(config["noising"]) if "noising" in config else None
    step = OrtIFStep(steps[f"step{n}"], n) if f"step{n}" in steps else None
    return IFStage(unet=unet, scheduler=DDPMConfig.from_dict(config["scheduler"]), noising=noising, step_fn=step)


def _x4_stage(graphs: Mapping[str, OrtGraph], steps: Mapping[str, OrtGraph], dtype: torch.dtype) -> X4Stage | None:
    config = _stage_config(graphs, "x4_unet", "step3")
    if config is None:
        return None
    missing = [c for c in ("clip", "vae_decoder") if c not in graphs]
    if missing:
        raise ArtifactError(f"stage III needs {' and '.join(missing)} exported too (ifengine export --components ...)")
    unet_config = UNetConfig.from_dict(config["unet"])
    unet = OrtUNet(graphs["x4_unet"], unet_config) if "x4_unet" in graphs else UNetStub(unet_config, 3)
    clip = graphs["clip"]
    text = OrtPromptEncoder.from_graph(
        OrtTextModel(clip),
        clip.manifest_path.parent / clip.manifest["assets"]["tokenizer"],
        "clip",
        dtype,
        clip.config["use_mask"],
    )
    vae = OrtVAE(graphs["vae_decoder"], VAEConfig.from_dict(graphs["vae_decoder"].config["vae"]))
    return X4Stage(
        unet=unet,
        vae=vae,
        text=text,
        scheduler=DDIMConfig.from_dict(config["scheduler"]),
        low_res=DDPMConfig.from_dict(config["low_res"]),
        max_noise_level=config["max_noise_level"],
        step_fn=OrtX4Step(steps["step3"]) if "step3" in steps else None,
    )


def _t5(graphs: Mapping[str, OrtGraph], dtype: torch.dtype) -> OrtPromptEncoder:
    if "t5" not in graphs:
        raise ArtifactError("stages I and II need the T5 text encoder exported too (ifengine export --components t5)")
    t5 = graphs["t5"]
    tokenizer = t5.manifest_path.parent / t5.manifest["assets"]["tokenizer"]
    return OrtPromptEncoder.from_graph(OrtTextModel(t5), tokenizer, "t5", dtype, use_mask=True)
