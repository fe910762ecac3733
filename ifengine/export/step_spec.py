"""I/O specs of the step graphs: one whole denoising step of a stage per engine call.

A step graph takes the sample, the step index, the run's schedule table (one row per step, the columns
below), the CFG-doubled text embeddings, the step's pre-drawn noise and the guidance scale, and returns
the next sample. The table is an input, not a constant, so one graph serves every step count and
timestep list; the runtime binds it once per run and only the step index changes between calls.

Step graphs always run classifier-free guidance (the CFG batch is twice the image batch); a run with
guidance <= 1 uses the bare U-Net graph and the torch step instead. Stage III's DDIM step (eta 0) adds
no noise, so its graph has no noise input. The dynamic-thresholding quantile of stage I is a TopK whose k
grows with the image; ``check_threshold_limit`` refuses size ranges past TensorRT's k <= 3840 (152x152
for 3 channels at ratio 0.95).
"""

from __future__ import annotations

import math

from ..models.config import UNetConfig
from ..schedule.ddim import DDIMConfig
from ..schedule.ddpm import DDPMConfig
from ..schedule.x0 import make_x0_clamp
from .spec import MODEL, TOKEN_RANGE, TOKENS, ComponentSpec, DimRange, SpecError, TensorSpec

# Columns of the schedule table, in order (float32; timestep and the 0/1 noise mask are exact in float32).
DDPM_COLUMNS = (
    "timesteps",
    "sqrt_alpha_prod_t",
    "sqrt_beta_prod_t",
    "coef_x0",
    "coef_xt",
    "log_variance_min",
    "log_variance_max",
    "noise_std",
    "noise_mask",
)
DDIM_COLUMNS = ("timesteps", "sqrt_alpha_prod_t", "sqrt_beta_prod_t", "sqrt_alpha_prod_prev", "coef_eps", "noise_std")
TOPK_MAX = 3840  # TensorRT's largest TopK k
STEP_BATCH = DimRange(1, 1, 8)
STEP_COUNT = DimRange(1, 100, 1000)


def rank_f32(n: int, q: float) -> float:
    """The interpolation rank q * (n - 1) as float32 arithmetic forms it (torch.quantile does the same)."""
    import numpy as np

    return float(np.float32(q) * np.float32(n - 1))


def threshold_topk_k(n: int, ratio: float) -> int:
    """TopK k the step graph's quantile of ``n`` values needs: the smaller tail holding both order statistics."""
    rank = rank_f32(n, ratio)
    below, above = math.floor(rank), math.ceil(rank)
    return n - below if ratio >= 0.5 else above + 1


def max_threshold_side(channels: int, ratio: float, multiple: int) -> int:
    """Largest square side (a multiple of ``multiple``) whose dynamic thresholding fits TensorRT's TopK."""
    side = multiple
    while threshold_topk_k(channels * (side + multiple) ** 2, ratio) <= TOPK_MAX:
        side += multiple
    return side


def check_threshold_limit(name: str, scheduler: DDPMConfig | DDIMConfig, channels: int, sizes: DimRange) -> None:
    """Refuse a size range whose dynamic thresholding would need TopK with k > TOPK_MAX."""
    clamp = make_x0_clamp(
        scheduler.thresholding,
        scheduler.clip_sample,
        scheduler.clip_sample_range,
        scheduler.dynamic_thresholding_ratio,
        scheduler.sample_max_value,
    )
    if clamp.mode != "dynamic":
        return  # a plain clip (stage II: sample_max_value 1) has no quantile
    k = threshold_topk_k(channels * sizes.max * sizes.max, clamp.ratio)
    if k > TOPK_MAX:
        side = max_threshold_side(channels, clamp.ratio, sizes.multiple)
        raise SpecError(
            f"{name}: dynamic thresholding at {sizes.max}x{sizes.max} needs TopK k={k}, over TensorRT's "
            f"limit {TOPK_MAX}; the step graph supports at most {side}x{side} pixels (the bare U-Net graph "
            "has no such limit). Export with a smaller size range."
        )


def _ranges(sizes: DimRange, batch: DimRange) -> dict[str, DimRange]:
    return {"batch": batch, "height": sizes, "width": sizes, TOKENS: TOKEN_RANGE, "steps": STEP_COUNT}


def if_sample_channels(config: UNetConfig, stage: int) -> int:
    """Channels of x_t: all U-Net inputs on stage I; half on stage II (the other half is the upscaled image)."""
    return config.in_channels if stage == 1 else config.in_channels // 2


def if_step_spec(
    config: UNetConfig, stage: int, scheduler: DDPMConfig, sizes: DimRange, batch: DimRange = STEP_BATCH
) -> ComponentSpec:
    """Stage I or II step: DDPM with learned-range variance and x0 thresholding (a clip on stage II)."""
    c = if_sample_channels(config, stage)
    name = f"step{stage}"
    check_threshold_limit(name, scheduler, c, sizes)
    image = ("batch", c, "height", "width")
    text = config.encoder_hid_dim or config.cross_attention_dim[0]
    inputs = [
        TensorSpec("sample", MODEL, image),
        TensorSpec("step", "int64", (1,)),
        TensorSpec("schedule", "float32", ("steps", len(DDPM_COLUMNS))),
        TensorSpec("text_embeds", MODEL, ("cfg_batch", TOKENS, text)),
        TensorSpec("noise", MODEL, image),
        TensorSpec("guidance", MODEL, (1,)),
    ]
    if stage == 2:
        inputs += [
            TensorSpec("upscaled", MODEL, ("batch", config.in_channels - c, "height", "width")),
            TensorSpec("noise_level", "float32", ("cfg_batch",)),
        ]
    return ComponentSpec(
        name=name,
        inputs=tuple(inputs),
        outputs=(TensorSpec("prev_sample", MODEL, image),),
        ranges=_ranges(sizes, batch),
        derived={"cfg_batch": ("batch", 2)},
    )


def x4_step_spec(
    config: UNetConfig, scheduler: DDIMConfig, sizes: DimRange, batch: DimRange = STEP_BATCH
) -> ComponentSpec:
    """Stage III step: x4 U-Net on [latents, noised low-res image], guidance, DDIM update (eta 0)."""
    c = config.out_channels
    check_threshold_limit("step3", scheduler, c, sizes)
    latents = ("batch", c, "height", "width")
    inputs = (
        TensorSpec("sample", MODEL, latents),
        TensorSpec("step", "int64", (1,)),
        TensorSpec("schedule", "float32", ("steps", len(DDIM_COLUMNS))),
        TensorSpec("image", MODEL, ("cfg_batch", config.in_channels - c, "height", "width")),
        TensorSpec("text_embeds", MODEL, ("cfg_batch", TOKENS, config.cross_attention_dim[0])),
        TensorSpec("noise_level", "int64", ("cfg_batch",)),
        TensorSpec("guidance", MODEL, (1,)),
    )
    return ComponentSpec(
        name="step3",
        inputs=inputs,
        outputs=(TensorSpec("prev_sample", MODEL, latents),),
        ranges=_ranges(sizes, batch),
        derived={"cfg_batch": ("batch", 2)},
    )
