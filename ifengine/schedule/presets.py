"""Scheduler configs of the published IF cascade, for use when no scheduler_config.json is at hand.

Prefer `DDPMConfig.from_dict` / `DDIMConfig.from_dict` on a checkpoint's own file when it exists.
"""

from __future__ import annotations

import dataclasses

from .ddim import DDIMConfig
from .ddpm import DDPMConfig

IF_STAGE1_DDPM = DDPMConfig(
    beta_schedule="squaredcos_cap_v2",
    variance_type="learned_range",
    prediction_type="epsilon",
    thresholding=True,
    dynamic_thresholding_ratio=0.95,
    sample_max_value=1.5,
    clip_sample=True,
    clip_sample_range=1.0,
)

# Stage II: as stage I but sample_max_value 1.0, which turns thresholding into a plain clip.
IF_STAGE2_DDPM = dataclasses.replace(IF_STAGE1_DDPM, sample_max_value=1.0)

# Stage II's image_noising_scheduler: only its alphas_cumprod matters (add_noise at t = noise_level).
IF_STAGE2_IMAGE_NOISING_DDPM = DDPMConfig(beta_schedule="squaredcos_cap_v2")

# SD x4 upscaler. set_alpha_to_one=False is the Hub value as recalled, not checked offline.
X4_DDIM = DDIMConfig(
    beta_schedule="scaled_linear",
    beta_start=0.0001,
    beta_end=0.02,
    prediction_type="v_prediction",
    set_alpha_to_one=False,
    steps_offset=1,
    clip_sample=False,
)

X4_LOW_RES_DDPM = DDPMConfig(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02)
