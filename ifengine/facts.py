"""Facts of the cascade stated once: its components, which stage each comes from, their precisions, and the
numbers every floor shares (token length, upscale factor, noise levels, default settings).

Floor 0: no imports (export, engines, memory, runtime and backends read these names)."""

from __future__ import annotations

NETWORKS = ("t5", "clip", "unet1", "unet2", "x4_unet", "vae_decoder")
STEP_GRAPHS = ("step1", "step2", "step3")  # one whole denoising step per stage
ALL_COMPONENTS = NETWORKS + STEP_GRAPHS
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# Which checkpoint (stage) each component is exported from.
STAGE_OF = {
    "t5": 1,
    "unet1": 1,
    "step1": 1,
    "unet2": 2,
    "step2": 2,
    "clip": 3,
    "x4_unet": 3,
    "vae_decoder": 3,
    "step3": 3,
}
# The U-Net of each stage, and the stage of each U-Net (derived, not restated).
UNET_OF = {1: "unet1", 2: "unet2", 3: "x4_unet"}
STAGE_OF_UNET = {name: stage for stage, name in UNET_OF.items()}
UNETS = tuple(UNET_OF.values())
IF_UNETS = (UNET_OF[1], UNET_OF[2])  # the IF U-Nets (pixel space); stage III's works on latents
TEXT_ENCODERS = ("t5", "clip")  # run once for the prompts and once for the negatives
STAGE_COMPONENTS = {s: tuple(c for c in ALL_COMPONENTS if STAGE_OF[c] == s) for s in (1, 2, 3)}
# int8 (Q/DQ) graphs: static quantisation for the U-Nets and step graphs, weight-only for T5.
INT8_STATIC = ("unet1", "unet2", "x4_unet", "step1", "step2", "step3")
INT8_WEIGHT_ONLY = ("t5",)
INT8_COMPONENTS = INT8_STATIC + INT8_WEIGHT_ONLY

# The cascade's numbers (DeepFloyd IF and the SD x4 upscaler, as diffusers' pipelines run them).
TEXT_TOKENS = 77  # every prompt is padded (or cut) to 77 tokens, for T5 and for stage III's CLIP
SR_SCALE = 4  # stage II and III each upscale x4 (64 -> 256 -> 1024); stage III's latents have stage II's size
TRAIN_TIMESTEPS = 1000  # DDPM training steps of stages I and II (and stage II's image-noising schedule)
X4_MAX_NOISE_LEVEL = 350  # the x4 upscaler's max_noise_level (its low-res noising schedule's useful range)
MAX_NOISE_LEVEL = (TRAIN_TIMESTEPS, X4_MAX_NOISE_LEVEL)  # the largest noise_level of stage II, of stage III
# diffusers' defaults per stage (IFPipeline, IFSuperResolutionPipeline, StableDiffusionUpscalePipeline).
DEFAULT_STEPS = (100, 50, 75)
DEFAULT_GUIDANCE = (7.0, 4.0, 9.0)
DEFAULT_NOISE_LEVEL = (250, 20)  # stages II and III


def scale_of(stage: int) -> int:
    """How many times stage I's side a stage's output side is (1, 4, 16)."""
    return SR_SCALE ** (stage - 1)
