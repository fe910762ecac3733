"""TensorRT backend: the cascade's engines, deserialised once, sharing one scratch allocation.

Loading verifies every engine against its manifest (checksum, GPU, TensorRT version, current graph),
sets weight-streaming budgets, sizes one scratch buffer for the largest engine, and creates one
user-managed execution context per engine on it. Each engine owns static I/O buffers at its profile's
largest shapes; a call views a prefix of them, binds shapes only when they change, and enqueues
``execute_async_v3`` on the caller's stream without synchronising, so a step can be captured in a CUDA
graph after one warm-up run at its shapes. The engines share scratch memory, so they must run one after
another on one stream (the cascade does).

The decisions are in ``ifengine.engines.bindings`` (tested on CPU); the TensorRT calls are in
``ifengine.engines.trt_runtime`` and have NOT been run against a real TensorRT on our machines.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping, Sequence

from ...engines import bindings, trt_runtime as trt_rt
from ...engines.cache import engine_manifests, load_verified
from ...engines.exports import find_exports
from ...engines.io_plan import IOPlan

log = logging.getLogger(__name__)


class TensorRTEngine:
    """One engine + context with static I/O buffers; call with named tensors, get named output views."""

    def __init__(self, plan: IOPlan, context, buffers: Mapping[str, Any], keep: Any = None):
        self.plan, self.context, self.buffers = plan, context, dict(buffers)
        self.binder = bindings.Binder(plan, {n: b.data_ptr() for n, b in self.buffers.items()})
        self._keep = keep  # the ICudaEngine and the shared scratch must outlive the context

    def prepare(self, **dims: int) -> None:
        """Bind shapes (and, the first time, addresses) for ``dims``; a no-op when nothing changed."""
        binding = self.binder.update(dims)
        if binding is None:
            return
        try:
            if _capturing():
                raise RuntimeError(
                    f"{self.plan.name}: shapes changed during a CUDA graph capture; prepare() and "
                    f"run once at these shapes before capturing"
                )
            trt_rt.bind(self.context, binding.shapes, binding.addresses)
            self._check_output_shapes()
        except BaseException:
            self.binder.reset()  # the context's state is unknown now: bind everything again next time
            raise

    def _check_output_shapes(self) -> None:
        """TensorRT's own shape inference must agree with the plan the buffers were sized from."""
        for t in self.plan.spec.outputs:
            actual, planned = trt_rt.output_shape(self.context, t.name), self.binder.shapes[t.name]
            if actual != planned:
                raise RuntimeError(f"{self.plan.name}: TensorRT gives {t.name} the shape {actual}, the plan {planned}")

    def inputs(self) -> dict:
        return bindings.views(self.buffers, {t.name: self.binder.shapes[t.name] for t in self.plan.spec.inputs})

    def outputs(self) -> dict:
        return bindings.views(self.buffers, {t.name: self.binder.shapes[t.name] for t in self.plan.spec.outputs})

    def enqueue_no_sync(self, stream: int | None = None) -> None:
        """Run on ``stream`` (default: torch's current stream); inputs must already be in the buffers."""
        if self.binder.bound_dims is None:
            raise RuntimeError(f"{self.plan.name}: call prepare() before enqueueing")
        capturing = _capturing()
        if capturing and not self.binder.warm:
            raise RuntimeError(f"{self.plan.name}: run once at these shapes before capturing a CUDA graph")
        trt_rt.enqueue(self.context, _stream_handle(stream))
        self.binder.warm = self.binder.warm or not capturing

    def __call__(self, feeds: Mapping[str, Any]) -> dict:
        """Copy ``feeds`` in and enqueue, all on torch's current stream; returns views of the outputs
        (valid until the next call)."""
        self.prepare(**self.plan.dims_of({k: tuple(v.shape) for k, v in feeds.items()}))
        for name, view in self.inputs().items():
            view.copy_(feeds[name], non_blocking=True)
        self.enqueue_no_sync()
        return self.outputs()


