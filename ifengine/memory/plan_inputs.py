"""Planner inputs from presets, checkpoint folders or a loaded cascade.

All three routes end in the same ``dict[name, nn.Module]`` (meta modules for presets and checkpoint
configs, the real modules for a loaded cascade) from which ``plan_inputs`` measures everything.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import damaged_folder
from ..models.config import UNetConfig, VAEConfig
from ..models.if_unet import IFUNet
from ..models.int8 import compute_dtype, largest_dequantized_bytes
from ..models.presets import text_preset, unet_preset, vae_preset
from ..models.t5_precision import t5_dtype
from ..models.vae import VAEDecoder, decode_dtype
from ..facts import UNET_OF
from ..models.x4_unet import X4UNet
from .workload import (
    PHASES,
    PhaseInfo,
    PlanInputs,
    ComponentInfo,
    Workload,
    buffer_bytes,
    component_info,
    decode_activation,
    forwards_per_run,
    text_activation_bytes,
    unet_step_activation,
)
from ..models.checkpoint import resolve
from .exec_order import unit_order

log = logging.getLogger(__name__)
DEFAULT_PRESETS = ("IF-I-XL", "IF-II-L", "x4")
DEFAULT_WORKLOAD = Workload()  # frozen: one shared default instance is safe
DECODE_TILES = (128, 96, 64, 48, 32)  # latent pixels; overlap is a quarter of the tile, as diffusers uses


def _meta(factory, *args):
    """``factory(*args)`` built on the meta device (args, not a closure: loops pass their current values)."""
    with torch.device("meta"):
        return factory(*args)


def _transformers_text(kind: str, kwargs: dict, dtype: torch.dtype) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    if kind == "t5":
        return _meta(lambda: T5EncoderModel(T5Config(**kwargs))).to(dtype)
    return _meta(lambda: CLIPTextModel(CLIPTextConfig(**kwargs))).to(dtype)


def _text_kwargs(preset: str, min_vocab: int) -> dict:
    config = text_preset(preset)
    return dataclasses.replace(config, vocab_size=max(config.vocab_size, min_vocab)).transformers_kwargs()


@functools.lru_cache(maxsize=8)
def preset_modules(
    names: tuple[str, ...], dtype: torch.dtype, min_vocab: int = 0, bf16: bool = True
) -> dict[str, nn.Module]:
    """Meta modules for presets like ("IF-I-XL", "IF-II-L", "x4"); T5-XXL comes with stage I.

    "tiny-I", "tiny-II", "tiny-x4" give the tiny test models with tiny encoders. ``min_vocab`` widens the
    text encoders' vocabularies (only needed when tiny encoders meet a real tokenizer). ``bf16``: whether
    the planned device has bfloat16, which decides T5's precision as the loader decides it (default: a
    GPU that has it, as every GPU the planner targets since Ampere does).
    """
    if len(names) not in (1, 2, 3):
        raise ValueError(f"give 1 to 3 presets (stage I[, II[, III]]), got {names}")
    tiny = names[0].startswith("tiny")
    t5 = _text_kwargs("tiny-t5" if tiny else "t5-v1_1-xxl", min_vocab)
    modules = {
        "t5": _transformers_text("t5", t5, t5_dtype(dtype, bf16)),
        "unet1": _meta(lambda: IFUNet(unet_preset(names[0]))).to(dtype),
    }
    if len(names) > 1:
        modules["unet2"] = _meta(lambda: IFUNet(unet_preset(names[1]))).to(dtype)
    if len(names) > 2:
        if names[2] not in ("x4", "x4-upscaler", "tiny-x4"):
            raise ValueError(f"stage III preset must be 'x4' (the SD x4 upscaler), got {names[2]!r}")
        vae = vae_preset("tiny-vae" if names[2] == "tiny-x4" else "x4-vae")
        clip = _text_kwargs("tiny-clip" if names[2] == "tiny-x4" else "clip-vit-h-text", min_vocab)
        modules["clip"] = _transformers_text("clip", clip, dtype)
        modules["x4_unet"] = _meta(
            lambda: X4UNet(unet_preset("tiny-x4" if names[2] == "tiny-x4" else "x4-upscaler"))
        ).to(dtype)
        modules["vae_decoder"] = _meta(lambda: VAEDecoder(vae)).to(decode_dtype(vae, dtype))
    return modules


def checkpoint_modules(
    stage1=None, stage2=None, stage3=None, *, dtype: torch.dtype, bf16: bool = True
) -> dict[str, nn.Module]:
    """Meta modules from checkpoint folders' config files (no weights are read); ``bf16`` as in
    ``preset_modules``."""
    from transformers import AutoConfig, CLIPTextModel, T5EncoderModel

    modules: dict[str, nn.Module] = {}
    for stage, source in ((1, stage1), (2, stage2), (3, stage3)):
        if source is None:
            continue
        ckpt = resolve(_configs_only(source), stage)
        config = ckpt.parsed(UNetConfig, "unet")
        modules[UNET_OF[stage]] = _meta(X4UNet if stage == 3 else IFUNet, config).to(dtype)
        if stage == 1 and ckpt.has("text_encoder"):
            with damaged_folder(ckpt.root / "text_encoder"):
                t5 = AutoConfig.from_pretrained(ckpt.root / "text_encoder")
            modules["t5"] = _meta(T5EncoderModel, t5).to(t5_dtype(dtype, bf16))
        if stage == 3:
            vae = ckpt.parsed(VAEConfig, "vae")
            with damaged_folder(ckpt.root / "text_encoder"):
                clip = AutoConfig.from_pretrained(ckpt.root / "text_encoder")
            modules["clip"] = _meta(CLIPTextModel, clip).to(dtype)
            modules["vae_decoder"] = _meta(VAEDecoder, vae).to(decode_dtype(vae, dtype))
    return modules


def _configs_only(source):
    """A local folder as is; a Hub id fetched without its weights (planning reads config files only)."""
    if Path(source).expanduser().is_dir():
        return source
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(str(source), allow_patterns=["model_index.json", "*/*.json"])
    except Exception as err:  # offline, gated, unknown id: all mean the same to a user
        raise ValueError(
            f"could not fetch the config files of {source!r} ({type(err).__name__}: {err}); pass a "
            "local checkpoint folder instead"
        ) from err


def cascade_modules(cascade) -> dict[str, nn.Module]:
    """The loaded modules of a Cascade, by planner name."""
    found = {
        "t5": getattr(cascade.text, "model", None),
        "unet1": getattr(cascade.stage1, "unet", None),
        "unet2": getattr(cascade.stage2, "unet", None),
    }
    if cascade.stage3 is not None:
        found.update(clip=cascade.stage3.text.model, x4_unet=cascade.stage3.unet, vae_decoder=cascade.stage3.vae)
    return {k: m for k, m in found.items() if isinstance(m, nn.Module)}


def _dtype(module: nn.Module) -> torch.dtype:
    return compute_dtype(module)


def _text_dims(module: nn.Module) -> tuple[int, int, int]:
    c = module.config
    if hasattr(c, "d_model"):
        return c.d_model, c.d_ff, c.num_heads
    return c.hidden_size, c.intermediate_size, c.num_attention_heads


def _unet_phase(modules, name: str, stage: int, workload: Workload) -> int:
    unet = modules[name]
    config = unet.config
    text = config.encoder_hid_dim or config.cross_attention_dim[0]
    kind = "x4" if stage == 3 else f"if{stage}"
    h, w = workload.size(min(stage, 2))
    act = unet_step_activation(kind, config, _dtype(unet), workload.batch, h, w, workload.cfg[stage - 1], text)
    # the step trace runs an unquantised twin: add the one-layer weight an int8 layer dequantises
    return act + largest_dequantized_bytes(unet)


def _text_phase(module: nn.Module, workload: Workload) -> int:
    hidden, ffn, heads = _text_dims(module)
    return text_activation_bytes(hidden, ffn, heads, workload.batch, _dtype(module).itemsize)


def _decode_options(vae: nn.Module, workload: Workload) -> tuple[tuple[int | None, int], ...]:
    h, w = workload.size(2)

    def measure(tile: int | None) -> int:
        return decode_activation(vae.config, _dtype(vae), workload.batch, h, w, tile, (tile or 0) // 4)

    tiles = [t for t in DECODE_TILES if t < max(h, w)]
    return ((None, measure(None)),) + tuple((t, measure(t)) for t in tiles)


class PlanMemo:
    """What one planning session measures only once, however many candidates it plans: each module's
    ComponentInfo, and each component's execution order (traced on meta, the slow part: seconds for
    T5-XXL), which an int8 twin shares with its native module. Keeps the modules it measured alive, so
    their ids stay theirs."""

    def __init__(self) -> None:
        self._infos: dict[tuple[str, int, int], tuple[nn.Module, ComponentInfo]] = {}
        self._orders: dict[str, list[str]] = {}

    def info(self, name: str, module: nn.Module, forwards: int) -> ComponentInfo:
        key = (name, id(module), forwards)
        if key not in self._infos:
            if name not in self._orders:
                self._orders[name] = unit_order(name, module) or []  # [] keeps the registration order
            self._infos[key] = (module, component_info(name, module, forwards, order=self._orders[name]))
        return self._infos[key][1]


def plan_inputs(
    modules: dict[str, nn.Module], workload: Workload = DEFAULT_WORKLOAD, memo: PlanMemo | None = None
) -> PlanInputs:
    """Measure every component and phase of ``modules`` for ``workload``; ``memo`` shares measurements
    between the calls of one planning session."""
    if "unet1" not in modules:
        raise ValueError("planning needs at least stage I (unet1)")
    memo = memo or PlanMemo()
    names = [n for _, phase in PHASES for n in phase if n in modules]  # in the order a call uses them
    comps = tuple(memo.info(n, modules[n], forwards_per_run(n, workload)) for n in names)
    phases = []
    for phase, names in PHASES:
        present = tuple(n for n in names if n in modules)
        if not present:
            continue
        stage = {"stage1": 1, "stage2": 2, "stage3": 3}.get(phase)
        if stage is not None and UNET_OF[stage] in modules:
            act = _unet_phase(modules, UNET_OF[stage], stage, workload)
            if phase == "stage3" and "clip" in modules:
                act = max(act, _text_phase(modules["clip"], workload))
        elif phase == "text":
            act = _text_phase(modules["t5"], workload)
        else:
            act = 0  # decode: taken from decode_options
        phases.append(PhaseInfo(phase, present, act, captured=stage is not None))
    decode = _decode_options(modules["vae_decoder"], workload) if "vae_decoder" in modules else ((None, 0),)
    dims = tuple(_unet_text_dim(modules.get(UNET_OF[s])) for s in (1, 2, 3))
    buffers = buffer_bytes(workload, dims, _dtype(modules["unet1"]).itemsize)
    return PlanInputs(comps, tuple(phases), decode, buffers, workload)


def _unet_text_dim(unet: nn.Module | None) -> int:
    if unet is None:
        return 0
    return unet.config.encoder_hid_dim or unet.config.cross_attention_dim[0]
