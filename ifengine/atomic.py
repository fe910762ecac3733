"""Files are never left half-written: the one atomic write every module uses.

``replacing(path)`` yields a temporary path in the target's folder; when the block succeeds the file is
fsynced (the rename must not land before the bytes do), made readable like any other file (mkstemp
creates it private) and renamed over ``path``; when it fails the temporary file is removed and ``path``
keeps its old content. ``replacing_folder(path)`` does the same for a whole folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def replacing_folder(path: str | Path, done: Callable[[Path], bool] = lambda path: False) -> Iterator[Path]:
    """A temporary folder beside ``path``; when the block succeeds every file in it is fsynced and the folder
    renamed to ``path`` (an incomplete folder left there by a crash is removed first), unless ``done(path)``
    says another process published a complete one meanwhile. On failure the temporary folder goes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
            _fsync(file)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates it private
        if done(path):
            return
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any, **dumps: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, **{"indent": 2, **dumps}) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
