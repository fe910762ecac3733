"""Find exported graphs (``ifengine export`` manifests) and export the ones a build plan lacks.

The exporter writes one manifest per (component, precision) with the graph's path, the sha256 of every
file and the I/O spec; the builder reuses those manifests, and records their fingerprint in every engine
manifest so that a re-export makes the old engine detectably stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping

from ..export.spec import ComponentSpec
from ..facts import STAGE_OF
from .specs import spec_from_dict

log = logging.getLogger(__name__)
MANIFEST_KEYS = ("component", "precision", "graph", "graph_sha256", "spec")


@dataclass(frozen=True)
class ExportRecord:
    manifest: Path
    component: str
    precision: str
    graph: Path  # absolute path of the .onnx file
    graph_sha256: str
    source_sha256: str | None
    spec: ComponentSpec
    fingerprint: str  # covers every payload file: a >2 GB graph keeps its weights outside model.onnx
    stage: int | None = None
    run_defaults: dict | None = None  # the source checkpoint's run defaults (steps, guidance, noise level)

    def to_json(self) -> dict:
        return {
            "manifest": str(self.manifest),
            "graph": str(self.graph),
            "graph_sha256": self.graph_sha256,
            "source_sha256": self.source_sha256,
            "fingerprint": self.fingerprint,
        }


def read_export(path: str | Path) -> ExportRecord:
    """Read one export manifest (with the exporter's own reader when it is installed)."""
    path = Path(path)
    raw = _read_manifest(path)
    missing = [k for k in MANIFEST_KEYS if k not in raw]
    if missing:
        raise ValueError(f"{path} is not an export manifest (no {', '.join(missing)})")
    return ExportRecord(
        manifest=path.resolve(),
        component=raw["component"],
        precision=raw["precision"],
        graph=(path.parent / raw["graph"]).resolve(),
        graph_sha256=raw["graph_sha256"],
        source_sha256=raw.get("source_sha256"),
        spec=spec_from_dict(raw["spec"]),
        fingerprint=fingerprint(raw),
        stage=raw.get("stage"),
        run_defaults=raw.get("run_defaults"),
    )


def fingerprint(manifest: dict) -> str:
    """sha256 over the graph's and every payload file's sha256 (external weights included)."""
    files = {name: meta.get("sha256") for name, meta in sorted((manifest.get("files") or {}).items())}
    canonical = json.dumps({"graph_sha256": manifest["graph_sha256"], "files": files}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _read_manifest(path: Path) -> dict:
    try:
        from ..export.manifest import read_manifest  # the export extra may be absent
    except ModuleNotFoundError as err:
        if err.name != "ifengine.export.manifest":
            raise
        return json.loads(path.read_text())  # exporter not in this checkout: the agreed JSON layout
    return read_manifest(path)


def find_exports(artifacts: str | Path) -> dict[tuple[str, str], ExportRecord]:
    """Every export manifest under ``artifacts``, keyed by (component, precision); the newest wins."""
    found: dict[tuple[str, str], ExportRecord] = {}
    root = Path(artifacts)
    if not root.is_dir():
        return found
    for path in sorted(root.rglob("*.json"), key=lambda p: p.stat().st_mtime):
        try:
            record = read_export(path)
        except (ValueError, KeyError, TypeError, OSError):
            continue  # engine manifests, indexes and other JSON files live here too
        found[(record.component, record.precision)] = record
    log.debug("found %d exported graphs under %s", len(found), root)
    return found


def ensure_exports(
    pairs: list[tuple[str, str]], stages: Mapping[int, str | Path], artifacts: Path, progress: bool = True
) -> dict[tuple[str, str], ExportRecord]:
    """Make every (component, precision) exported and current; one exporter call per precision.

    Pairs whose checkpoint is given go through the exporter even when an artifact exists: it skips
    up-to-date artifacts by their source hashes and re-exports changed ones, so new weights give a new
    graph fingerprint and so a new engine. Without the checkpoint an existing artifact is used as is.
    """
    present = find_exports(artifacts)
    orphans = [(c, p) for c, p in pairs if (c, p) not in present and STAGE_OF[c] not in stages]
    if orphans:
        need = sorted({STAGE_OF[c] for c, _ in orphans})
        raise ValueError(
            f"{', '.join(f'{c} ({p})' for c, p in orphans)} not exported under {artifacts}: pass "
            f"{' '.join(f'--stage{n} CHECKPOINT' for n in need)} so `ifengine build` can export "
            f"them, or run `ifengine export` first"
        )
    todo = [(c, p) for c, p in pairs if STAGE_OF[c] in stages]
    if todo:
        from ..export.api import export_artifacts  # onnx: the export extra, only when exports are missing

        for precision in sorted({p for _, p in todo}):
            components = sorted({c for c, p in todo if p == precision})
            log.info(
                "exporting %s (%s) to %s (up-to-date graphs are kept)", ", ".join(components), precision, artifacts
            )
            export_artifacts(dict(stages), artifacts, components=components, precisions=[precision], progress=progress)
    found = find_exports(artifacts)
    still = [pair for pair in pairs if pair not in found]
    if still:
        raise ValueError(f"the exporter wrote no manifest for {still} under {artifacts}")
    return {pair: found[pair] for pair in pairs}
