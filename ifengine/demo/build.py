"""The built-in tiny demo cascade: random, deterministic weights written in the real Hub layout.

It exists so that a newcomer's first command runs end to end in seconds with no download, through the
very loading code real checkpoints take. Its pictures are noise. It is written once into a cache folder
(atomically: built in a temporary folder, then renamed) and reused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..atomic import replacing_folder
from ..models.checkpoint import RUN_DEFAULTS_KEY
from ..models.config import UNetConfig, VAEConfig
from ..models.presets import text_preset, unet_preset, vae_preset
from ..facts import X4_MAX_NOISE_LEVEL
from ..schedule import presets as sched
from .tokenizers import clip_tokenizer_dir, t5_tokenizer_dir
from ..models.if_unet import IFUNet
from ..models.vae import VAEDecoder
from ..models.x4_unet import X4UNet

log = logging.getLogger(__name__)
DEMO_VERSION = "4"  # 4: model_index.json records the demo's run defaults
SEED = 20230428  # IF's release date: any fixed seed makes the demo weights reproducible
# Few steps: the demo shows the machinery working end to end in seconds, not pictures. Recorded in each
# demo checkpoint (model_index.json, RUN_DEFAULTS_KEY), so its exported graphs and engines carry them too.
DEMO_DEFAULTS_STEPS = (20, 10, 10)
# Graphs of the demo are exported in fp32 by default: its CPU runs are fp32, and the same command with
# --artifacts then gives the same picture.
DEMO_PRECISION = "fp32"


def cache_root() -> Path:
    base = os.environ.get("IFENGINE_CACHE") or Path.home() / ".cache" / "ifengine"
    return Path(base) / f"demo-v{DEMO_VERSION}"


def unet_config_json(config: UNetConfig) -> dict:
    """Our UNetConfig as a diffusers UNet2DConditionModel config.json."""
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    for key in ("cross_attention_dim", "attention_head_dim"):
        if len(set(data[key])) == 1:
            data[key] = data[key][0]  # diffusers' SimpleCrossAttn blocks need a single int here
    data.pop("num_attention_heads")
    return {"_class_name": "UNet2DConditionModel", **data}


def vae_config_json(config: VAEConfig) -> dict:
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    return {"_class_name": "AutoencoderKL", **data}


def scheduler_json(config, class_name: str, **extra) -> dict:
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    return {"_class_name": class_name, **data, **extra}


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))


def _save_module(folder: Path, module: torch.nn.Module, config: dict, keep=lambda key: True) -> None:
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items() if keep(k)}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    _write_json(folder / "config.json", config)


def _seeded(seed: int, factory):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def _text_model(folder: Path, kind: str, seed: int) -> None:
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tok = AutoTokenizer.from_pretrained(t5_tokenizer_dir() if kind == "t5" else clip_tokenizer_dir())
    preset = dataclasses.replace(text_preset("tiny-t5" if kind == "t5" else "tiny-clip"), vocab_size=len(tok))
    ids = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    if kind == "t5":
        make = lambda: T5EncoderModel(T5Config(**preset.transformers_kwargs(), **ids))  # noqa: E731
    else:
        ids["bos_token_id"] = tok.bos_token_id
        make = lambda: CLIPTextModel(CLIPTextConfig(**preset.transformers_kwargs(), **ids))  # noqa: E731
    _seeded(seed, make).save_pretrained(folder)


def _index(class_name: str, parts: dict[str, tuple[str, str] | None]) -> dict:
    entries = {k: list(v) if v else [None, None] for k, v in parts.items()}
    return {"_class_name": class_name, "_diffusers_version": "0.30.0", **entries}


_T5_TOKENIZER = ("transformers", "T5Tokenizer")
_DDPM = ("diffusers", "DDPMScheduler")
_UNET = ("diffusers", "UNet2DConditionModel")


def write_layout(root: Path, stage: int) -> None:
    """Everything of a stage's Hub layout but the weights: schedulers, tokenizer, model_index.json.

    Shared by the demo and the full-size benchmark checkpoints, which differ only in their weights.
    """
    if stage == 1:
        _write_json(root / "scheduler" / "scheduler_config.json", scheduler_json(sched.IF_STAGE1_DDPM, "DDPMScheduler"))
        shutil.copytree(t5_tokenizer_dir(), root / "tokenizer")
        _write_json(
            root / "model_index.json",
            _index(
                "IFPipeline",
                {
                    "unet": _UNET,
                    "scheduler": _DDPM,
                    "text_encoder": ("transformers", "T5EncoderModel"),
                    "tokenizer": _T5_TOKENIZER,
                    "safety_checker": None,
                    "feature_extractor": None,
                    "watermarker": None,
                },
            ),
        )
    elif stage == 2:
        _write_json(root / "scheduler" / "scheduler_config.json", scheduler_json(sched.IF_STAGE2_DDPM, "DDPMScheduler"))
        _write_json(
            root / "image_noising_scheduler" / "scheduler_config.json",
            scheduler_json(sched.IF_STAGE2_IMAGE_NOISING_DDPM, "DDPMScheduler"),
        )
        shutil.copytree(t5_tokenizer_dir(), root / "tokenizer")
        _write_json(
            root / "model_index.json",
            _index(
                "IFSuperResolutionPipeline",
                {
                    "unet": _UNET,
                    "scheduler": _DDPM,
                    "image_noising_scheduler": _DDPM,
                    "text_encoder": None,
                    "tokenizer": _T5_TOKENIZER,
                    "safety_checker": None,
                    "feature_extractor": None,
                    "watermarker": None,
                },
            ),
        )
    else:
        _write_json(root / "scheduler" / "scheduler_config.json", scheduler_json(sched.X4_DDIM, "DDIMScheduler"))
        _write_json(
            root / "low_res_scheduler" / "scheduler_config.json", scheduler_json(sched.X4_LOW_RES_DDPM, "DDPMScheduler")
        )
        shutil.copytree(clip_tokenizer_dir(), root / "tokenizer")
        index = _index(
            "StableDiffusionUpscalePipeline",
            {
                "unet": _UNET,
                "vae": ("diffusers", "AutoencoderKL"),
                "scheduler": ("diffusers", "DDIMScheduler"),
                "low_res_scheduler": _DDPM,
                "text_encoder": ("transformers", "CLIPTextModel"),
                "tokenizer": ("transformers", "CLIPTokenizer"),
            },
        )
        _write_json(root / "model_index.json", {**index, "max_noise_level": X4_MAX_NOISE_LEVEL})


def write_stage1(root: Path) -> None:

    config = unet_preset("tiny-I")
    _save_module(root / "unet", _seeded(SEED + 1, lambda: IFUNet(config)), unet_config_json(config))
    _text_model(root / "text_encoder", "t5", SEED)
    write_layout(root, 1)
    _record_defaults(root, 1)


def write_stage2(root: Path) -> None:

    config = unet_preset("tiny-II")
    _save_module(root / "unet", _seeded(SEED + 2, lambda: IFUNet(config)), unet_config_json(config))
    write_layout(root, 2)
    _record_defaults(root, 2)


def write_stage3(root: Path) -> None:

    config, vae = unet_preset("tiny-x4"), vae_preset("tiny-vae")
    _save_module(root / "unet", _seeded(SEED + 3, lambda: X4UNet(config)), unet_config_json(config))
    _save_module(root / "vae", _seeded(SEED + 4, lambda: VAEDecoder(vae)), vae_config_json(vae))
    _text_model(root / "text_encoder", "clip", SEED + 5)
    write_layout(root, 3)
    _record_defaults(root, 3)


def _record_defaults(root: Path, stage: int) -> None:
    path = root / "model_index.json"
    index = json.loads(path.read_text())
    index[RUN_DEFAULTS_KEY] = {"steps": DEMO_DEFAULTS_STEPS[stage - 1], "precision": DEMO_PRECISION}
    _write_json(path, index)


WRITERS = {"stage1": write_stage1, "stage2": write_stage2, "stage3": write_stage3}


def demo_checkpoints(root: Path | None = None) -> dict[str, Path]:
    """Folders of the three tiny demo checkpoints, written on first use."""
    root = Path(root) if root else cache_root()
    paths = {name: root / name for name in WRITERS}
    for name, writer in WRITERS.items():
        if not (paths[name] / "model_index.json").is_file():
            _write_atomically(paths[name], writer)
    return paths


def _write_atomically(target: Path, writer) -> None:
    # model_index.json present: complete (another process finished it first); else a crash's leftover
    with replacing_folder(target, done=lambda path: (path / "model_index.json").is_file()) as tmp:
        writer(tmp)
    log.info("wrote the tiny demo checkpoint %s", target)
