"""Random full-size (or tiny) cascade checkpoints in the Hub layout, loaded identically by both systems.

Speed and memory do not depend on trained values, so the benchmark builds each component from our
presets on the meta device, fills every tensor with seeded random values (uniform in +-1/sqrt(fan_in)
for matrices and kernels, which keeps activations finite through the deep U-Nets; ones for norm
weights, zeros for biases), and writes fp16 safetensors with diffusers/transformers config files.
diffusers and ifengine then load the very same bytes. The tokenizers are the tiny offline demo ones:
token ids only pick embedding rows, and both systems pad to 77 tokens, so the work is the real one.

Each stage folder is written atomically (temporary folder, then rename) and reused when its manifest
says it was built from the same spec and seed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..demo.build import _write_json, unet_config_json, vae_config_json, write_layout
from ..demo.tokenizers import clip_tokenizer_dir, t5_tokenizer_dir
from ..models.presets import text_preset, unet_preset, vae_preset
from ..models.weights import build_on_meta
from .flops import text_model
from ..models.if_unet import IFUNet
from ..models.x4_unet import X4UNet

log = logging.getLogger(__name__)
VARIANT = "fp16"
MANIFEST = "bench_manifest.json"
TEXT_SHARD = "5GB"


@dataclass(frozen=True)
class CascadeSpec:
    """Which preset each component of a benchmark cascade uses, and stage I's default size."""

    name: str
    stage1: str
    stage2: str
    stage3: str
    vae: str
    t5: str
    clip: str
    size: int


SPECS = {
    "full": CascadeSpec("full", "IF-I-XL", "IF-II-L", "x4-upscaler", "x4-vae", "t5-v1_1-xxl", "clip-vit-h-text", 64),
    # IF-I-M / IF-II-M widths are ESTIMATES (presets.py): the size diffusers' published it/s anchors use
    "medium": CascadeSpec("medium", "IF-I-M", "IF-II-M", "x4-upscaler", "x4-vae", "t5-v1_1-xxl", "clip-vit-h-text", 64),
    "tiny": CascadeSpec("tiny", "tiny-I", "tiny-II", "tiny-x4", "tiny-vae", "tiny-t5", "tiny-clip", 16),
}


def cascade_spec(name: str) -> CascadeSpec:
    if name not in SPECS:
        raise ValueError(f"unknown cascade preset {name!r}; known: {', '.join(SPECS)}")
    return SPECS[name]


def build_checkpoints(spec: CascadeSpec, root: Path, seed: int = 0, progress: bool = True) -> dict[str, Path]:
    """Folders ``stage1``, ``stage2``, ``stage3`` under ``root``, built on first use."""
    root = Path(root)
    writers = {"stage1": _write_stage1, "stage2": _write_stage2, "stage3": _write_stage3}
    manifest = {"spec": asdict(spec), "seed": seed, "variant": VARIANT}
    paths = {}
    for offset, (name, writer) in enumerate(writers.items()):
        paths[name] = target = root / name
        if _manifest(target) == manifest:
            continue
        log.info("building random %s checkpoint %s (%s presets)", name, target, spec.name)
        # partial binds this iteration's writer and seed now (a lambda would read the loop variables late)
        write = partial(writer, spec=spec, seed=seed + 10 * offset, progress=progress)
        _write_atomically(target, write, manifest)
    return paths


def _manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_atomically(target: Path, write, manifest: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        _write_json(tmp / MANIFEST, manifest)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def random_state(module: torch.nn.Module, seed: int, progress: bool = False) -> dict[str, torch.Tensor]:
    """Seeded fp16 values for every state-dict entry of a (meta) module; tied entries share one tensor."""
    gen = torch.Generator().manual_seed(seed)
    made: dict[int, torch.Tensor] = {}
    state = {}
    entries = module.state_dict(keep_vars=True)
    for name, ref in tqdm(entries.items(), desc="random weights", disable=not progress, leave=False):
        if id(ref) not in made:
            made[id(ref)] = _random_like(name, ref, gen)
        state[name] = made[id(ref)]
    return state


def _random_like(name: str, ref: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if not ref.is_floating_point():
        raise ValueError(f"{name}: integer state {tuple(ref.shape)} cannot be made up; build it for real")
    if ref.dim() <= 1:
        fill = 1.0 if name.endswith("weight") else 0.0  # norm scales 1, biases 0
        return torch.full(ref.shape, fill, dtype=torch.float16)
    bound = (ref[0].numel()) ** -0.5  # 1/sqrt(fan_in): inputs per output row/filter
    out = torch.empty(ref.shape, dtype=torch.float32)
    out.uniform_(-bound, bound, generator=gen)
    return out.to(torch.float16)


def _save_diffusers(folder: Path, module: torch.nn.Module, config: dict, seed: int, progress: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = random_state(module, seed, progress)
    save_file(state, str(folder / f"diffusion_pytorch_model.{VARIANT}.safetensors"))
    _write_json(folder / "config.json", config)


def _save_text(folder: Path, preset: str, tokenizer_dir: Path, seed: int, progress: bool) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = text_preset(preset)
    ids = {k: getattr(tok, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id") if getattr(tok, k) is not None}
    config = replace(config, vocab_size=max(config.vocab_size, len(tok)), extra={**config.extra, **ids})
    model = build_on_meta(lambda: text_model(config))
    state = random_state(model, seed, progress)
    model.save_pretrained(folder, state_dict=dict(state), variant=VARIANT, max_shard_size=TEXT_SHARD)


def _write_stage1(root: Path, spec: CascadeSpec, seed: int, progress: bool) -> None:

    config = unet_preset(spec.stage1)
    _save_diffusers(root / "unet", build_on_meta(lambda: IFUNet(config)), unet_config_json(config), seed, progress)
    _save_text(root / "text_encoder", spec.t5, t5_tokenizer_dir(), seed + 1, progress)
    write_layout(root, 1)


def _write_stage2(root: Path, spec: CascadeSpec, seed: int, progress: bool) -> None:

    config = unet_preset(spec.stage2)
    _save_diffusers(root / "unet", build_on_meta(lambda: IFUNet(config)), unet_config_json(config), seed, progress)
    write_layout(root, 2)


def _write_stage3(root: Path, spec: CascadeSpec, seed: int, progress: bool) -> None:

    config, vae = unet_preset(spec.stage3), vae_preset(spec.vae)
    _save_diffusers(root / "unet", build_on_meta(lambda: X4UNet(config)), unet_config_json(config), seed, progress)
    _save_vae(root / "vae", vae, seed + 1, progress)
    _save_text(root / "text_encoder", spec.clip, clip_tokenizer_dir(), seed + 2, progress)
    write_layout(root, 3)


def _save_vae(folder: Path, config, seed: int, progress: bool) -> None:
    """The whole AutoencoderKL as diffusers loads it; ifengine reads only the decoder half of it."""
    try:
        from diffusers import AutoencoderKL  # only diffusers' class has the encoder half
    except ImportError:
        from ..models.vae import VAEDecoder  # without diffusers: our decoder-only VAE

        log.warning("diffusers is not installed: writing the VAE decoder only (diffusers could not load it)")
        module = build_on_meta(lambda: VAEDecoder(config))
    else:
        module = build_on_meta(lambda: AutoencoderKL.from_config(vae_config_json(config)))
    _save_diffusers(folder, module, vae_config_json(config), seed, progress)
