"""Errors about files a user has on disk: one line that names the file and says what fixes it.

Loaders wrap the third-party readers (safetensors, json, tokenizers, ONNX Runtime) with these helpers so
a truncated or corrupt file surfaces as a ``DamagedFileError`` (a ``ValueError``: the CLI prints it as one
line with exit status 2) instead of the library's traceback.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

REDOWNLOAD = "download the checkpoint again (or delete the folder and let ifengine fetch it)"
REEXPORT = "export the artifact again with `ifengine export`"
REBUILD = "rebuild the engine with `ifengine build`"


def one_line(text: object, limit: int = 300) -> str:
    """A library's message squeezed onto one line (tracebacks and multi-line reports are cut)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class IFEngineError(Exception):
    """The root of every error ifengine raises. Each subclass also keeps the builtin base users catch
    (``ValueError`` for bad input or files, ``RuntimeError`` for a broken state, ...)."""


class DamagedFileError(IFEngineError, ValueError):
    """A file that exists but cannot be read: truncated, corrupt, or not what its name says."""

    def __init__(self, path: str | Path, detail: object, action: str = REDOWNLOAD):
        self.path, self.action = Path(path), action
        super().__init__(f"{path} is damaged or incomplete ({one_line(detail)}); {action}")


def read_json(path: str | Path, action: str = REDOWNLOAD) -> Any:
    """``json.loads`` of a file, as a DamagedFileError when the file is unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DamagedFileError(path, err, action) from None


@contextlib.contextmanager
def damaged_folder(folder: str | Path, action: str = REDOWNLOAD):
    """transformers and tokenizers raise bare Exceptions (or OSErrors) for corrupt files: one line naming
    the folder. ifengine's own errors pass through unchanged."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - SafetensorError, tokenizers' Exception, OSError, JSON errors
        if isinstance(err, IFEngineError):
            raise
        raise DamagedFileError(folder, err, action) from None


# Optional dependencies: the extra of pyproject.toml that installs each, and what else to say about it.
EXTRA_NOTES = {"export": ' (on a GPU machine install "ifengine[gpu]" instead: it includes onnx and onnxruntime-gpu)'}


class MissingExtra(IFEngineError, ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` that adds it."""


def missing_extra(module: str, extra: str, purpose: str) -> MissingExtra:
    """The one-line error for ``purpose`` lacking ``module``, naming the extra that installs it."""
    note = EXTRA_NOTES.get(extra, "")
    return MissingExtra(f'{purpose} needs {module}, which is not installed: pip install "ifengine[{extra}]"{note}')


def require_extra(modules: tuple[str, ...], extra: str, purpose: str) -> None:
    """Raise ``missing_extra`` for the first of ``modules`` that cannot be imported (checked without importing)."""
    import importlib.util

    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise missing_extra(module, extra, purpose)
