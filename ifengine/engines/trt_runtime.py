"""The thin layer of TensorRT runtime calls. Everything that decides anything lives elsewhere.

Each function is a few documented TensorRT 10.x / 11.x Python API calls (``tensorrt`` is imported lazily,
so ``import ifengine`` works without it). NOT RUN against a real TensorRT on our machines: see
docs/tensorrt.md for the list.
"""

from __future__ import annotations

import logging
from typing import Any
from collections.abc import Mapping

from .cache import Target
from ..dtypes import TRT_NAMES
from .errors import TensorRTError, TensorRTUnavailable

log = logging.getLogger(__name__)
# execute_async_v3, named tensors, strongly typed networks (10.0) and weight streaming v2 (10.1); the code
# knows the 10.x and 11.x APIs (pyproject's gpu extra: tensorrt>=10.1,<12)
MIN_VERSION, MAX_MAJOR = (10, 1), 11


def require_tensorrt():
    """The tensorrt module, or TensorRTUnavailable with install instructions."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise TensorRTUnavailable(f"import tensorrt failed: {err}") from None
    version = getattr(trt, "__version__", "0")
    if not supported_version(version):
        raise TensorRTUnavailable(f"found TensorRT {version}; ifengine needs 10.1 or later, up to 11.x")
    return trt


def supported_version(version: str) -> bool:
    parts = tuple(int(p) for p in (version.split(".") + ["0"])[:2] if p.isdigit())
    return len(parts) == 2 and parts >= MIN_VERSION and parts[0] <= MAX_MAJOR


def current_target(device: int = 0) -> Target:
    """This machine's GPU (name, compute capability, via torch) and TensorRT version."""
    trt = require_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("torch sees no CUDA GPU (a CUDA build of torch and an NVIDIA driver are needed)")
    major, minor = torch.cuda.get_device_capability(device)
    return Target(
        gpu=torch.cuda.get_device_name(device), compute_capability=f"{major}.{minor}", tensorrt=trt.__version__
    )


def logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def deserialize(trt, runtime, data: bytes, name: str):
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise TensorRTError(f"TensorRT could not deserialize {name} (see TensorRT's log above)")
    return engine


def describe_io(trt, engine) -> dict[str, dict[str, Any]]:
    """name -> {input, dtype, shape (-1 for dynamic), profile (min, opt, max) for inputs} from the engine."""
    io = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        entry = {
            "input": is_input,
            "dtype": TRT_NAMES.get(engine.get_tensor_dtype(name).name),
            "shape": tuple(engine.get_tensor_shape(name)),
        }
        if is_input:
            entry["profile"] = tuple(tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
        io[name] = entry
    return io


def scratch_need(engine) -> int:
    """Bytes of scratch (activation) memory one context needs; v2 accounts for weight streaming."""
    return int(engine.device_memory_size_v2)  # 10.1+ (MIN_VERSION): v1 ignores weight streaming


def streaming_info(engine) -> tuple[int, int]:
    """(streamable weight bytes, automatic budget) of an engine built with weight streaming."""
    return int(engine.streamable_weights_size), int(engine.get_weight_streaming_automatic_budget())


def set_streaming_budget(engine, budget: int) -> None:
    engine.weight_streaming_budget_v2 = budget  # before creating contexts: it changes their scratch need
    if engine.weight_streaming_budget_v2 != budget:
        raise TensorRTError(f"TensorRT refused a weight streaming budget of {budget} bytes")


def user_managed_context(trt, engine, scratch_ptr: int, scratch_bytes: int):
    """An execution context that runs in caller-owned scratch memory (shared by the cascade's engines)."""
    context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    if context is None:
        raise TensorRTError("TensorRT could not create an execution context (out of GPU memory?)")
    context.set_device_memory(scratch_ptr, scratch_bytes)  # 10.1+ (MIN_VERSION)
    return context


def bind(context, shapes: Mapping[str, tuple[int, ...]], addresses: Mapping[str, int]) -> None:
    """Input shapes first (they fix the output shapes), then every I/O tensor's address."""
    for name, shape in shapes.items():
        if not context.set_input_shape(name, shape):
            raise ValueError(f"TensorRT rejected shape {shape} for input {name!r}")
    for name, address in addresses.items():
        if not context.set_tensor_address(name, address):
            raise ValueError(f"TensorRT rejected the buffer address of {name!r}")


def output_shape(context, name: str) -> tuple[int, ...]:
    return tuple(context.get_tensor_shape(name))


def enqueue(context, stream_handle: int) -> None:
    """Enqueue one inference on the stream; never synchronises (safe inside a CUDA graph capture)."""
    if not context.execute_async_v3(stream_handle):
        raise TensorRTError("TensorRT execute_async_v3 failed (see TensorRT's log above)")
