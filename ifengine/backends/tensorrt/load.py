"""Loading a cascade's TensorRT engines: every cache check first, TensorRT only after they all pass.

Order: the engines folder exists and has engines (``EngineMissing``), this machine's target (GPU +
TensorRT version; TensorRT is imported here), every engine of every requested component verified
against its manifest — built for this target (``EngineForeign``), complete and intact
(``EngineCorrupt``), built from the graph exported under ``artifacts`` now (``EngineStale``) — and
only then deserialisation, weight-streaming budgets, one shared scratch allocation and the contexts.
With an explicit ``target`` the checks run without TensorRT (how the CPU tests reach them).
"""

from __future__ import annotations

import dataclasses

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...dtypes import torch_dtype
from ...engines import bindings, trt_runtime as trt_rt
from ...engines.cache import INDEX, Target, engine_manifests, load_verified, target_index
from ...engines.errors import EngineMissing
from ...engines.exports import find_exports
from ...engines.inductor_target import current_inductor_target
from ...engines.io_plan import IOPlan
from ...facts import ALL_COMPONENTS
from ...memory.sizes import GiB
from .engines import EngineNetwork, TensorRTEngine, TensorRTEngineSet, _peek
from ...models.checkpoint import resolve, source_name
from ..assemble import assemble, torch_parts
from ..inductor.load import inductor_folders, open_inductor, verify_inductor
from ...export.manifest import recorded_defaults
from ...models.checkpoint import read_run_defaults
from ...stage.options import run_defaults
from ...facts import STAGE_COMPONENTS

log = logging.getLogger(__name__)


def check_engines_dir(out: Path) -> None:
    """Engines were built into ``out`` for some target (needs no TensorRT)."""
    if not out.is_dir() or not any(out.glob(f"*/{INDEX}")):
        raise EngineMissing(
            f"no compiled engines in {out}: run `ifengine build RECIPE --out {out}` first "
            "(TensorRT; add `--compiler inductor` for Inductor packages)"
        )


def built_components(out: Path, target: Target) -> list[str]:
    """The components this target's index lists (EngineForeign/EngineMissing when there is none)."""
    index = target_index(out, target)
    return [c for c in ALL_COMPONENTS if index.get("engines", {}).get(c)]


def verify_engines(
    out: Path, components: Sequence[str], target: Target, artifacts: Path | None = None, checksum: bool = True
) -> list[tuple[str, dict, bytes]]:
    """(component, manifest, engine bytes) of every engine, each proven usable here; no TensorRT needed."""
    current = find_exports(artifacts) if artifacts is not None else {}
    verified = []
    for component in components:
        for path in engine_manifests(out, target, component, artifacts):
            fingerprint = _export_fingerprint(current, _peek(path))
            manifest, data = load_verified(path, target, fingerprint, checksum, artifacts)
            verified.append((component, manifest, data))
    return verified


def load_engines(
    out: str | Path,
    components: Sequence[str],
    *,
    artifacts: str | Path | None = None,
    device: int = 0,
    budgets: Mapping[str, Any] | None = None,
    checksum: bool = True,
    target: Target | None = None,
) -> TensorRTEngineSet:
    """Load, verify and activate the engines of ``components`` built into ``out`` for this machine.

    ``artifacts``: when given, each engine must have been built from the graph exported there now (stale check).
    ``budgets``: per component weight-streaming budget ("auto", "N%", bytes, GiB float); default: the recipe's.
    """
    out = Path(out)
    check_engines_dir(out)
    target = target or trt_rt.current_target(device)
    verified = verify_engines(out, components, target, None if artifacts is None else Path(artifacts), checksum)
    return activate(verified, device, budgets)


