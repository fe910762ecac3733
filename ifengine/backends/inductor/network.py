"""AOTInductor packages as ``backends.base.Network``s: static buffers around a compiled model call.

A loaded package (``torch._inductor.aoti_load_package``) is called with tensors and returns new output
tensors, so the adapter keeps the seam's contract itself: ``StaticIO`` owns the input and output buffers
(allocated once at the profile's largest shapes, viewed per call), ``enqueue`` calls the package on the
input views and copies its outputs into the output views on the caller's stream, with no host sync.

On CUDA the package's kernels run on torch's current stream (``enqueue`` makes the given stream current),
and the call is ``Capture.AFTER_WARMUP``: once it ran eagerly at the bound shapes, a whole step around it
may be recorded in one CUDA graph (its output allocations come from the graph's pool; the packages are
loaded with ``run_single_threaded``, which skips the runner's locking that a capture must not see). On
the CPU the runner never captures. Weights are compiled into the package: ``weights_changed`` makes the
engine stale (rebuild it) instead of silently running the old weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ...engines import bindings
from ...engines.errors import EngineStale
from ...engines.io_plan import IOPlan
from ...stage.seam import Capture
from ..base import Network
from ..static_io import StaticIO


class InductorPackage(Network):
    """One compiled package behind static buffers (its manifest's profile sizes them)."""

    def __init__(self, plan: IOPlan, model: Any, device: torch.device | str):
        self.plan, self.model, self.name, self.spec = plan, model, plan.name, plan.spec
        self.device = torch.device(device)
        self.io = StaticIO(plan, self.device)  # at the profile's maximum: addresses never move
        self.runs = 0

    @property
    def capture(self) -> Capture:
        return Capture.AFTER_WARMUP

    def dims_of(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        return self.plan.dims_of(shapes)

    def prepare(self, dims: Mapping[str, int]) -> None:
        self.io.prepare(dims)  # nothing to bind: the package takes the views at each call

    def inputs(self) -> dict[str, torch.Tensor]:
        return self.io.inputs()

    def outputs(self) -> dict[str, torch.Tensor]:
        return self.io.outputs()

    def enqueue(self, stream: Any = None) -> None:
        recording = self.io.before_enqueue(self.capture)
        feeds = self.io.inputs()
        with _on(stream, self.device):
            result = self.model(*(feeds[n] for n in self.spec.input_names))
            result = result if isinstance(result, (list, tuple)) else (result,)
            for view, value in zip(self.io.outputs().values(), result, strict=True):
                view.copy_(value, non_blocking=True)
        self.io.after_enqueue(recording)
        self.runs += 1


def _on(stream: Any, device: torch.device):
    """Make ``stream`` (a torch stream or a raw handle) current for the package call on CUDA."""
    if device.type != "cuda" or stream is None:
        return contextlib.nullcontext()
    if not isinstance(stream, torch.cuda.Stream):
        stream = torch.cuda.ExternalStream(int(stream), device=device)
    return torch.cuda.stream(stream)


class InductorNetwork(Network):
    """A component's packages as one network; ``config``/``manifest``/``manifest_path`` come from its
    package manifest (the stage configs and checkpoint digest ``backends.assemble`` reads)."""

    def __init__(self, packages: Sequence[InductorPackage], manifest: dict, manifest_path: Path):
        self.packages, self.current = list(packages), packages[0]
        self.name, self.spec, self.device = manifest["component"], self.current.spec, self.current.device
        self.manifest, self.manifest_path, self.config = manifest, Path(manifest_path), manifest["config"]

    @property
    def capture(self) -> Capture:
        return Capture.AFTER_WARMUP

    def dims_of(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        return self.current.dims_of(shapes)

    def prepare(self, dims: Mapping[str, int]) -> None:
        self.current = self.packages[bindings.select([p.plan for p in self.packages], dims)]
        self.current.prepare(dims)

    def inputs(self) -> dict[str, torch.Tensor]:
        return self.current.inputs()

    def outputs(self) -> dict[str, torch.Tensor]:
        return self.current.outputs()

    def enqueue(self, stream: Any = None) -> None:
        self.current.enqueue(stream)

    def weights_changed(self) -> None:
        raise EngineStale(
            f"{self.name}: the Inductor package {self.manifest_path.name} has its weights compiled in; "
            f"after a weight change (LoRA, new checkpoint) rebuild it: `{self.manifest.get('build_command')}`"
        )
