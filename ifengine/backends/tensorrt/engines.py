"""TensorRT execution contexts as ``backends.base.Network``s: the thin adapter.

Every decision (buffers at the profile's largest shapes, views per call, which shapes and addresses to
bind when, the capture rule) is ``backends.static_io.StaticIO``'s, shared with and tested through the
ONNX Runtime adapter; the TensorRT calls themselves are ``engines.trt_runtime``'s (set_input_shape,
set_tensor_address, execute_async_v3 on the caller's stream, no synchronisation). A TensorRT enqueue is
``Capture.AFTER_WARMUP``: one eager call at the bound shapes, then a whole step around it may be
recorded in a CUDA graph. The engines of a cascade share one scratch allocation, so they run one after
another on one stream (the cascade does). NOT RUN against a real TensorRT: see docs/tensorrt.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from ...engines import bindings, trt_runtime as trt_rt
from ...engines.io_plan import IOPlan
from ...stage.seam import Capture
from ..base import Network, call
from ..static_io import StaticIO, enqueue_handle


class TensorRTEngine(Network):
    """One engine + execution context behind static buffers."""

    one_stream_only = True  # the cascade's engines share one scratch: runtime.api refuses throughput mode

    def __init__(self, plan: IOPlan, context, device="cuda", keep: Any = None):
        self.plan, self.context, self.name, self.spec = plan, context, plan.name, plan.spec
        self.io = StaticIO(plan, device, owner=self)  # at the profile's maximum: addresses never move
        self._keep = keep  # the ICudaEngine and the shared scratch must outlive the context

    @property
    def capture(self) -> Capture:
        return Capture.AFTER_WARMUP

    @property
    def buffers(self) -> dict:
        return self.io.buffers

    def dims_of(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        return self.plan.dims_of(shapes)

    def prepare(self, dims: Mapping[str, int]) -> None:
        binding = self.io.prepare(dims)
        if binding is None:
            return
        try:
            trt_rt.bind(self.context, binding.shapes, binding.addresses)
            for t in self.plan.spec.outputs:  # TensorRT's shape inference must agree with the buffers' plan
                actual, planned = trt_rt.output_shape(self.context, t.name), self.io.binder.shapes[t.name]
                if actual != planned:
                    raise RuntimeError(f"{self.name}: TensorRT gives {t.name} the shape {actual}, the plan {planned}")
        except BaseException:
            self.io.binder.reset()  # the context's state is unknown now: bind everything again next time
            raise

    def inputs(self) -> dict:
        return self.io.inputs()

    def outputs(self) -> dict:
        return self.io.outputs()

    def enqueue(self, stream=None) -> None:
        recording = self.io.before_enqueue(self.capture)
        with enqueue_handle(stream) as handle:  # never the legacy default stream
            trt_rt.enqueue(self.context, handle)
        self.io.after_enqueue(recording)

    def __call__(self, feeds: Mapping[str, Any]) -> dict:
        """Copy ``feeds`` in and enqueue on torch's current stream; output views, valid until the next call."""
        return call(self, feeds)


@dataclass
class TensorRTEngineSet:
    """Every engine of a cascade by component; several per component when built with static shapes."""

    engines: dict[str, list[TensorRTEngine]]
    scratch: Any  # the shared scratch tensor (kept alive here)
    keep: list = field(default_factory=list)  # runtime objects that must outlive the engines
    manifests: dict[str, dict] = field(default_factory=dict)  # component -> one of its engine manifests

    @property
    def scratch_bytes(self) -> int:
        return int(self.scratch.numel())

    def engine(self, component: str, **dims: int) -> TensorRTEngine:
        """The engine of ``component`` whose profile covers ``dims`` (a static one of exactly them first)."""
        candidates = self.candidates(component)
        return candidates[bindings.select([e.plan for e in candidates], dims)]

    def __call__(self, component: str, feeds: Mapping[str, Any]) -> dict:
        dims = self.candidates(component)[0].plan.dims_of({k: tuple(v.shape) for k, v in feeds.items()})
        return call(self.engine(component, **dims), feeds)

    def candidates(self, component: str) -> list[TensorRTEngine]:
        if component not in self.engines:
            raise KeyError(f"no {component} engine loaded; loaded: {', '.join(self.engines)}")
        return self.engines[component]


class EngineNetwork(Network):
    """One component's engines as one network: ``prepare`` picks the engine whose profile covers the dims.
    ``config``/``manifest``/``manifest_path`` are the export's the engines were built from (for assembly)."""

    one_stream_only = True  # see TensorRTEngine

    def __init__(self, engines: TensorRTEngineSet, component: str, device="cuda"):
        self.engines, self.name, self.device = engines, component, device
        self.current = engines.candidates(component)[0]
        self.spec = self.current.plan.spec
        self.manifest_path = Path(engines.manifests.get(component, {}).get("export_manifest", ""))
        self.manifest = _peek(self.manifest_path)
        self.config = self.manifest.get("config", {})

    @property
    def capture(self) -> Capture:
        return Capture.AFTER_WARMUP

    def dims_of(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        return self.current.plan.dims_of(shapes)

    def prepare(self, dims: Mapping[str, int]) -> None:
        self.current = self.engines.engine(self.name, **dims)
        self.current.prepare(dims)

    def inputs(self) -> dict:
        return self.current.inputs()

    def outputs(self) -> dict:
        return self.current.outputs()

    def enqueue(self, stream=None) -> None:
        self.current.enqueue(stream)


def _peek(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # the engine manifest's checks report a missing export properly
