"""The stage loops on a GPU: static buffers, CUDA-graph capture and replay of whole steps, throughput mode.

- ``api``: ``configure(cascade, vram_budget=..., cuda_graphs=...)`` returns the ``Runtime``
- ``options``: ``RuntimeOptions``, the one list of the runtime's switches (API, configure, CLI)
- ``gpu_runner``: stage loops over static buffers, one graph launch per step
- ``graphs`` / ``capture_audit``: capture of one whole step per shape, and what would break a capture
- ``buffers`` / ``stage_inputs``: static device buffers, pinned host staging, one upload per stage
- ``throughput``: many prompts, stage I of the next batch overlapping stages II/III of the current one

Networks are reached only through ``ifengine.backends``; weights are placed by ``ifengine.memory``.
Imported lazily so that importing this package costs nothing.
"""

from __future__ import annotations

_LAZY = {"configure": "api", "Runtime": "api", "RuntimeOptions": "options"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'ifengine.runtime' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
