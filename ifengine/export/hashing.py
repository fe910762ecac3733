"""Content hashes of source weights and exported files, with a cache so unchanged files are read once.

A full-size stage I checkpoint is ~18 GB; hashing it on every ``ifengine export`` would dominate an
up-to-date check, so a file's digest is remembered under its (path, size, mtime) and reused while
those are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from collections.abc import Iterable

from ..atomic import write_text_atomic

log = logging.getLogger(__name__)
_CHUNK = 16 * 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(value) -> str:
    """Digest of a JSON-able value, independent of dict order."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class HashCache:
    """sha256 per file, remembered in ``path`` (a JSON file) under the file's size and mtime."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self._entries: dict[str, dict] = {}
        if path is not None and path.is_file():
            try:
                self._entries = json.loads(path.read_text())
            except (OSError, ValueError):
                log.warning("ignoring unreadable hash cache %s", path)

    def file(self, path: Path) -> str:
        path = Path(path).resolve()
        stat = path.stat()
        key = str(path)
        entry = self._entries.get(key)
        if entry and entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns:
            return entry["sha256"]
        log.debug("hashing %s (%.1f MB)", path, stat.st_size / 1e6)
        digest = sha256_file(path)
        self._entries[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        return digest

    def remember(self, path: Path, digest: str) -> None:
        """Record a digest just computed elsewhere (the exporter hashes every file it writes)."""
        path = Path(path).resolve()
        stat = path.stat()
        self._entries[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}

    def files(self, paths: Iterable[Path], root: Path) -> str:
        """One digest over several files, each named relative to ``root`` (so a moved checkpoint hashes the same)."""
        listing = sorted((str(Path(p).resolve().relative_to(Path(root).resolve())), self.file(p)) for p in paths)
        return sha256_json(listing)

    def save(self) -> None:
        if self.path is None:
            return
        write_text_atomic(self.path, json.dumps(self._entries, indent=1, sort_keys=True))

    def save_if_possible(self) -> None:
        """``save`` where the folder may be read-only (graphs shipped read-only): the next run hashes again."""
        try:
            self.save()
        except OSError as err:
            log.debug("cannot save the hash cache %s (%s)", self.path, err)
