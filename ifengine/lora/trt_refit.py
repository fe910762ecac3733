"""Update a built TensorRT engine's weights in place (LoRA) with TensorRT's Refitter.

Only for engines built refittable (recipe ``refittable = true``: BuilderFlag.REFIT). Which values go
under which names is decided by ``lora.onnx_weights.named_weights`` (tested on CPU against ONNX Runtime):
an engine parsed from ONNX names its weights after the graph's initializers. The calls below are the
documented TensorRT 10.x API (``trt.Refitter``, ``set_named_weights``, ``refit_cuda_engine``,
``get_missing_weights``); NOT RUN against a real TensorRT on our machines (docs/tensorrt.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from collections.abc import Sequence

from ..engines.errors import TensorRTError
from ..engines.trt_runtime import logger, require_tensorrt

log = logging.getLogger(__name__)


def refit_engine(engine, graph: str | Path, updates: Sequence) -> int:
    """Write the LoRA-changed weights (``Cascade.lora_updates(stage)``) into ``engine``, a deserialised
    ICudaEngine built from the ONNX ``graph``; returns how many weights were set. Call it while no
    context of the engine is running."""
    from .onnx_weights import named_weights  # needs onnx (the export extra)

    trt = require_tensorrt()
    if not getattr(engine, "refittable", False):
        raise TensorRTError(
            "this engine was not built refittable: set `refittable = true` in its build recipe and run "
            "`ifengine build` again (or rebuild the engine from the refit ONNX graph)"
        )
    weights = named_weights(graph, updates)  # kept alive until refit_cuda_engine has copied them
    refitter = trt.Refitter(engine, logger(trt))
    for name, array in weights.items():
        if not refitter.set_named_weights(name, trt.Weights(array)):
            raise TensorRTError(f"TensorRT refused the weights {name!r} {array.shape} {array.dtype} for this engine")
    if not refitter.refit_cuda_engine():
        missing = list(refitter.get_missing_weights())
        raise TensorRTError(f"TensorRT could not refit the engine; weights it still needs: {missing[:10]}")
    log.info("refit %d weights of a TensorRT engine from %s", len(weights), graph)
    return len(weights)
