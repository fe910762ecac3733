"""Static int8 for U-Nets and step graphs: calibrate on the stage's own embeddings, then measure.

Calibration embeds ``CALIBRATION_PROMPTS`` with the stage's text encoder (T5 from the stage I
checkpoint for stages I and II, the x4 CLIP for stage III) at the spec's optimal image size, with
timesteps spread across the stage's default schedule. The figure recorded in the manifest is the cosine
similarity of int8 and fp32 outputs on held-out prompts, timesteps and noise.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import numpy as np
import torch

from ..models.checkpoint import Checkpoint
from .calibration import CALIBRATION_PROMPTS, HELD_OUT_PROMPTS, Embedder, feeds, stage_calls
from .hashing import sha256_json
from .quantize import STATIC_OPTIONS, quantize_static_qdq
from .spec import ComponentSpec
from .verify import cosine, run_onnx, session
from ..facts import TEXT_TOKENS
from ..stage.components import load_clip, load_t5

log = logging.getLogger(__name__)


def embedder(stage: int, config: Mapping[str, Any], ckpts: Mapping[int, Checkpoint]) -> Embedder:
    """Prompt -> embeddings with the text encoder the stage is conditioned on, in float32."""

    if stage == 3:
        encoder = load_clip(ckpts[3], torch.float32, "cpu", None)
    elif 1 in ckpts and ckpts[1].has("text_encoder"):
        encoder = load_t5(ckpts[1], torch.float32, torch.device("cpu"), None, text_dtype=torch.float32)
    else:
        unet = config["unet"]
        width = unet["encoder_hid_dim"] or unet["cross_attention_dim"][0]
        log.warning(
            "no T5 to calibrate stage %d with (pass the stage I checkpoint too); using random "
            "embeddings, which calibrate the text path less well",
            stage,
        )
        gen = torch.Generator().manual_seed(1234)
        return lambda prompts: 0.15 * torch.randn((len(prompts), TEXT_TOKENS, width), generator=gen)
    return lambda prompts: encoder.encode(list(prompts)).float()


def quantize_component(
    source, spec: ComponentSpec, fp32_path: Path, out_path: Path, options, ckpts: Mapping[int, Checkpoint]
) -> dict[str, Any]:
    settings = options.calibration
    embed = embedder(source.stage, source.config, ckpts)
    size = (spec.ranges["height"].opt, spec.ranges["width"].opt)
    calls = stage_calls(source.stage, source.config, embed, CALIBRATION_PROMPTS, settings.samples, *size, settings.seed)
    quantize_static_qdq(fp32_path, out_path, feeds(source.name, spec, calls))
    stats = {
        "method": (
            "static Q/DQ, int8 symmetric (zero point 0), per-channel weights, percentile (99.99) activation ranges"
        ),
        "ops": ["Conv", "MatMul", "Gemm"],
        "options": dict(STATIC_OPTIONS),
        "calibration_size": list(size),
        "calibration_samples": len(calls),
        "calibration_timesteps": [c.timestep for c in calls],
        "calibration_prompts_sha256": sha256_json(CALIBRATION_PROMPTS),
    }
    if options.int8_fidelity:
        held = stage_calls(
            source.stage, source.config, embed, HELD_OUT_PROMPTS, settings.held_out_samples, *size, settings.seed + 1
        )
        scores = int8_cosines(fp32_path, out_path, feeds(source.name, spec, held))
        stats |= {
            "held_out_cosine_min": round(min(scores), 5),
            "held_out_cosine_mean": round(float(np.mean(scores)), 5),
            "held_out_samples": len(scores),
        }
        log.info(
            "%s int8: cosine to fp32 on held-out inputs min %.4f mean %.4f",
            source.name,
            min(scores),
            float(np.mean(scores)),
        )
    return stats


def int8_cosines(fp32_path: Path, int8_path: Path, feed_list: list[dict[str, np.ndarray]]) -> list[float]:
    ref, q = session(fp32_path), session(int8_path)
    return [cosine(run_onnx(q, f)[0], run_onnx(ref, f)[0]) for f in feed_list]
