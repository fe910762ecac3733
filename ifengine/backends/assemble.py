"""A cascade's parts from networks of any backend: the same request validation, noise, schedules and loops.

``assemble`` takes one ``Network`` per exported component (ONNX Runtime sessions, TensorRT engines, or a
mix) whose export manifests carry the stage configs and tokenizers, and wraps them in the torch parts'
call signatures (``backends.parts``). Where a stage's step network exists, each guided step is one call
of it; steps without guidance, or with an inpainting mask or style mixer, use the bare U-Net network
inside the torch step. Networks of one stage must come from one checkpoint (``checkpoint_sha256``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..export.manifest import ArtifactError
from ..facts import STAGE_COMPONENTS, UNET_OF
from ..models.config import UNetConfig, VAEConfig
from ..stage.components import CascadeParts
from ..stage.stages import IFStage, X4Stage
from ..schedule.ddim import DDIMConfig
from ..schedule.ddpm import DDPMConfig
from ..text.encoder import PromptEncoder
from .base import Network
from .parts import NetworkIFStep, NetworkPromptEncoder, NetworkTextModel, NetworkUNet, NetworkVAE, NetworkX4Step
from .parts import UNetStub
from ..stage import components as load

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TorchParts:
    """Torch parts loaded from checkpoints, for the components no network runs (``torch_parts``)."""

    text: PromptEncoder | None = None
    stages: Mapping[int, Any] = field(default_factory=dict)  # 1, 2: IFStage; 3: X4Stage


def assemble(
    networks: Mapping[str, Network],
    device: torch.device,
    dtype: torch.dtype,
    use_step_graphs: bool = True,
    parts: TorchParts = TorchParts(),
) -> CascadeParts:
    """The cascade's parts over ``networks`` (component -> network with ``config``/``manifest``); what no
    network runs comes from ``parts`` (parts of checkpoints), so backends mix per component."""
    check_sources(networks)
    steps = {c: g for c, g in networks.items() if c.startswith("step")} if use_step_graphs else {}
    stages = {n: _if_stage(n, networks, steps, parts.stages.get(n)) for n in (1, 2)}
    stages[3] = _x4_stage(networks, steps, dtype, parts.stages.get(3))
    text = _t5(networks, dtype, parts.text) if stages[1] or stages[2] else None
    return CascadeParts(text, stages[1], stages[2], stages[3], device, dtype)


def torch_parts(checkpoints: Mapping[int, Any], skip: set[str], dtype, device, variant=None, text_dtype=None):
    """Torch parts of the given checkpoints (``models.checkpoint.Checkpoint`` per stage) for the
    components not in ``skip`` (those run on networks). A stage whose U-Net has a network is not loaded."""

    stages: dict[int, Any] = {}
    for n in (1, 2):
        if n in checkpoints and UNET_OF[n] not in skip:
            stages[n] = load.load_if_stage(checkpoints[n], dtype, device, variant)
    if 3 in checkpoints and not {"clip", "x4_unet", "vae_decoder"} <= skip:
        stages[3] = load.load_x4_stage(checkpoints[3], dtype, device, variant)
    text = None
    source = next((checkpoints[n] for n in (1, 2) if n in checkpoints and checkpoints[n].has("text_encoder")), None)
    if "t5" not in skip and source is not None:
        text = load.load_t5(source, dtype, device, variant, text_dtype)
    return TorchParts(text=text, stages=stages)


def check_sources(networks: Mapping[str, Network]) -> None:
    """All networks of a stage were exported from the same checkpoint."""
    for stage, comps in STAGE_COMPONENTS.items():
        seen = {c: networks[c].manifest["checkpoint_sha256"] for c in comps if c in networks}
        if len(set(seen.values())) > 1:
            listing = ", ".join(
                f"{c} from {networks[c].manifest.get('source', '?')} ({h[:12]})" for c, h in seen.items()
            )
            raise ArtifactError(
                f"stage {stage} artifacts come from different checkpoints: {listing}. Export them "
                f"again from one checkpoint (ifengine export --stage{stage} ...)"
            )


def _stage_config(networks: Mapping[str, Network], *names: str) -> dict[str, Any] | None:
    return next((networks[n].config for n in names if n in networks), None)


def _if_stage(n: int, networks: Mapping[str, Network], steps: Mapping[str, Network], fallback) -> IFStage | None:
    config = _stage_config(networks, UNET_OF[n], f"step{n}")
    if config is None:
        return fallback
    unet_config = UNetConfig.from_dict(config["unet"])
    name = UNET_OF[n]
    if name in networks:
        unet = NetworkUNet(networks[name], unet_config)
    else:
        unet = fallback.unet if fallback is not None else UNetStub(unet_config, n)
    noising = DDPMConfig.from_dict(config["noising"]) if "noising" in config else None
    step = NetworkIFStep(steps[f"step{n}"], n) if f"step{n}" in steps else None
    return IFStage(unet=unet, scheduler=DDPMConfig.from_dict(config["scheduler"]), noising=noising, step_fn=step)


def _x4_stage(networks, steps, dtype: torch.dtype, fallback) -> X4Stage | None:
    config = _stage_config(networks, "x4_unet", "step3")
    if config is None:
        return _x4_parts(networks, dtype, fallback)
    missing = [c for c in ("clip", "vae_decoder") if c not in networks and fallback is None]
    if missing:
        raise ArtifactError(
            f"stage III needs {' and '.join(missing)} exported too (ifengine export --components ...), "
            "or its checkpoint (stage3=)"
        )
    unet_config = UNetConfig.from_dict(config["unet"])
    if "x4_unet" in networks:
        unet = NetworkUNet(networks["x4_unet"], unet_config)
    else:
        unet = fallback.unet if fallback is not None else UNetStub(unet_config, 3)
    if "clip" in networks:
        clip = networks["clip"]
        text = NetworkPromptEncoder.from_network(
            NetworkTextModel(clip), _tokenizer(clip), "clip", dtype, clip.config["use_mask"]
        )
    else:
        text = fallback.text
    if "vae_decoder" in networks:
        vae = NetworkVAE(networks["vae_decoder"], VAEConfig.from_dict(networks["vae_decoder"].config["vae"]))
    else:
        vae = fallback.vae
    return X4Stage(
        unet=unet,
        vae=vae,
        text=text,
        scheduler=DDIMConfig.from_dict(config["scheduler"]),
        low_res=DDPMConfig.from_dict(config["low_res"]),
        max_noise_level=config["max_noise_level"],
        step_fn=NetworkX4Step(steps["step3"]) if "step3" in steps else None,
    )


def _x4_parts(networks, dtype: torch.dtype, fallback: X4Stage | None) -> X4Stage | None:
    """A torch stage III whose VAE decoder and/or CLIP run on networks (no U-Net or step network)."""
    if fallback is None:
        return None
    parts = {}
    if "vae_decoder" in networks:
        vae = networks["vae_decoder"]
        parts["vae"] = NetworkVAE(vae, VAEConfig.from_dict(vae.config["vae"]))
    if "clip" in networks:
        clip = networks["clip"]
        parts["text"] = NetworkPromptEncoder.from_network(
            NetworkTextModel(clip), _tokenizer(clip), "clip", dtype, clip.config["use_mask"]
        )
    return replace(fallback, **parts) if parts else fallback


def _tokenizer(network: Network):
    return network.manifest_path.parent / network.manifest["assets"]["tokenizer"]


def _t5(networks: Mapping[str, Network], dtype: torch.dtype, fallback: PromptEncoder | None) -> PromptEncoder:
    if "t5" not in networks:
        if fallback is not None:
            return fallback
        raise ArtifactError(
            "stages I and II need the T5 text encoder exported too (ifengine export --components t5), "
            "or the stage I checkpoint (stage1=)"
        )
    t5 = networks["t5"]
    return NetworkPromptEncoder.from_network(NetworkTextModel(t5), _tokenizer(t5), "t5", dtype, use_mask=True)
