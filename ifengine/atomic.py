"""Files are never left half-written: the one atomic write every module uses.

``replacing(path)`` yields a temporary path in the target's folder; when the block succeeds the file is
fsynced (the rename must not land before the bytes do), made readable like any other file (mkstemp
creates it private) and renamed over ``path``; when it fails the temporary file is removed and ``path``
keeps its old content.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
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
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
