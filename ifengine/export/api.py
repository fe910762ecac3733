"""Export the cascade's networks and step graphs to ONNX artifacts: the one entry point.

``export_artifacts`` resolves the checkpoints, plans one job per (component, precision), skips jobs
whose artifact is up to date (same source hash, spec, opset, exporter and ifengine version), and
exports the rest one at a time, each published atomically (``artifacts.py``). It returns the manifest
path of every requested artifact, exported now or found up to date.
"""

from __future__ import annotations

import gc
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..memory.sizes import GiB
from ..models.checkpoint import Checkpoint, read_run_defaults, resolve
from ..stage.options import checkpoint_defaults, stage_record
from . import onnx_required  # noqa: F401 - first: a missing onnx names the extra that installs it
from .artifacts import GRAPH_NAME, ArtifactStore
from .calibration import CalibrationSettings
from .hashing import HashCache, sha256_file, sha256_json
from .manifest import FORMAT, file_entries, read_manifest
from .onnx_export import convert_opset, data_name, exporter_info, trace_to_onnx
from .precision import DEFAULT_OPSET, Variant, supports, variant
from .quantize import quantize_weight_only
from .sources import ComponentSource, plan_sources
from .verify import check_graph
from .inputs import random_inputs

log = logging.getLogger(__name__)
DEFAULT_PRECISION = "fp16"  # for checkpoints that record none (the IF releases ship fp16 weights)


@dataclass(frozen=True)
class ExportOptions:
    opset: int = DEFAULT_OPSET  # bf16 graphs are always opset 22
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    int8_fidelity: bool = True  # measure int8 vs fp32 on held-out inputs and record it in the manifest


def export_artifacts(
    stages: Mapping[int, str | Path],
    out: str | Path,
    components: list[str] | None = None,
    precisions: list[str] | None = None,
    progress: bool = True,
    options: ExportOptions = ExportOptions(),
    variant: str | None = None,
) -> list[Path]:
    """Export ``components`` (default: all the checkpoints provide) in each of ``precisions`` to ``out``.

    ``stages`` maps 1/2/3 to checkpoint folders (Hub layout) or Hub ids; ``variant`` reads e.g. the fp16
    weight files of a checkpoint that ships both. ``precisions`` default: what the checkpoints record
    (``read_run_defaults``), else fp16."""
    ckpts = {int(n): resolve(p, int(n), variant) for n, p in stages.items() if p is not None}
    if not ckpts:
        raise ValueError("give at least one checkpoint (stage 1, 2 or 3)")
    precisions = precisions or default_precisions(ckpts)
    for p in precisions:
        supports("t5", p)  # raises on an unknown precision name
    every = plan_sources(ckpts, variant=variant)
    sources = plan_sources(ckpts, components, variant) if components else every
    jobs = [(s, p) for s in sources for p in precisions if _supported(s, p)]
    store = ArtifactStore(out)
    hashes = HashCache(store.hash_cache_path)
    digests = _stage_digests(ckpts, every, hashes)
    paths = []
    bar = tqdm(jobs, desc="ifengine export", unit="graph", disable=not progress)
    for source, precision in bar:
        bar.set_postfix_str(f"{source.name} {precision}")
        expected = _expected(source, precision, options, hashes, digests)
        if store.up_to_date(source.name, precision, expected, hashes):
            log.info("%s %s is up to date", source.name, precision)
            paths.append(store.manifest_path(source.name, precision))
            continue
        paths.append(_export_one(source, precision, store, expected, options, ckpts))
        _remember_files(paths[-1], hashes)  # so loading the new graph does not hash it again
        hashes.save()
    hashes.save()
    return paths


def _remember_files(manifest_path: Path, hashes: HashCache) -> None:
    for name, meta in read_manifest(manifest_path)["files"].items():
        hashes.remember(manifest_path.parent / name, meta["sha256"])


def default_precisions(ckpts: Mapping[int, Checkpoint]) -> list[str]:
    """The precisions the checkpoints record as their default (``read_run_defaults``), else fp16."""
    recorded = sorted({d["precision"] for c in ckpts.values() if "precision" in (d := read_run_defaults(c.root))})
    return recorded or [DEFAULT_PRECISION]


def _supported(source: ComponentSource, precision: str) -> bool:
    if supports(source.name, precision):
        return True
    log.info("skipping %s %s: int8 graphs cover the U-Nets, the step graphs and T5", source.name, precision)
    return False


def _stage_digests(
    ckpts: Mapping[int, Checkpoint], sources: list[ComponentSource], hashes: HashCache
) -> dict[int, str]:
    """One digest per checkpoint over every file any of its components is made from."""
    digests = {}
    for stage, ckpt in ckpts.items():
        files = {f for s in sources if s.stage == stage for f in s.files} | {ckpt.root / "model_index.json"}
        digests[stage] = hashes.files(files, ckpt.root)
    return digests


