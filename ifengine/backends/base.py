"""The one interface every backend implements, and the shared logic around it.

A ``Network`` runs one exported network or one whole step: it owns static named input and output buffers
(torch tensors allocated once and viewed per call), ``prepare(dims)`` binds shapes and addresses only when
they change, ``enqueue(stream)`` starts the work on a stream without synchronising the host, and
``capture`` states, as a ``Capture`` value, whether the call may be recorded in a CUDA graph.

``call`` is the whole calling convention (read dims off the feeds, prepare, copy the feeds into the input
views, enqueue, return the output views); ``NetworkUNet`` & co. in ``backends.parts`` give networks the
torch modules' call signatures, so the stage loops and the GPU runner drive every backend the same way.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any


class Capture(enum.Enum):
    """May a call be recorded in a CUDA graph (and replayed without running Python)?"""

    NEVER = "never"  # host work per call (ONNX Runtime's session.run, host-side caches)
    AFTER_WARMUP = "after_warmup"  # pure device work once one eager call at these shapes has run
    ALWAYS = "always"  # pure device work from the first call

    def allows(self, warm: bool) -> bool:
        return self is Capture.ALWAYS or (self is Capture.AFTER_WARMUP and warm)


def weakest(captures: Iterable[Capture]) -> Capture:
    """The capture rule of a step that makes all these calls: the strictest of them."""
    order = (Capture.NEVER, Capture.AFTER_WARMUP, Capture.ALWAYS)
    return min(captures, key=order.index, default=Capture.ALWAYS)


class Capturable(ABC):
    """Anything the GPU runner may put inside a captured step states its rule through this type."""

    @property
    @abstractmethod
    def capture(self) -> Capture: ...


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


def call(network: Network, feeds: Mapping[str, Any], stream: Any = None) -> dict[str, Any]:
    """prepare -> copy feeds into the static inputs -> enqueue; returns the output views (no copy)."""
    network.prepare(network.dims_of({k: tuple(v.shape) for k, v in feeds.items()}))
    for name, view in network.inputs().items():
        view.copy_(feeds[name], non_blocking=True)
    network.enqueue(stream)
    return network.outputs()


def capture_of(obj: Any) -> Capture:
    """The capture rule of a step function or network: torch code (anything not ``Capturable``) is
    capturable after warm-up, which is how the GPU runner has always treated it."""
    return obj.capture if isinstance(obj, Capturable) else Capture.AFTER_WARMUP
