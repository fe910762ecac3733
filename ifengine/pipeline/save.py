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
    for index, (img, path) in enumerate(zip(images, paths)):
        fd, tmp = _temporary(path)
        try:
            with os.fdopen(fd, "wb") as handle:
                img.save(handle, format="PNG", pnginfo=png_info(settings, index))
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved image should look like any file
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _temporary(path: Path) -> tuple[int, str]:
    """A temporary file beside ``path``; a folder that cannot be made or written is said in words, not as
    the temporary file's [Errno 2]."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise ValueError(f"cannot write {path}: {err.strerror or err} in {path.parent}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
