"""A full-size cascade (T5-XXL, IF-I-XL, IF-II-L, x4) with random weights, built in host memory.

Speed and memory do not depend on trained values, so GPU checks need no download: every module is built
on the meta device from the presets, materialised on the CPU and filled with seeded values that keep
activations finite through the deep nets (uniform in +-1/sqrt(fan_in) for matrices and kernels, as
torch's default init; ones for norm weights; zeros for biases). The tokenizers are the tiny offline demo
ones: ids only pick embedding rows and every prompt is padded to 77 tokens, so the work is the real one.
Modules stay on the CPU: ``configure(cascade, vram_budget=...)`` places them, or ``move_to`` moves all.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..stage.stages import IFStage, X4Stage
from ..facts import TEXT_TOKENS, X4_MAX_NOISE_LEVEL
from ..schedule import presets as sched
from ..text.encoder import PromptEncoder
from ..memory.plan_inputs import preset_modules
from ..demo.tokenizers import clip_tokenizer_dir, t5_tokenizer_dir
from ..pipeline.cascade import Cascade
from ..memory.plan_inputs import cascade_modules


def randomize(module: nn.Module, generator: torch.Generator, device: torch.device | str = "cpu") -> nn.Module:
    """Materialise a meta module on ``device`` and fill it deterministically there (see the module
    docstring): on a GPU the fill takes seconds for the whole cascade, where the CPU takes minutes."""
    module = module.to_empty(device=device)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                bound = 1.0 / math.sqrt(p[0].numel())
                p.uniform_(-bound, bound, generator=generator)
            elif name.endswith("weight") and "norm" in name.lower():
                p.fill_(1.0)
            else:
                p.zero_()
        for name, b in module.named_buffers():
            if name.endswith("position_ids"):  # CLIP's non-persistent arange
                b.copy_(torch.arange(b.shape[-1], device=b.device).expand_as(b))
    return module.eval().requires_grad_(False)


def random_cascade(
    presets: tuple[str, ...] = ("IF-I-XL", "IF-II-L", "x4"),
    dtype: torch.dtype = torch.float16,
    device: torch.device | str = "cuda",
    seed: int = 0,
    build_on: torch.device | str = "cpu",
):
    """A Cascade of random full-size modules built on ``build_on`` (default the CPU), set to run on
    ``device``. ``build_on="cuda"`` fills every weight on the GPU (seconds, and already in place)."""
    from transformers import AutoTokenizer

    build_on = torch.device(build_on)
    generator = torch.Generator(device=build_on).manual_seed(seed)
    t5_tok = AutoTokenizer.from_pretrained(t5_tokenizer_dir())
    clip_tok = AutoTokenizer.from_pretrained(clip_tokenizer_dir())
    vocab = max(len(t5_tok), len(clip_tok))  # the full-size vocabularies are larger already
    meta = preset_modules.__wrapped__(tuple(presets), dtype, vocab)  # fresh meta modules: to_empty mutates them
    m = {name: randomize(module, generator, build_on) for name, module in meta.items()}
    text = PromptEncoder(t5_tok, m["t5"], out_dtype=dtype, use_mask=True)
    stage2 = IFStage(m["unet2"], sched.IF_STAGE2_DDPM, sched.IF_STAGE2_IMAGE_NOISING_DDPM) if "unet2" in m else None
    stage3 = None
    if "x4_unet" in m:
        clip = PromptEncoder(clip_tok, m["clip"], out_dtype=dtype, use_mask=False, max_length=TEXT_TOKENS)
        stage3 = X4Stage(m["x4_unet"], m["vae_decoder"], clip, sched.X4_DDIM, sched.X4_LOW_RES_DDPM, X4_MAX_NOISE_LEVEL)
    return Cascade(
        text=text,
        stage1=IFStage(m["unet1"], sched.IF_STAGE1_DDPM),
        stage2=stage2,
        stage3=stage3,
        device=device,
        dtype=dtype,
    )


def move_to(cascade, device: torch.device | str) -> None:
    """Move every module of the cascade (the no-budget path: everything resident)."""

    for module in cascade_modules(cascade).values():
        module.to(device)
