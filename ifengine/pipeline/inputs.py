"""Source images and masks for the editing modes: load, orient, convert, resize as the reference does.

Accepted: PIL images, file paths, numpy arrays (HWC uint8 0..255, or float 0..1) and torch tensors
(CHW or NCHW float 0..1, the layout of ``output_type="pt"``). Everything goes through PIL so a
resize is bit-for-bit the reference's: the short side becomes the stage resolution and the long side
the nearest multiple of 8 (or of the U-Net's downsampling when that is larger), bicubic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..stage.options import RequestError

ASPECT_TOLERANCE = 0.02


def load_image(source, what: str = "image") -> Image.Image:
    """Any accepted input -> an upright PIL image (EXIF orientation applied)."""
    if isinstance(source, (str, Path)):
        source = _open(Path(source), what)
    elif isinstance(source, np.ndarray):
        source = _from_array(source, what)
    elif isinstance(source, torch.Tensor):
        source = _from_array(_tensor_to_hwc(source, what), what)
    if not isinstance(source, Image.Image):
        raise RequestError(
            f"{what} must be a PIL image, a file path, a numpy array or a torch tensor, got {type(source).__name__}"
        )
    if source.width < 1 or source.height < 1:
        raise RequestError(f"{what} is empty ({source.width}x{source.height})")
    return ImageOps.exif_transpose(source)


def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise RequestError(f"{what} file {path} does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()  # keeps the EXIF orientation for load_image to apply
    except (UnidentifiedImageError, OSError) as err:
        raise RequestError(f"{what} file {path} is not a readable image ({err})") from None


def _tensor_to_hwc(t: torch.Tensor, what: str) -> np.ndarray:
    t = t.detach().float().cpu()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise RequestError(f"{what} tensor holds {t.shape[0]} images; pass one image")
        t = t[0]
    if t.dim() != 3 or t.shape[0] not in (1, 3, 4):
        raise RequestError(f"{what} tensor must be CHW or 1CHW with 1, 3 or 4 channels, got {tuple(t.shape)}")
    return t.permute(1, 2, 0).numpy()


def _from_array(a: np.ndarray, what: str) -> Image.Image:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or a.size == 0:
        raise RequestError(f"{what} array must be HxW, HxWx3 or HxWx4, got shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.asarray(a, dtype=np.float64)
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise RequestError(f"float {what} arrays must hold values in [0, 1] (uint8 arrays: 0..255)")
        a = (a * 255).round().astype(np.uint8)
    return Image.fromarray(a)


def target_size(width: int, height: int, short: int, multiple: int = 8) -> tuple[int, int]:
    """(width, height) with the short side ``short`` and the long side rounded to ``multiple``."""
    coef = width / height
    if coef >= 1:
        return max(multiple, int(round(short / multiple * coef) * multiple)), short
    return short, max(multiple, int(round(short / multiple / coef) * multiple))


def _resize(img: Image.Image, short: int, multiple: int) -> Image.Image:
    size = target_size(img.width, img.height, short, multiple)
    return img.resize(size, resample=Image.BICUBIC, reducing_gap=None)


def image_tensor(img: Image.Image, short: int, multiple: int = 8) -> torch.Tensor:
    """(1, 3, H, W) float32 in [-1, 1] at the stage resolution; RGBA and greyscale become RGB."""
    rgb = _resize(img.convert("RGB"), short, multiple)
    arr = np.asarray(rgb).astype(np.float32) / 127.5 - 1
    return torch.from_numpy(arr.transpose(2, 0, 1)).unsqueeze(0)


def mask_tensor(mask: Image.Image, short: int, multiple: int = 8) -> torch.Tensor:
    """(1, 1, H, W) float32, 1 where the image is repainted (white), binarised at 0.5."""
    grey = np.asarray(_resize(mask.convert("L"), short, multiple)).astype(np.float32) / 255.0
    return torch.from_numpy((grey >= 0.5).astype(np.float32))[None, None]


def check_mask(image: Image.Image, mask: Image.Image) -> None:
    """Refuse masks that cannot line up with the image, or that would change nothing."""
    ia, ma = image.width / image.height, mask.width / mask.height
    if abs(ia - ma) > ASPECT_TOLERANCE * ia:
        raise RequestError(
            f"mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}: "
            "their aspect ratios differ, so the mask cannot be placed on the image"
        )
    if np.asarray(mask.convert("L")).max() < 128:
        raise RequestError(
            "the mask has no white pixels: inpainting would change nothing (white marks the area to repaint)"
        )


def check_strength(strength, what: str = "strength") -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise RequestError(f"{what} must be a number in (0, 1], got {strength!r}")
    return float(strength)
