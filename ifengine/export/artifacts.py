"""The artifacts folder: one directory per (component, precision), replaced atomically.

Layout::

    ARTIFACTS/<component>/<precision>/manifest.json      the commit point (see manifest.py)
    ARTIFACTS/<component>/<precision>/<payload>/model.onnx [+ model.onnx.data, tokenizer/]
    ARTIFACTS/<component>/<precision>/.tmp-<id>/         an export in progress

An export writes into a ``.tmp-`` folder, renames it to a fresh payload name, then replaces the manifest
(an atomic ``os.replace``) and only then deletes the previous payload. Interrupted at any point, the
manifest still names a complete payload (the old or the new one); a failed export removes its temporary
folder, and a killed one's is removed by the next export of that artifact. A lock file keeps two exports
of the same artifact from running at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any
from collections.abc import Iterator

from .manifest import MANIFEST_NAME, ManifestError, check_files, read_manifest, write_manifest

log = logging.getLogger(__name__)
TMP_PREFIX = ".tmp-"
GRAPH_NAME = "model.onnx"
HASH_CACHE = ".hash-cache.json"


class ArtifactStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def folder(self, component: str, precision: str) -> Path:
        return self.root / component / precision

    def manifest_path(self, component: str, precision: str) -> Path:
        return self.folder(component, precision) / MANIFEST_NAME

    @property
    def hash_cache_path(self) -> Path:
        return self.root / HASH_CACHE

    def up_to_date(self, component: str, precision: str, expected: dict[str, Any], hashes=None) -> bool:
        """The artifact exists, is intact (file sizes; with a ``HashCache``, sha256s: a damaged graph is
        exported again, as its load error says), and its manifest records ``expected``."""
        path = self.manifest_path(component, precision)
        try:
            manifest = read_manifest(path)
            check_files(manifest, path.parent, hashes=hashes)
        except (ManifestError, ValueError) as err:
            log.debug("%s %s needs export: %s", component, precision, err)
            return False
        stale = [k for k, v in expected.items() if manifest.get(k) != v]
        if stale:
            log.info("%s %s is out of date (%s changed)", component, precision, ", ".join(stale))
        return not stale

    @contextlib.contextmanager
    def staging(self, component: str, precision: str) -> Iterator[Path]:
        """A fresh temporary folder for one export, removed unless it was published."""
        folder = self.folder(component, precision)
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(folder):
            _remove_stale(folder)
            tmp = folder / f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}"
            tmp.mkdir()
            try:
                yield tmp
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def publish(self, staged: Path, manifest: dict[str, Any]) -> Path:
        """Move ``staged`` into place under a new payload name and commit ``manifest`` (paths relative to it)."""
        folder = staged.parent
        payload = folder / uuid.uuid4().hex[:12]
        os.rename(staged, payload)
        rel = lambda name: f"{payload.name}/{name}"  # noqa: E731
        manifest = {
            **manifest,
            "graph": rel(manifest["graph"]),
            "files": {rel(k): v for k, v in manifest["files"].items()},
            "assets": {k: rel(v) for k, v in manifest.get("assets", {}).items()},
        }
        path = folder / MANIFEST_NAME
        write_manifest(path, manifest)
        _remove_stale(folder, keep=payload.name)
        return path


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another ifengine export is writing {folder}; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale(folder: Path, keep: str | None = None) -> None:
    """Delete payloads the manifest does not name and temporary folders of killed exports."""
    try:
        current = read_manifest(folder / MANIFEST_NAME)["graph"].split("/")[0]
    except ManifestError:
        current = None
    for entry in folder.iterdir():
        if entry.is_dir() and entry.name not in (current, keep) and _removable(entry):
            log.debug("removing stale %s", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _removable(entry: Path) -> bool:
    # only what this module creates: temporary folders and payloads (named by 12 hex digits)
    name = entry.name
    return name.startswith(TMP_PREFIX) or (len(name) == 12 and all(c in "0123456789abcdef" for c in name))