def _expected(
    source: ComponentSource, precision: str, options: ExportOptions, hashes: HashCache, digests: Mapping[int, str]
) -> dict[str, Any]:
    """Everything an up-to-date artifact's manifest must record."""
    v = variant(source, precision, options.opset)
    return {
        "format": FORMAT,
        "component": source.name,
        "precision": precision,
        "stage": source.stage,
        "source_sha256": hashes.files(source.files, source.checkpoint.root),
        "checkpoint_sha256": digests[source.stage],
        "config": source.config,
        "spec": source.spec.with_dtype(v.io_dtype).to_dict(),
        "opset": v.opset,
        "exporter": exporter_info(),
        "ifengine_version": __version__,
        "variant": _variant_dict(v),
        "calibration": asdict(options.calibration) if v.quantize == "static" else None,
        # the source checkpoint's run defaults travel with its graphs (and from there into engines)
        "run_defaults": stage_record(checkpoint_defaults({source.stage: source.checkpoint.root}), source.stage),
    }


def _variant_dict(v: Variant) -> dict[str, Any]:
    return {
        "weights": str(v.weights).removeprefix("torch."),
        "io_dtype": v.io_dtype,
        "quantize": v.quantize,
        "note": v.note,
    }


def _export_one(
    source: ComponentSource,
    precision: str,
    store: ArtifactStore,
    expected: dict[str, Any],
    options: ExportOptions,
    ckpts: Mapping[int, Checkpoint],
) -> Path:
    v = variant(source, precision, options.opset)
    spec = source.spec.with_dtype(v.io_dtype)
    log.info("exporting %s %s%s", source.name, precision, f" ({v.note})" if v.note else "")
    start = time.perf_counter()
    with store.staging(source.name, precision) as staged:
        graph = staged / GRAPH_NAME
        extra = _build_graph(source, v, spec, graph, options, ckpts)
        check_graph(graph, spec)
        assets = _copy_assets(source, staged)
        manifest = {
            **expected,
            **extra,
            "graph": GRAPH_NAME,
            "graph_sha256": sha256_file(graph),
            "external_data": (staged / data_name(graph)).exists(),
            "assets": assets,
            "source": str(source.checkpoint.root),
            "export_seconds": round(time.perf_counter() - start, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": file_entries(staged),
        }
        path = store.publish(staged, manifest)
    log.info("exported %s %s in %.1f s -> %s", source.name, precision, time.perf_counter() - start, path.parent)
    return path


def _build_graph(
    source: ComponentSource, v: Variant, spec, graph: Path, options: ExportOptions, ckpts: Mapping[int, Checkpoint]
) -> dict[str, Any]:
    """Write the variant's graph at ``graph``; returns manifest extras (int8 statistics)."""

    target = graph.with_name("fp32.onnx") if v.quantize else graph
    module = source.load(v.weights)
    args = random_inputs(spec, trace_dims(spec), source.config, torch.Generator().manual_seed(0))
    trace_to_onnx(module, spec, tuple(args.values()), target, opset=options.opset)
    big = sum(p.numel() * p.element_size() for p in module.parameters()) > GiB
    del module, args
    if big:
        gc.collect()  # release a large model's weights before quantization or opset conversion loads the graph
    if v.precision == "bf16":
        convert_opset(target, v.opset)
    if v.quantize is None:
        return {}
    try:
        if v.quantize == "weight_only":
            return {
                "quantization": {
                    "method": "int8 weight-only, per-channel symmetric (zero point 0)",
                    "weights": quantize_weight_only(target, graph),
                }
            }
        from .int8 import quantize_component  # onnxruntime.quantization: only for int8 exports

        return {"quantization": quantize_component(source, spec, target, graph, options, ckpts)}
    finally:
        for p in (target, target.with_name(data_name(target))):
            p.unlink(missing_ok=True)


TRACE_TOKENS = 16  # short prompts trace 5x faster than 77 tokens; the tokens axis stays dynamic


def trace_dims(spec) -> dict[str, int]:
    """Dims the tracer runs at: the cheapest image size, a short prompt, a batch of 2 (no batch-1 special
    case is traced). Every axis stays dynamic; the tests run the graphs at other sizes."""
    dims = spec.dims_at("opt")
    for name in ("height", "width"):
        if name in dims:
            dims[name] = spec.ranges[name].min
    if "tokens" in dims:
        dims["tokens"] = max(spec.ranges["tokens"].min, min(TRACE_TOKENS, dims["tokens"]))
    if "batch" in dims:
        dims["batch"] = min(max(2, dims["batch"]), spec.ranges["batch"].max)
    return spec.complete({k: v for k, v in dims.items() if k not in spec.derived})


def _copy_assets(source: ComponentSource, staged: Path) -> dict[str, str]:
    for name, folder in source.assets.items():
        shutil.copytree(folder, staged / name)
    return {name: name for name in source.assets}


def artifact_key(manifest: Mapping[str, Any]) -> str:
    """A short id of an artifact's content (its graph hash and spec), e.g. for engine cache names."""
    return sha256_json([manifest["graph_sha256"], manifest["spec"]])[:16]
