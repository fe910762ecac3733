"""What the planner needs to know about a cascade: weight bytes, streamable units, activation peaks.

Weights are counted from real module trees built on the meta device (exact parameter counts, no
memory), in the dtype each component runs in on a GPU: T5 in bfloat16 when the cascade runs float16
(T5 v1.1 overflows float16), the x4 VAE in float32 when the cascade runs float16 (force_upcast).
Activation peaks of the U-Net steps and the VAE decode are measured by running the exact step
functions on meta tensors (``meta_trace``); the text encoders' are a formula (T5 cannot run on meta).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from ..models.int8 import compute_dtype, is_quantized
from .exec_order import in_execution_order
from .partition import DEFAULT_MAX_UNIT_BYTES, Partition, partition
from ..facts import DEFAULT_STEPS, TEXT_ENCODERS, TEXT_TOKENS, UNETS, scale_of
from .step_trace import trace_step
from .step_trace import trace_decode

# The phases of one generate call, in order, and the components each one runs.
PHASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("text", ("t5",)),
    ("stage1", ("unet1",)),
    ("stage2", ("unet2",)),
    ("stage3", ("clip", "x4_unet")),
    ("decode", ("vae_decoder",)),
)
CAPTURED_PHASES = ("stage1", "stage2", "stage3")  # phases whose steps run as CUDA graphs
PHASE_LABELS = {
    "text": "T5 encode",
    "stage1": "stage I",
    "stage2": "stage II",
    "stage3": "stage III",
    "decode": "VAE decode",
}


@dataclass(frozen=True)
class Workload:
    """What one generate call asks for (stage I size; each later stage is 4x)."""

    height: int = 64
    width: int = 64
    batch: int = 1  # images per call (prompts x images per prompt)
    steps: tuple[int, int, int] = DEFAULT_STEPS
    cfg: tuple[bool, bool, bool] = (True, True, True)

    def size(self, stage: int) -> tuple[int, int]:
        return self.height * scale_of(stage), self.width * scale_of(stage)

    def unet_batch(self, stage: int) -> int:
        return self.batch * (2 if self.cfg[stage - 1] else 1)


@dataclass(frozen=True)
class ComponentInfo:
    name: str
    params: int
    weight_bytes: int
    dtype: torch.dtype
    partition: Partition
    forwards_per_run: int  # streamed bytes are paid this many times per generate call
    int8: bool = False  # weight-only int8 (models/int8.py); ``dtype`` is then the compute dtype


@dataclass(frozen=True)
class PhaseInfo:
    name: str
    components: tuple[str, ...]
    activation_bytes: int
    captured: bool


@dataclass(frozen=True)
class PlanInputs:
    components: tuple[ComponentInfo, ...]
    phases: tuple[PhaseInfo, ...]  # the decode phase's activation is taken from decode_options
    decode_options: tuple[tuple[int | None, int], ...]  # (latent tile or None, activation bytes)
    buffer_bytes: int
    workload: Workload

    def component(self, name: str) -> ComponentInfo:
        return next(c for c in self.components if c.name == name)


def component_info(
    name: str,
    module: nn.Module,
    forwards: int,
    max_unit_bytes: int = DEFAULT_MAX_UNIT_BYTES,
    order: list[str] | None = None,
) -> ComponentInfo:
    """``order``: the forward's execution order when already known (an int8 twin runs its native twin's
    order: the same paths in the same forward), else traced here."""
    part = in_execution_order(partition(module, max_unit_bytes), name, module, order)  # streaming prefetches in it
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}.values()
    params = sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
    return ComponentInfo(
        name,
        params,
        sum(t.numel() * t.element_size() for t in tensors),
        compute_dtype(module),
        part,
        forwards,
        is_quantized(module),
    )


def text_activation_bytes(hidden: int, ffn: int, heads: int, batch: int, itemsize: int) -> int:
    """One encoder layer's working set at 77 tokens: residual stream copies, the (gated) FFN, the scores."""
    tokens = batch * TEXT_TOKENS
    return tokens * (8 * hidden + 3 * ffn) * itemsize + batch * heads * TEXT_TOKENS**2 * 4 * 3


