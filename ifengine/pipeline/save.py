"""Write generated images as PNGs with their settings in the text metadata, atomically."""

from __future__ import annotations

import json
import os
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


OUT_ACCEPTS = "a .png file (one image) or a folder (numbered PNGs; created when missing)"


def check_out(out: Path, count: int | None = None) -> None:
    """Refuse an ``--out`` that is neither a .png file nor a folder, or that cannot be written to, before any
    work. ``count``: images the run makes (None: a folder is required, e.g. for many prompts)."""
    out = Path(out)
    is_png = out.suffix.lower() == ".png" and not out.is_dir()
    if out.is_dir() and out.suffix.lower() == ".png":
        raise ValueError(f"--out {out} is a folder named like a PNG file; give {OUT_ACCEPTS}")
    if not is_png and out.suffix and not out.is_dir():
        raise ValueError(
            f"--out {out} is neither a .png file nor a folder: its extension {out.suffix!r} is not .png. "
            f"Give {OUT_ACCEPTS} (an existing folder with a dot in its name is accepted too)"
        )
    if is_png and count is None:
        raise ValueError(f"--out {out} names one PNG file, but this run writes many images: give a folder")
    if out.exists() and not out.is_dir() and not is_png:
        raise ValueError(f"--out {out} is an existing file, not a folder; give {OUT_ACCEPTS}")
    _check_writable(out.parent if is_png else out, out)


def _check_writable(folder: Path, out: Path) -> None:
    """The nearest existing folder on the way to ``folder`` must be a folder we may create files in."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot write --out {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write --out {out}: no permission to create files in {existing}")


def output_paths(out: Path, count: int, seed: int | None) -> list[Path]:
    """A single ``.png`` path for one image, else numbered files in the folder ``out``."""
    check_out(out, count)
    if out.suffix.lower() == ".png" and not out.is_dir():
        if count != 1:
            raise ValueError(f"--out {out} names one PNG file but the run makes {count} images; give a folder instead")
        return [out]
    stem = f"if-{seed}" if seed is not None else "if"
    return [out / f"{stem}-{i:02d}.png" for i in range(count)]


def save_images(images: list[Image.Image], paths: list[Path], settings: dict) -> None:
    """Each PNG is written to a temporary file in its folder and renamed, so none is left half-written."""
    for index, (img, path) in enumerate(zip(images, paths, strict=True)):
        try:
            with replacing(path) as tmp:
                img.save(tmp, format="PNG", pnginfo=png_info(settings, index))
        except OSError as err:  # said in words, not as the temporary file's [Errno 2]
            raise ValueError(f"cannot write {path}: {err.strerror or err} in {path.parent}") from None
