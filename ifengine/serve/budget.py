"""The library's memory estimate, applied at the ingress to every generation and edit before it queues.

The ingress holds no weights, so it builds the cascade's modules on the meta device from the checkpoints'
config files (``memory.plan_inputs.checkpoint_modules``, as ``ifengine generate``'s preflight does) and
asks ``memory.estimate.estimate_modules`` about each request: microseconds once the per-component costs
are measured (the first request measures them, about half a second per component).

The memory a request may use is ``Limits.request_memory`` when set. Otherwise, where the stage replicas
run on the CPU, it is the ingress host's available memory; where they hold GPUs the ingress cannot see
them, so only the explicit limits apply here (set ``request_memory`` to a replica's GPU memory).
"""

from __future__ import annotations

import logging
import threading

from ..memory.estimate import Limits as MemoryLimits
from ..memory.estimate import estimate_modules
from ..memory.sizes import parse_size
from .api import ApiError

log = logging.getLogger(__name__)


class Budget:
    def __init__(self, checkpoints: dict[int, str], dtype, on_gpu: bool, memory: int | str | None):
        self.checkpoints, self.dtype, self.on_gpu = checkpoints, dtype, on_gpu
        self.memory = parse_size(memory) if memory is not None else None
        self._modules = None
        self._lock = threading.Lock()

    def _meta_modules(self):
        from ..memory.plan_inputs import checkpoint_modules  # transformers: only once a request comes

        with self._lock:
            if self._modules is None:
                paths = {f"stage{n}": p for n, p in self.checkpoints.items()}
                self._modules = checkpoint_modules(**paths, dtype=self.dtype)
            return self._modules

    def check(self, *, batch: int, height: int, width: int, last_stage: int, steps, multiple: int, param: str):
        """Refuse (400 naming the estimate) a request that cannot fit; runs in a worker thread."""
        if self.on_gpu and self.memory is None:
            return None
        est = estimate_modules(
            self._meta_modules(),
            batch=batch,
            height=height,
            width=width,
            last_stage=last_stage,
            steps=tuple(steps)[:last_stage],
            limits=MemoryLimits(memory=self.memory),
            multiple=multiple,
        )
        if not est.fits:
            raise ApiError(400, f"{param}: {est.reason}", param, code="request_too_large")
        return est
