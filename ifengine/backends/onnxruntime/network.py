"""An ONNX Runtime session as a ``Network``: IO binding to the runtime's own static torch buffers.

The session binds each input and output to a view of a ``StaticIO`` buffer (``bind_input(name, device
type, device id, element type, shape, data pointer)``), so no numpy copy is made and, on the CUDA and
TensorRT execution providers, nothing leaves the GPU. Binding happens in ``prepare`` and only when
``StaticIO`` says the shapes or addresses changed; ``enqueue`` is ``run_with_iobinding``.

ORT calls are ``Capture.NEVER``: ``session.run`` is host code that ORT itself synchronises, so a step
around it runs eagerly in the GPU runner (the TensorRT adapter is the capturable twin of this class).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ...engines.io_plan import IOPlan
from ...stage.seam import Capture
from ..base import Network
from ..static_io import StaticIO
from ...dtypes import onnx_type
from .session import OrtGraph


class OrtNetwork(Network):
    """``OrtGraph``'s session behind static buffers; ``name``/``spec``/``config``/``manifest`` are its."""

    def __init__(self, graph: OrtGraph):
        self.graph, self.name, self.spec = graph, graph.name, graph.spec
        self.config, self.manifest, self.manifest_path = graph.config, graph.manifest, graph.manifest_path
        self.device = graph.device
        self.io = StaticIO(IOPlan.from_spec(graph.spec), graph.device, grow=True, owner=self)
        self._binding = graph.session.io_binding()
        self.runs = 0

    @property
    def capture(self) -> Capture:
        return Capture.NEVER

    def dims_of(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        return self.graph.dims_of_shapes(shapes)

    def prepare(self, dims: Mapping[str, int]) -> None:
        if self.io.prepare(dims) is None:
            return
        # IO binding takes shape and address together: any change rebinds every tensor
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        for name, view in self.io.inputs().items():
            self._binding.bind_input(name, *_where(view), onnx_type(view.dtype), tuple(view.shape), view.data_ptr())
        for name, view in self.io.outputs().items():
            self._binding.bind_output(name, *_where(view), onnx_type(view.dtype), tuple(view.shape), view.data_ptr())

    def inputs(self) -> dict[str, torch.Tensor]:
        return self.io.inputs()

    def outputs(self) -> dict[str, torch.Tensor]:
        return self.io.outputs()

    def enqueue(self, stream=None) -> None:
        recording = self.io.before_enqueue(self.capture)
        if self.device.type == "cuda":
            # ORT runs on its own stream: the inputs written on torch's stream must be complete first
            (stream or torch.cuda.current_stream(self.device)).synchronize()
            self._binding.synchronize_inputs()
        self.graph.session.run_with_iobinding(self._binding)
        if self.device.type == "cuda":
            self._binding.synchronize_outputs()
        self.io.after_enqueue(recording)
        self.runs += 1


def _where(t: torch.Tensor) -> tuple[str, int]:
    return t.device.type, t.device.index or 0
