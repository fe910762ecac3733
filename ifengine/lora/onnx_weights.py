"""Put LoRA-changed weights into an exported ONNX graph without exporting it again.

The exporter keeps each U-Net weight as one initializer, but not always under its parameter name: linear
weights are stored transposed (``export/graphs.py``, PretransposedLinear) and constant folding renames
what it touches. So initializers are found by content: each changed weight's base value (in the graph's
dtype, as is or transposed) identifies the initializer holding it, which gets the new value in the same
layout. Only the changed bytes move: with external data the graph file stays as it is and the data file is
rewritten (atomically), and the artifact manifest's file sizes/hashes are updated. A weight that is not
found (int8 graphs quantised it; a folded constant mixed it with others) is an error: export again.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx.external_data_helper import uses_external_data

from ..atomic import replacing
from ..dtypes import onnx_type, torch_dtype
from .adapters import LoraError, WeightUpdate
from ..export.hashing import sha256_file
from ..export.manifest import MANIFEST_NAME, read_manifest, write_manifest

log = logging.getLogger(__name__)
# The initializer types a LoRA can patch in place.
ONNX_DTYPES = {onnx_type(name): torch_dtype(name) for name in ("float32", "float16")}


@dataclass(frozen=True)
class _Found:
    tensor: onnx.TensorProto
    update: WeightUpdate
    transposed: bool


def refit_onnx(graph: str | Path, updates: Sequence[WeightUpdate]) -> int:
    """Write ``updates`` into ``graph`` (and its external data file); returns how many initializers changed."""
    graph = Path(graph)
    model = onnx.load(str(graph), load_external_data=False)
    found = _find(model, graph.parent, updates, graph)
    external = [f for f in found if uses_external_data(f.tensor)]
    inline = [f for f in found if not uses_external_data(f.tensor)]
    if external:
        _patch_external(graph.parent, external)
    if inline:
        for f in inline:
            f.tensor.raw_data = _bytes(f, _dtype(f.tensor))
        _save_atomic(model, graph)
    changed = {graph.parent / _location(f.tensor) for f in external} | ({graph} if inline else set())
    _update_manifest(graph, changed)
    log.info("refit %d weights of %s (%d external, %d inline)", len(found), graph, len(external), len(inline))
    return len(found)


def _find(model, folder: Path, updates: Sequence[WeightUpdate], graph: Path) -> list[_Found]:
    wanted: dict[tuple, tuple[WeightUpdate, bool]] = {}
    dtypes = {ONNX_DTYPES.get(t.data_type) for t in model.graph.initializer} - {None}
    for update in updates:
        for dtype in dtypes:
            base = update.base.to("cpu", dtype)
            wanted[_key(base)] = (update, False)
            if base.dim() == 2:
                wanted[_key(base.t().contiguous())] = (update, True)
    found, seen = [], set()
    for tensor in model.graph.initializer:
        if tensor.data_type not in ONNX_DTYPES:
            continue
        hit = wanted.get(_key(_read(tensor, folder)))
        if hit is not None:
            found.append(_Found(tensor, *hit))
            seen.add(hit[0].name)
    missing = [u.name for u in updates if u.name not in seen]
    if missing:
        raise LoraError(
            f"{len(missing)} LoRA-changed weights are not in {graph} (e.g. {missing[0]}): int8 graphs and folded "
            "constants hold them in another form; export the graph again from the fused U-Net"
        )
    return found


def named_weights(graph: str | Path, updates: Sequence[WeightUpdate]) -> dict[str, np.ndarray]:
    """Initializer name -> new value (graph dtype and layout) of each changed weight: what a TensorRT
    Refitter's ``set_named_weights`` takes for an engine built from ``graph`` (its weights keep the ONNX
    initializer names)."""
    graph = Path(graph)
    model = onnx.load(str(graph), load_external_data=False)
    out = {}
    for f in _find(model, graph.parent, updates, graph):
        dtype = _dtype(f.tensor)
        weight = f.update.weight.detach().to("cpu", dtype)
        out[f.tensor.name] = np.ascontiguousarray((weight.t() if f.transposed else weight).numpy())
    return out


def _key(tensor: torch.Tensor) -> tuple:
    data = tensor.contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
    return tuple(tensor.shape), str(tensor.dtype), hashlib.sha256(data).hexdigest()


def _read(tensor: onnx.TensorProto, folder: Path) -> torch.Tensor:
    dtype = _dtype(tensor)
    if uses_external_data(tensor):
        info = {e.key: e.value for e in tensor.external_data}
        with open(folder / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            raw = f.read(int(info["length"]))
    else:
        raw = tensor.raw_data or numpy_helper.to_array(tensor).tobytes()
    array = np.frombuffer(raw, dtype=np.uint8).copy()
    return torch.from_numpy(array).view(dtype).reshape(tuple(tensor.dims))


def _dtype(tensor: onnx.TensorProto) -> torch.dtype:
    return ONNX_DTYPES[tensor.data_type]


def _bytes(found: _Found, dtype: torch.dtype) -> bytes:
    weight = found.update.weight.detach().to("cpu", dtype)
    weight = weight.t() if found.transposed else weight
    return weight.contiguous().view(torch.uint8).numpy().tobytes()


def _patch_external(folder: Path, found: list[_Found]) -> None:
    """Copy each data file, overwrite the changed byte ranges, and rename it into place."""
    by_file: dict[str, list[_Found]] = {}
    for f in found:
        by_file.setdefault(_location(f.tensor), []).append(f)
    for location, items in by_file.items():
        target = folder / location
        with replacing(target) as tmp:
            shutil.copyfile(target, tmp)
            with open(tmp, "r+b") as out:
                for f in items:
                    info = {e.key: e.value for e in f.tensor.external_data}
                    data = _bytes(f, _dtype(f.tensor))
                    if len(data) != int(info["length"]):
                        raise LoraError(f"{target}: {f.update.name} would change size; export the graph again")
                    out.seek(int(info.get("offset", 0)))
                    out.write(data)


def _location(tensor: onnx.TensorProto) -> str:
    return {e.key: e.value for e in tensor.external_data}["location"]


def _save_atomic(model: onnx.ModelProto, graph: Path) -> None:
    with replacing(graph) as tmp:  # in the graph's folder: external references still find the data file
        onnx.save_model(model, str(tmp))


def _update_manifest(graph: Path, changed: set[Path]) -> None:
    """An artifact's manifest records each file's size and sha256: refresh those of the changed files."""

    # export/ keeps the manifest next to the graph's folder (<component>/<precision>/manifest.json)
    path = next((p / MANIFEST_NAME for p in (graph.parent, graph.parent.parent) if (p / MANIFEST_NAME).is_file()), None)
    if path is None:
        return
    manifest = read_manifest(path)
    for file in changed:
        name = str(file.relative_to(path.parent))
        if name in manifest.get("files", {}):
            manifest["files"][name].update(size=file.stat().st_size, sha256=sha256_file(file))
        if name == manifest.get("graph"):  # loading checks the graph's hash too
            manifest["graph_sha256"] = manifest["files"][name]["sha256"]
    manifest["lora_refit"] = True  # the weights are no longer the exported checkpoint's
    write_manifest(path, manifest)


def refit_artifact(manifest: str | Path, updates: Sequence[WeightUpdate]) -> int:
    """``refit_onnx`` on the graph an ``ifengine export`` manifest names (e.g. unet1/fp16/manifest.json)."""

    manifest = Path(manifest)
    return refit_onnx(manifest.parent / read_manifest(manifest)["graph"], updates)
