"""Runtime backends behind one small interface, and the lean GPU runtime.

``configure(cascade, vram_budget=..., cuda_graphs=...)`` (see ``api``) returns a ``Runtime`` whose
``run_if_stage`` / ``run_x4_stage`` replace the eager stage loops: static buffers, one CUDA-graph launch
per step, weights placed by the memory planner. Imported lazily so that importing this package (e.g.
for the ONNX or TensorRT backends) costs nothing.
"""

from __future__ import annotations

_LAZY = {
    "configure": "api",
    "Runtime": "api",
    "RuntimeOptions": "api",
    "plan_memory": "planner",
    "MemoryPlan": "planner",
    "PlanOptions": "planner",
    "PlanError": "planner",
    "Workload": "memory",
    "parse_size": "sizes",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'ifengine.runtime' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