@dataclass
class TensorRTEngineSet:
    """Every engine of a cascade by component; several per component when built with static shapes."""

    engines: dict[str, list[TensorRTEngine]]
    scratch: Any  # the shared scratch tensor (kept alive here)
    keep: list = field(default_factory=list)  # runtime objects that must outlive the engines
    manifests: dict[str, dict] = field(default_factory=dict)  # component -> one of its engine manifests

    def engine_manifest(self, component: str) -> dict:
        self._candidates(component)
        return self.manifests[component]

    @property
    def scratch_bytes(self) -> int:
        return int(self.scratch.numel())

    def engine(self, component: str, **dims: int) -> TensorRTEngine:
        """The engine of ``component`` whose profile covers ``dims`` (a static one of exactly them first)."""
        candidates = self._candidates(component)
        return candidates[bindings.select([e.plan for e in candidates], dims)]

    def __call__(self, component: str, feeds: Mapping[str, Any]) -> dict:
        plan = self._candidates(component)[0].plan
        return self.engine(component, **plan.dims_of({k: tuple(v.shape) for k, v in feeds.items()}))(feeds)

    def _candidates(self, component: str) -> list[TensorRTEngine]:
        if component not in self.engines:
            raise KeyError(f"no {component} engine loaded; loaded: {', '.join(self.engines)}")
        return self.engines[component]


class TensorRTGraph:
    """One component's engines behind the ONNX backend's graph interface (``OrtGraph``): ``name``, ``spec``,
    ``device``, ``manifest``/``manifest_path``/``config`` (of the export it was built from) and
    ``graph(**inputs)`` -> the single output, so the ONNX backend's stage parts can run on TensorRT."""

    def __init__(self, engines: TensorRTEngineSet, component: str, device: int | str = 0):
        self.engines, self.name = engines, component
        first = engines.engine_manifest(component)
        self.spec, self.device = engines._candidates(component)[0].plan.spec, _cuda(device)
        self.manifest_path = Path(first["export_manifest"])
        self.manifest = _peek(self.manifest_path)
        self.config = self.manifest.get("config", {})

    def __call__(self, **inputs) -> Any:
        feeds = {t.name: inputs[t.name].to(self.device) for t in self.spec.inputs}
        (out,) = self.engines(self.name, feeds).values()
        return out.clone()  # the engine's output buffer is overwritten by its next call


def load_engines(
    out: str | Path,
    components: Sequence[str],
    *,
    artifacts: str | Path | None = None,
    device: int = 0,
    budgets: Mapping[str, Any] | None = None,
    checksum: bool = True,
) -> TensorRTEngineSet:
    """Load, verify and activate the engines of ``components`` built into ``out`` for this machine.

    ``artifacts``: when given, each engine must have been built from the graph exported there now (stale check).
    ``budgets``: per component weight-streaming budget ("auto", "N%", bytes, GiB float); default: the recipe's.
    """
    import torch

    trt = trt_rt.require_tensorrt()
    target = trt_rt.current_target(device)
    runtime = trt.Runtime(trt_rt.logger(trt))
    current = find_exports(artifacts) if artifacts is not None else {}
    loaded = []
    for component in components:
        for path in engine_manifests(out, target, component):
            manifest, data = load_verified(path, target, _export_fingerprint(current, _peek(path)), checksum)
            loaded.append((component, manifest, trt_rt.deserialize(trt, runtime, data, path.name)))
            del data
    for component, manifest, engine in loaded:
        _apply_budget(component, manifest, engine, (budgets or {}).get(component))
    size = bindings.shared_scratch_bytes(trt_rt.scratch_need(e) for _, _, e in loaded)
    scratch = torch.empty(max(size, 1), dtype=torch.uint8, device=f"cuda:{device}")
    log.info("TensorRT: %d engine(s), shared scratch %.2f GiB", len(loaded), size / 2**30)
    engines: dict[str, list[TensorRTEngine]] = {}
    for component, manifest, engine in loaded:
        engines.setdefault(component, []).append(_activate(trt, manifest, engine, scratch, size, device))
    manifests = {component: manifest for component, manifest, _ in loaded}
    return TensorRTEngineSet(engines=engines, scratch=scratch, keep=[runtime], manifests=manifests)


def _peek(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # load_verified reports it properly


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
        log.info("%s: %.2f of %.2f GiB of weights stay on the GPU", component, budget / 2**30, streamable / 2**30)


def _activate(trt, manifest: Mapping, engine, scratch, size: int, device: int) -> TensorRTEngine:
    plan = IOPlan.from_manifest(manifest)
    described = trt_rt.describe_io(trt, engine)
    bindings.check_engine_io(plan, described)
    context = trt_rt.user_managed_context(trt, engine, scratch.data_ptr(), size)
    # the context runs in `scratch` and needs its engine: keep both alive as long as the engine object
    return TensorRTEngine(plan, context, bindings.allocate_buffers(plan, f"cuda:{device}"), keep=(engine, scratch))


def _cuda(device: int | str):
    import torch

    return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)


def _stream_handle(stream) -> int:
    import torch

    if stream is None:
        return torch.cuda.current_stream().cuda_stream
    return stream.cuda_stream if hasattr(stream, "cuda_stream") else int(stream)


def _capturing() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
