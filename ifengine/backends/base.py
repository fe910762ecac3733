"""The network contract: what every backend (ONNX Runtime, TensorRT, ahead-of-time Inductor) implements.

A ``Network`` runs one exported network, or one whole step graph. The torch modules need no adapter (the
step functions call them directly) and whole steps meet the step contract of ``stage.seam``; a Network is
wrapped by ``backends.parts`` (``NetworkUNet``, ``NetworkIFStep``, ...) into those same call signatures,
so the stage loops and the GPU runner drive every backend alike. The contract, in calling order:

1. ``dims_of(shapes)`` reads the named dims (batch, height, ...) off the feeds' shapes and checks them
   against the spec or the engine's profile: a wrong shape is an error here, before any work.
2. ``prepare(dims)`` binds shapes and buffer addresses for those dims; a no-op when nothing changed
   since the last call (so a replayed CUDA graph finds the same addresses bound).
3. ``inputs()`` / ``outputs()`` are views of static buffers allocated once at their largest size; the
   caller copies its feeds into the input views (``call`` does) and reads the output views, which stay
   valid until the next ``enqueue``.
4. ``enqueue(stream)`` starts the work on ``stream`` (default: torch's current one) and returns at once.
5. ``capture`` (a ``stage.seam.Capture``) says whether 1-4 may be recorded in a CUDA graph.
6. ``weights_changed()`` tells the network that its source module's weights changed (LoRA): graphs and
   engines are refit elsewhere (a no-op here); one with weights compiled in (an Inductor package) raises
   ``EngineStale`` rather than run the old weights.

What a network will NOT do: synchronise the host in ``enqueue``, allocate per call, keep a reference
to the caller's feed tensors, or change its bound shapes during a replay (a replay runs no Python:
whoever changes dims must call ``prepare`` eagerly first).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

from ..stage.seam import Capturable


class Network(Capturable):
    """One network (or whole step) behind static buffers; see the module docstring for the contract."""

    name: str
    spec: Any  # the ComponentSpec it was exported with (names, dims, dtypes)

    @abstractmethod
    def dims_of(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        """Named dims read off input shapes (checked against the spec / profile)."""

    @abstractmethod
    def prepare(self, dims: Mapping[str, int]) -> None:
        """Bind shapes (and addresses) for ``dims``; a no-op when nothing changed since the last call."""

    @abstractmethod
    def inputs(self) -> dict[str, Any]:
        """Views of the static input buffers at the prepared shapes (write the feeds here)."""

    @abstractmethod
    def outputs(self) -> dict[str, Any]:
        """Views of the static output buffers at the prepared shapes (valid until the next enqueue)."""

    @abstractmethod
    def enqueue(self, stream: Any = None) -> None:
        """Start the work on ``stream`` (default: torch's current one); never synchronises the host."""

    def weights_changed(self) -> None:
        """The source module's weights changed (LoRA). A network's weights live in the engine or graph,
        which this call cannot rewrite: refitting them is ``lora.onnx_weights`` / ``lora.trt_refit``'s job,
        so the default does nothing; a backend that caches weight-derived state overrides it."""
        return None


def call(network: Network, feeds: Mapping[str, Any], stream: Any = None) -> dict[str, Any]:
    """prepare -> copy feeds into the static inputs -> enqueue; returns the output views (no copy)."""
    network.prepare(network.dims_of({k: tuple(v.shape) for k, v in feeds.items()}))
    for name, view in network.inputs().items():
        view.copy_(feeds[name], non_blocking=True)
    network.enqueue(stream)
    return network.outputs()
