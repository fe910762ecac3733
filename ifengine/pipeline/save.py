"""Write generated images as PNGs with their settings in the text metadata, atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo


def png_info(settings: dict, index: int) -> PngInfo:
    info = PngInfo()
    prompts = settings.get("prompt") or [""]
    per_prompt = max(1, settings.get("num_images_per_prompt", 1))
    info.add_text("prompt", prompts[min(index // per_prompt, len(prompts) - 1)])
    info.add_text("seed", str(settings.get("seed")))
    info.add_text("ifengine", json.dumps(settings, sort_keys=True, default=str))
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
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                img.save(handle, format="PNG", pnginfo=png_info(settings, index))
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved image should look like any file
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