def forwards_per_run(name: str, workload: Workload) -> int:
    steps = dict(zip(UNETS, workload.steps, strict=True))
    return steps.get(name, 2 if name in TEXT_ENCODERS else 1)  # encoders: prompts, then negatives


@functools.lru_cache(maxsize=64)
def unet_step_activation(
    kind: str, config, dtype: torch.dtype, batch: int, height: int, width: int, cfg: bool, text_dim: int
) -> int:
    """Peak activation bytes of one whole step (U-Net on the CFG batch + guidance + scheduler update)."""

    return trace_step(kind, config, dtype, batch, height, width, cfg, text_dim)


@functools.lru_cache(maxsize=64)
def decode_activation(
    config, dtype: torch.dtype, batch: int, height: int, width: int, tile: int | None, overlap: int
) -> int:
    """Peak activation bytes of the VAE decode of (batch, 4, height, width) latents, whole or tiled."""

    return trace_decode(config, dtype, batch, height, width, tile, overlap)


ARENA_ALIGN = 256  # runtime.buffers.ALIGN: every arena buffer is rounded up to it


def stage_buffers(
    stage: int, *, batch: int, height: int, width: int, steps: int, text_dim: int, itemsize: int
) -> dict[str, int]:
    """Bytes of each static buffer of stage ``stage``'s arena for the largest call expected: what the
    GPU runner reserves (``GraphRunner.reserve_for``) and the planner counts, from this one formula.
    CFG with a style-mixer branch (3 rows of conditioning), editing inputs, ``steps`` steps."""
    image = batch * 3 * height * width * itemsize
    rows = 3 * batch  # uncond, cond and a style-mixer branch
    sample = image if stage < 3 else image * 4 // 3  # x4 latents have 4 channels
    per_step_noise = steps if stage < 3 else 0  # DDPM draws noise every step; stage III's DDIM none
    tables = 24 * (steps + 1) * 8 + 2 * 1000 * 4 + 32 * ARENA_ALIGN  # per-step tables, alphas, alignment
    return {
        "x": sample,
        "embeds": rows * TEXT_TOKENS * text_dim * itemsize,
        "upscaled": image,
        "low_res": rows * image,
        "upload": (per_step_noise + 4) * max(sample, image) + rows * image + tables,
    }


def arena_bytes(workload: Workload, text_dims: tuple[int, int, int], itemsize: int, last_stage: int = 3) -> int:
    """The runner's static arenas for ``workload`` (each buffer aligned as the arena allocates it)."""
    total = 0
    for stage in range(1, last_stage + 1):
        h, w = workload.size(min(stage, 2))  # stage III's latents have stage II's size
        sizes = stage_buffers(
            stage,
            batch=workload.batch,
            height=h,
            width=w,
            steps=workload.steps[stage - 1],
            text_dim=text_dims[stage - 1],
            itemsize=itemsize,
        )
        total += sum(-(-n // ARENA_ALIGN) * ARENA_ALIGN for n in sizes.values())
    return total


def buffer_bytes(workload: Workload, text_dims: tuple[int, int, int], itemsize: int, last_stage: int = 3) -> int:
    """Static arenas, stage outputs and the final image of one call (arenas persist across stages and
    calls); ``last_stage`` < 3 counts only the stages a call that stops early runs."""
    outputs = sum(workload.batch * 3 * workload.size(s)[0] * workload.size(s)[1] for s in range(1, last_stage + 1))
    out_h, out_w = workload.size(last_stage)
    final = workload.batch * 3 * out_h * out_w * 4  # the image's float32 copy for the host
    return arena_bytes(workload, text_dims, itemsize, last_stage) + outputs * itemsize + final + 2**20
