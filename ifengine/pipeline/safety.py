"""The stage I checkpoint's safety checker and watermarker, applied to PIL output as the reference does.

The checker is CLIP ViT-L/14 with two linear heads (NSFW, watermark); an image either head flags
(logit > 0.5) is replaced by black. The watermark is the checkpoint's small RGBA logo pasted at the
bottom-right, scaled with the image area.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..models.checkpoint import Checkpoint
from ..models.weights import TRANSFORMERS_STEM, load_component, read_state_dict, weight_files
from .images import numpy_to_pil, to_numpy

log = logging.getLogger(__name__)
THRESHOLD = 0.5


class SafetyHeads(nn.Module):
    """CLIP vision tower with projection, plus the NSFW (``p_head``) and watermark (``w_head``) heads."""

    def __init__(self, clip_config):
        super().__init__()
        from transformers import CLIPVisionModelWithProjection

        vision = clip_config.vision_config
        self.vision_model = CLIPVisionModelWithProjection(vision)
        self.p_head = nn.Linear(vision.projection_dim, 1)
        self.w_head = nn.Linear(vision.projection_dim, 1)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeds = self.vision_model(pixel_values)[0]
        return self.p_head(embeds).flatten() > THRESHOLD, self.w_head(embeds).flatten() > THRESHOLD


class Safety:
    """Callable: final [-1, 1] images -> (PIL images, per-image flagged)."""

    def __init__(self, heads: SafetyHeads | None, processor, watermark: Image.Image | None):
        self.heads, self.processor, self.watermark = heads, processor, watermark

    def __call__(self, images: torch.Tensor, watermark_size: int | None = None):
        array = to_numpy(images)
        flagged = self._check(array)
        pil = numpy_to_pil(array)
        if self.watermark is not None:
            for img in pil:
                paste_watermark(img, self.watermark, watermark_size)
        return pil, flagged

    @torch.no_grad()
    def _check(self, array: np.ndarray) -> list[bool] | None:
        if self.heads is None:
            return None
        device = next(self.heads.parameters()).device
        dtype = next(self.heads.parameters()).dtype
        pixels = self.processor(numpy_to_pil(array), return_tensors="pt").pixel_values.to(device, dtype)
        nsfw, marked = self.heads(pixels)
        flagged = (nsfw | marked).tolist()
        if any(flagged):
            log.warning("the safety checker flagged %d image(s); they are returned black", sum(flagged))
        for i, bad in enumerate(flagged):
            if bad:
                array[i] = 0
        return flagged


def paste_watermark(img: Image.Image, mark: Image.Image, sample_size: int | None) -> None:
    """Paste the logo bottom-right, sized by the image area relative to 1024x1024 (in place)."""
    h, w = img.height, img.width
    sample_size = sample_size or h
    coef = min(h / sample_size, w / sample_size)
    img_h, img_w = (int(h / coef), int(w / coef)) if coef < 1 else (h, w)
    k = (img_w * img_h / 1024**2) ** 0.5
    size, x, y = int(k * 62), img_w - int(14 * k), img_h - int(14 * k)
    if size < 1:  # images under ~17 px get no logo (the reference crashes resizing it to 0 px)
        return
    logo = mark.resize((size, size), Image.BICUBIC, reducing_gap=None)
    img.paste(logo, box=(x - size, y - size, x, y), mask=logo.split()[-1])


def load_safety(ckpt: Checkpoint, device) -> Safety | None:
    heads = processor = mark = None
    if ckpt.has("safety_checker") and ckpt.has("feature_extractor"):
        from transformers import CLIPConfig, CLIPImageProcessor

        config = CLIPConfig.from_pretrained(ckpt.root / "safety_checker")
        heads = load_component(
            lambda: SafetyHeads(config), ckpt.root / "safety_checker", torch.float32, stem=TRANSFORMERS_STEM, meta=False
        ).to(device)  # CLIP computes buffers
        processor = CLIPImageProcessor.from_pretrained(ckpt.root / "feature_extractor")
    if ckpt.has("watermarker"):
        state = read_state_dict(weight_files(ckpt.root / "watermarker"))
        mark = Image.fromarray(state["watermark_image"].to(torch.uint8).numpy(), mode="RGBA")
    if heads is None and mark is None:
        return None
    log.info("safety checker %s, watermark %s", "on" if heads else "absent", "on" if mark else "absent")
    return Safety(heads, processor, mark)
