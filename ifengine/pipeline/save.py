"""Write generated images as PNGs with their settings in the text metadata, atomically."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..atomic import replacing
from .metadata import PARAMETERS_KEY, SETTINGS_KEY, image_settings, parameters_text


def png_info(settings: dict, index: int) -> PngInfo:
    """A1111's ``parameters`` text and the full settings as JSON (``metadata.py``); no plain ``prompt`` chunk."""
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, parameters_text(settings, index))
    info.add_text(SETTINGS_KEY, json.dumps(image_settings(settings, index), sort_keys=True, default=str))
    return info


def output_paths(out: Path, count: int, seed: int | None) -> list[Path]:
    """A single ``.png`` path for one image, else numbered files in the folder ``out``."""
    if out.suffix.lower() == ".png":
        if count != 1:
            raise ValueError(f"--out {out} names one PNG file but the run makes {count} images; give a folder instead")
        return [out]
    stem = f"if-{seed}" if seed is not None else "if"
    return [out / f"{stem}-{i:02d}.png" for i in range(count)]


def save_images(images: list[Image.Image], paths: list[Path], settings: dict) -> None:
    """Each PNG is written to a temporary file in its folder and renamed, so none is left half-written."""
    for index, (img, path) in enumerate(zip(images, paths, strict=True)):
        with replacing(path) as tmp:
            img.save(tmp, format="PNG", pnginfo=png_info(settings, index))