def activate(verified, device: int = 0, budgets: Mapping[str, Any] | None = None) -> TensorRTEngineSet:
    """Deserialise verified engines, set streaming budgets, share one scratch, create the contexts."""
    import torch

    trt = trt_rt.require_tensorrt()
    runtime = trt.Runtime(trt_rt.logger(trt))
    loaded = []
    for component, manifest, data in verified:
        loaded.append((component, manifest, trt_rt.deserialize(trt, runtime, data, manifest.get("engine", "?"))))
    del verified, data
    for component, manifest, engine in loaded:
        _apply_budget(component, manifest, engine, (budgets or {}).get(component))
    size = bindings.shared_scratch_bytes(trt_rt.scratch_need(e) for _, _, e in loaded)
    scratch = torch.empty(max(size, 1), dtype=torch.uint8, device=f"cuda:{device}")
    log.info("TensorRT: %d engine(s), shared scratch %.2f GiB", len(loaded), size / GiB)
    engines: dict[str, list[TensorRTEngine]] = {}
    for component, manifest, engine in loaded:
        engines.setdefault(component, []).append(_activate(trt, manifest, engine, scratch, size, device))
    manifests = {component: manifest for component, manifest, _ in loaded}
    return TensorRTEngineSet(engines=engines, scratch=scratch, keep=[runtime], manifests=manifests)


def engine_networks(engines: TensorRTEngineSet, device: int = 0) -> dict[str, EngineNetwork]:
    import torch

    return {c: EngineNetwork(engines, c, torch.device("cuda", device)) for c in engines.engines}


def _export_fingerprint(current: Mapping, manifest: Mapping) -> str | None:
    record = current.get((manifest.get("component"), manifest.get("precision")))
    return record.fingerprint if record else None


def _apply_budget(component: str, manifest: Mapping, engine, requested) -> None:
    streaming = bool(manifest.get("flags", {}).get("weight_streaming"))
    default = manifest.get("stream_budget")
    if not streaming and requested is None:
        return
    streamable, automatic = trt_rt.streaming_info(engine) if streaming else (0, 0)
    budget = bindings.resolve_budget(requested, streaming, default, streamable, automatic)
    if budget is not None:
        trt_rt.set_streaming_budget(engine, budget)
        log.info("%s: %.2f of %.2f GiB of weights stay on the GPU", component, budget / GiB, streamable / GiB)


def _activate(trt, manifest: Mapping, engine, scratch, size: int, device: int) -> TensorRTEngine:
    plan = IOPlan.from_manifest(manifest)
    bindings.check_engine_io(plan, trt_rt.describe_io(trt, engine))
    context = trt_rt.user_managed_context(trt, engine, scratch.data_ptr(), size)
    # the context runs in `scratch` and needs its engine: keep both alive as long as the engine object
    return TensorRTEngine(plan, context, f"cuda:{device}", keep=(engine, scratch))


