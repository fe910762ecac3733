"""Load each stage's components from a resolved checkpoint into our modules, and what a loader hands on."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..models.checkpoint import Checkpoint, CheckpointError
from ..models.config import UNetConfig, VAEConfig
from ..models.t5_precision import device_has_bf16, t5_dtype
from ..models.if_unet import IFUNet
from ..models.vae import DECODER_PREFIXES, VAEDecoder, decode_dtype
from ..errors import damaged_folder
from ..models.weights import TRANSFORMERS_STEM, WeightsError, check_readable, load_component, weight_files
from ..models.x4_unet import X4UNet
from ..schedule.ddim import DDIMConfig
from ..schedule.ddpm import DDPMConfig
from ..text.encoder import PromptEncoder
from .options import RunDefaults
from .stages import IFStage, X4Stage
from ..facts import X4_MAX_NOISE_LEVEL

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CascadeParts:
    """Everything a loader (checkpoints, graphs, engines, or a mix) produces and the ``Cascade`` facade
    takes: the loaded parts, where they run, and the facts image metadata and defaults need."""

    text: PromptEncoder | None
    stage1: IFStage | None
    stage2: IFStage | None
    stage3: X4Stage | None
    device: torch.device
    dtype: torch.dtype
    safety: Any = None  # the safety checker, when the checkpoints ship one and it was asked for
    defaults: RunDefaults = RunDefaults()
    sources: Mapping[int, str] = field(default_factory=dict)  # stage -> checkpoint name, for image metadata


def load_unet(ckpt: Checkpoint, cls, dtype: torch.dtype, device, variant: str | None):
    config = ckpt.parsed(UNetConfig, "unet")
    _check_unet_kind(ckpt, config)
    unet = load_component(lambda: cls(config), ckpt.root / "unet", dtype, variant)
    return unet.to(device)


def _check_unet_kind(ckpt: Checkpoint, config: UNetConfig) -> None:
    expected = {1: 3, 2: 6, 3: 7}[ckpt.stage]
    if config.in_channels != expected:
        raise CheckpointError(
            f"{ckpt.root}/unet takes {config.in_channels} input channels, but a stage "
            f"{ckpt.stage} U-Net takes {expected}: is this the right checkpoint for the stage?"
        )


def _scheduler(ckpt: Checkpoint, name: str, cls):
    return ckpt.parsed(cls, name, "scheduler_config.json")


def load_if_stage(ckpt: Checkpoint, dtype: torch.dtype, device, variant: str | None) -> IFStage:
    unet = load_unet(ckpt, IFUNet, dtype, device, variant)
    noising = _scheduler(ckpt, "image_noising_scheduler", DDPMConfig) if ckpt.stage == 2 else None
    return IFStage(unet=unet, scheduler=_scheduler(ckpt, "scheduler", DDPMConfig), noising=noising)


def load_x4_stage(ckpt: Checkpoint, dtype: torch.dtype, device, variant: str | None) -> X4Stage:
    unet = load_unet(ckpt, X4UNet, dtype, device, variant)
    vae_config = ckpt.parsed(VAEConfig, "vae")
    keep = lambda key: key.startswith(DECODER_PREFIXES)  # noqa: E731 - the cascade never encodes
    # the x4 VAE overflows in fp16 (force_upcast): decode_dtype keeps it in fp32 then
    vae = load_component(
        lambda: VAEDecoder(vae_config), ckpt.root / "vae", decode_dtype(vae_config, dtype), variant, keep=keep
    )
    text = load_clip(ckpt, dtype, device, variant)
    index = json.loads((ckpt.root / "model_index.json").read_text())
    return X4Stage(
        unet=unet,
        vae=vae.to(device),
        text=text,
        scheduler=_scheduler(ckpt, "scheduler", DDIMConfig),
        low_res=_scheduler(ckpt, "low_res_scheduler", DDPMConfig),
        max_noise_level=int(index.get("max_noise_level", X4_MAX_NOISE_LEVEL)),
    )


def _pretrained(cls, folder, dtype, variant):
    """transformers loading, falling back to the default weights when the variant is absent."""
    for path in _weight_files(folder, variant):
        check_readable(path)  # a truncated file names itself, not transformers' traceback
    with damaged_folder(folder):
        return _from_pretrained(cls, folder, dtype, variant)


def _weight_files(folder, variant):
    try:
        return weight_files(folder, TRANSFORMERS_STEM, variant)
    except WeightsError:
        return []  # not safetensors, or sharded differently: transformers says what is missing


def _from_pretrained(cls, folder, dtype, variant):
    try:
        return cls.from_pretrained(folder, dtype=dtype, variant=variant)
    except (OSError, ValueError):
        if variant is None:
            raise
        log.info("no %s variant in %s; loading the default weights", variant, folder)
        return cls.from_pretrained(folder, dtype=dtype)


def load_t5(
    ckpt: Checkpoint,
    dtype: torch.dtype,
    device: torch.device,
    variant: str | None,
    text_dtype: torch.dtype | None = None,
    bf16: bool | None = None,
) -> PromptEncoder:
    """T5 in ``text_dtype``, else in what the T5 rule picks for ``dtype`` (``bf16``: whether the device
    has bfloat16; None asks ``device``)."""
    from transformers import AutoTokenizer, T5EncoderModel

    if not ckpt.has("text_encoder") or not ckpt.has("tokenizer"):
        raise CheckpointError(f"{ckpt.root} ships no T5 text_encoder/tokenizer; stage I checkpoints do")
    run_dtype = text_dtype or t5_dtype(dtype, device_has_bf16(device) if bf16 is None else bf16)
    model = _pretrained(T5EncoderModel, ckpt.root / "text_encoder", run_dtype, variant).to(device).eval()
    with damaged_folder(ckpt.root / "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(ckpt.root / "tokenizer")
    return PromptEncoder(tokenizer, model, out_dtype=dtype, use_mask=True)


def load_clip(ckpt: Checkpoint, dtype: torch.dtype, device, variant: str | None) -> PromptEncoder:
    from transformers import CLIPTextModel, CLIPTokenizer

    model = _pretrained(CLIPTextModel, ckpt.root / "text_encoder", dtype, variant).to(device).eval()
    with damaged_folder(ckpt.root / "tokenizer"):
        tokenizer = CLIPTokenizer.from_pretrained(ckpt.root / "tokenizer")
    use_mask = bool(getattr(model.config, "use_attention_mask", False))
    return PromptEncoder(tokenizer, model, out_dtype=dtype, use_mask=use_mask, max_length=tokenizer.model_max_length)
