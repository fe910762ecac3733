"""The manifest of one exported artifact: what the graph is, where it came from, how to feed it.

One ``manifest.json`` per (component, precision) under ``ARTIFACTS/<component>/<precision>/``. It is the
artifact's commit point: written last and atomically, it names the payload folder holding the graph
(``graph``, relative to the manifest's folder) and the size and sha256 of every file in it, so a reader
can tell a complete artifact from a truncated or foreign one without opening the graph.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from collections.abc import Iterable

from ..atomic import write_json_atomic
from .. import __version__
from ..errors import IFEngineError
from .hashing import HashCache, sha256_file

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
FORMAT = 1
REQUIRED = (
    "format",
    "component",
    "precision",
    "graph",
    "graph_sha256",
    "files",
    "source_sha256",
    "checkpoint_sha256",
    "config",
    "spec",
    "opset",
    "exporter",
    "ifengine_version",
)


class ManifestError(IFEngineError, ValueError):
    """A manifest that is missing, unreadable, or not one this ifengine can use."""


class ArtifactError(IFEngineError, ValueError):
    """An artifact whose files are missing, truncated or altered, or that belongs to another export."""


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest at ``path`` (a manifest.json or its folder), checked for the keys every manifest has."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"no manifest at {path}: export the artifact first (ifengine export ...)") from None
    except (OSError, ValueError) as err:
        raise ManifestError(f"{path} is not a readable manifest ({err}); export the artifact again") from None
    missing = [k for k in REQUIRED if k not in manifest] if isinstance(manifest, dict) else list(REQUIRED)
    if missing:
        raise ManifestError(f"{path} lacks {', '.join(missing)}: not an ifengine artifact manifest")
    if manifest["format"] != FORMAT:
        raise ManifestError(f"{path} has manifest format {manifest['format']}, this ifengine reads {FORMAT}")
    return manifest


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write atomically: a reader sees the old manifest or the new one, never a partial file."""
    write_json_atomic(path, manifest, sort_keys=True)


def check_version(manifest: dict[str, Any], path: Path) -> None:
    if manifest["ifengine_version"] != __version__:
        raise ArtifactError(
            f"{path} was exported by ifengine {manifest['ifengine_version']}, this is {__version__}: graphs and "
            "their I/O may differ between versions. Export again with `ifengine export`."
        )


def check_files(manifest: dict[str, Any], folder: Path, full: bool = False, hashes: HashCache | None = None) -> None:
    """Every file the manifest lists exists with its recorded size and, with ``full`` or ``hashes``, its
    sha256 (``hashes`` remembers digests by size and mtime, so an unchanged graph is hashed once)."""
    for name, meta in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{path} is missing (listed by {folder / MANIFEST_NAME}); export the artifact again")
        size = path.stat().st_size
        if size != meta["size"]:
            raise ArtifactError(
                f"{path} has {size} bytes but the manifest records {meta['size']}: the file is "
                "truncated or was replaced; export the artifact again"
            )
        if full or hashes is not None:
            digest = hashes.file(path) if hashes is not None and not full else sha256_file(path)
            if digest != meta["sha256"]:
                raise ArtifactError(
                    f"{path} does not match the sha256 its manifest records (the file was altered or is "
                    "corrupt); export the artifact again"
                )


def recorded_defaults(manifests: Iterable[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Stage -> the run defaults its source checkpoint recorded, as exported graph or engine manifests carry
    them (``run_defaults``; manifests without them, from older exports, record nothing)."""
    out: dict[int, dict[str, Any]] = {}
    for manifest in manifests:
        if isinstance(manifest.get("run_defaults"), dict) and manifest.get("stage") in (1, 2, 3):
            out.setdefault(int(manifest["stage"]), manifest["run_defaults"])
    return out


def file_entries(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file under ``folder``, keyed by path relative to it."""
    return {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