def load_engine_parts(
    engines: Path,
    artifacts: Path | None = None,
    *,
    stage1=None,
    stage2=None,
    stage3=None,
    components: Sequence[str] | None = None,
    device: int = 0,
    dtype=None,
    variant: str | None = None,
    precision: str | Mapping[str, str] | None = None,
    providers: Sequence[Any] | str = ("cuda",),
    budgets: Mapping[str, Any] | None = None,
    checksum: bool = True,
    target: Target | None = None,
    use_step_graphs: bool = True,
    where=None,
):
    """The cascade's parts on the engines in ``engines`` (TensorRT engines and/or Inductor packages, as
    ``ifengine build --compiler`` made them); what has no engine runs on torch from the
    ``stage1``/``stage2``/``stage3`` checkpoints, else on ONNX Runtime (``providers``) from ``artifacts``.

    Every engine is verified (target, checksum, staleness against ``artifacts`` for TensorRT and against
    the given checkpoints for Inductor) before anything is loaded. The facade runs them on the GPU runner;
    each step around engine calls is captured as one CUDA graph after its warm-up. Inductor packages
    compiled for the CPU run on the CPU (``where``), where nothing is captured. ``dtype`` and ``precision``
    (of the ONNX Runtime graphs used for what has no engine) default to the precision the engines were
    built in; the run defaults are those the checkpoints recorded, as the engine manifests carry them."""
    import torch

    from ..onnxruntime.load import graph_sources, open_networks, provider_list  # onnxruntime: an optional extra

    check_engines_dir(engines)
    given = {n: s for n, s in ((1, stage1), (2, stage2), (3, stage3)) if s}
    checkpoints = {n: resolve(s, n, variant) for n, s in given.items()}
    where = where or (torch.device("cuda", device) if torch.cuda.is_available() else torch.device("cpu"))
    compiled = inductor_folders(engines)
    inductor = []
    if compiled:
        inductor = verify_inductor(engines, current_inductor_target(str(where)), components, checkpoints, checksum)
    verified, built = [], []
    if target is not None or _has_tensorrt(engines, compiled):
        target = target or trt_rt.current_target(device)
        built = [c for c in built_components(engines, target) if components is None or c in components]
        verified = verify_engines(engines, built, target, artifacts, checksum)  # every cache error, before any work
    built += [v.component for v in inductor]
    manifests = [*verified, *((v.component, v.manifest, None) for v in inductor)]  # (component, manifest, _)
    built_precision = built_precision_of(manifests)
    dtype = dtype or torch_dtype(built_precision)
    precision = precision or built_precision
    networks: dict[str, Any] = engine_networks(activate(verified, device, budgets), device) if verified else {}
    networks |= open_inductor(inductor, str(where)) if inductor else {}
    if artifacts is not None:
        covered = set(networks) | _covered_by(checkpoints)
        networks |= open_networks(Path(artifacts), provider_list(providers), precision, skip=covered)
    parts = torch_parts(checkpoints, set(networks), dtype, where, variant)
    log.info("engines from %s: %s", engines, ", ".join(sorted(c for c in networks if c in built)) or "none")
    loaded = assemble(networks, where, dtype, use_step_graphs, parts)
    sources = {**graph_sources(networks), **{n: source_name(s) for n, s in given.items()}}
    return dataclasses.replace(loaded, defaults=engine_run_defaults(manifests, networks, checkpoints), sources=sources)


def built_precision_of(verified) -> str:
    """The precision the engines were built in: stage I's U-Net (or step) engine's, else the first one's;
    int8 engines compute in fp32 around their Q/DQ layers (fp16 when nothing was built)."""
    by_component = {component: manifest.get("precision") for component, manifest, _ in verified}
    chosen = next((by_component[c] for c in ("unet1", "step1") if c in by_component), None)
    chosen = chosen or next(iter(by_component.values()), None) or "fp16"
    return "fp32" if chosen == "int8" else chosen


def engine_run_defaults(verified, networks: Mapping[str, Any], checkpoints: Mapping[int, Any]):
    """What the sources record: the checkpoints given, else the engine manifests, else the ORT graphs'."""

    graphs = [n.manifest for n in networks.values() if isinstance(getattr(n, "manifest", None), dict)]
    entries = recorded_defaults(graphs) | recorded_defaults(m for _, m, _ in verified)
    entries |= {n: read_run_defaults(c.root) for n, c in checkpoints.items()}
    return run_defaults(entries)


def _has_tensorrt(engines: Path, inductor: list[Path]) -> bool:
    """Whether ``engines`` holds target folders other than Inductor's (TensorRT's)."""
    return any(p.parent not in inductor for p in engines.glob(f"*/{INDEX}"))


def _covered_by(checkpoints: Mapping[int, Any]) -> set[str]:
    """Components the given checkpoints provide on torch (T5 only with a text encoder); their step graphs
    too, because the torch step is capturable and an ONNX Runtime one is not."""

    out = {c for n in checkpoints for c in STAGE_COMPONENTS[n]}
    if not any(checkpoints[n].has("text_encoder") for n in (1, 2) if n in checkpoints):
        out.discard("t5")
    return out
