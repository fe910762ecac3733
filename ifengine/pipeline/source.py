"""Where a cascade's weights come from, as one value: the demo, checkpoints, exported graphs, engines.

``ModelSource`` is what ``open_cascade`` (``pipeline.loader``) takes, and what ``ifengine generate``,
``ifengine serve`` and ``ifengine bench`` build from their flags; sources mix per component (engines
first, then checkpoints, then exported graphs for what neither covers). No torch import: the CLI and the
serving config build one before anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSource:
    """Which weights to load: the tiny demo cascade when nothing is given."""

    stage1: str | None = None  # checkpoint folders or Hub ids
    stage2: str | None = None
    stage3: str | None = None
    variant: str | None = None  # "fp16": the checkpoints' fp16 weight files
    device: str | None = None  # None: cuda when a GPU is visible, else cpu
    dtype: str | None = None  # None: float16 on cuda, float32 on cpu
    demo_root: str | None = None  # where the demo checkpoints live (default: $IFENGINE_CACHE)
    artifacts: str | None = None  # exported graphs (`ifengine export`), run on ONNX Runtime
    engines: str | None = None  # built engines (`ifengine build`); the rest from checkpoints or artifacts
    providers: str | None = None  # ONNX Runtime providers for artifacts: cpu, cuda, tensorrt

    @property
    def checkpoints(self) -> dict[int, str]:
        """Stage -> checkpoint, for the stages given."""
        return {n: s for n, s in ((1, self.stage1), (2, self.stage2), (3, self.stage3)) if s}

    @property
    def uses_graphs(self) -> bool:
        return bool(self.artifacts or self.engines)

    @property
    def is_demo(self) -> bool:
        return not (self.checkpoints or self.uses_graphs)

    @property
    def kind(self) -> str:
        """ "engines", "artifacts", "checkpoints" or "demo": what ``open_cascade`` loads first."""
        if self.engines:
            return "engines"
        if self.artifacts:
            return "artifacts"
        return "checkpoints" if self.checkpoints else "demo"
