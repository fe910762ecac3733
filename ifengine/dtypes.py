"""Dtype names, stated once: what each precision computes in, byte sizes, and the torch dtype of a name.

Names are torch's ("float32", ...), as I/O specs and engine manifests record them; this module does not
import torch until a torch dtype is asked for, so planning code stays light.
"""

from __future__ import annotations

# The dtype a precision's graph computes in (int8 graphs are fp32 graphs with Q/DQ nodes).
PRECISION_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "float32"}
# onnx.TensorProto.DataType names -> dtype names (TensorRT's own enum names are in engines/trt_runtime.py)
ONNX_NAMES = {
    "FLOAT": "float32",
    "FLOAT16": "float16",
    "BFLOAT16": "bfloat16",
    "DOUBLE": "float64",
    "INT64": "int64",
    "INT32": "int32",
    "INT8": "int8",
    "UINT8": "uint8",
    "BOOL": "bool",
}
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int8": 1, "uint8": 1, "bool": 1}


def torch_dtype(name: str):
    """torch dtype of a dtype name ("float16") or a precision ("fp16")."""
    import torch

    name = PRECISION_DTYPES.get(name, name)
    dtype = getattr(torch, name, None) if name in ITEMSIZE else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(ITEMSIZE)} or {', '.join(PRECISION_DTYPES)}")
    return dtype


def dtype_name(dtype) -> str:
    """ "float16" for torch.float16."""
    return str(dtype).removeprefix("torch.")
