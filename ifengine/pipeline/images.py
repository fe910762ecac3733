"""Conversions between the cascade's [-1, 1] NCHW tensors and what users get back."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped, float32 (as diffusers post-processes)."""
    return (x.float() / 2 + 0.5).clamp(0, 1)


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """NCHW [-1, 1] -> NHWC float32 [0, 1]."""
    return to_unit(x).permute(0, 2, 3, 1).cpu().numpy()


def numpy_to_pil(images: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(img) for img in (images * 255).round().astype("uint8")]


def convert(x: torch.Tensor, output_type: str):
    """The final images as the caller asked: PIL list, NHWC numpy or NCHW tensor, all in [0, 1]."""
    if output_type == "pt":
        return to_unit(x)
    images = to_numpy(x)
    return numpy_to_pil(images) if output_type == "pil" else images
