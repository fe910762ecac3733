"""Shared helpers for the export and ONNX Runtime tests: one artifacts folder per session, exported lazily.

Every precision is exported at most once per test session (``Exports.get``); tests that modify artifacts
copy them first (``Exports.copy``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from ifengine.export.api import ExportOptions, export_artifacts
from ifengine.export.calibration import CalibrationSettings
from ifengine.export.manifest import read_manifest

# Few calibration samples keep the int8 tests quick; the fidelity bar is still the 0.98.
OPTIONS = ExportOptions(calibration=CalibrationSettings(samples=8, held_out_samples=4))


class Exports:
    def __init__(self, root: Path, stages: dict[int, Path]):
        self.root, self.stages, self._done = root, stages, set()

    def get(self, precision: str, components: tuple[str, ...] | None = None) -> Path:
        key = (precision, components)
        if key not in self._done:
            export_artifacts(
                self.stages,
                self.root,
                components=list(components) if components else None,
                precisions=[precision],
                progress=False,
                options=OPTIONS,
            )
            self._done.add(key)
        return self.root

    def manifest_path(self, component: str, precision: str) -> Path:
        self.get(precision, (component,))
        return self.root / component / precision / "manifest.json"

    def manifest(self, component: str, precision: str) -> dict:
        return read_manifest(self.manifest_path(component, precision))

    def graph(self, component: str, precision: str) -> Path:
        path = self.manifest_path(component, precision)
        return path.parent / read_manifest(path)["graph"]

    def copy(self, dest: Path, precision: str = "fp32") -> Path:
        shutil.copytree(self.get(precision), dest, ignore=shutil.ignore_patterns(".lock"))
        return dest


def relative_error(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().numpy()


_SHARED: dict[tuple, Exports] = {}


def shared_exports(tmp_path_factory, stage1_dir, stage2_dir, stage3_dir) -> Exports:
    """One Exports per session, whichever test module asks first (fixtures in modules are per module)."""
    key = (str(stage1_dir), str(stage2_dir), str(stage3_dir))
    if key not in _SHARED:
        _SHARED[key] = Exports(tmp_path_factory.mktemp("artifacts"), {1: stage1_dir, 2: stage2_dir, 3: stage3_dir})
    return _SHARED[key]
