"""Dtype names, stated once: what each precision computes in, byte sizes, and the torch dtype of a name.

Names are torch's ("float32", ...), as I/O specs and engine manifests record them; every other dtype table
(ONNX and TensorRT enums, precisions, the dtypes a cascade runs in) is derived from these. This module does
not import torch (or onnx) until a torch dtype (or an ONNX enum) is asked for, so planning code stays light.
"""

from __future__ import annotations

# The dtype a precision's graph computes in (int8 graphs are fp32 graphs with Q/DQ nodes).
PRECISION_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "float32"}
# The floating dtypes a cascade's modules run in (CLI choices, the Python API's dtype check).
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
# The precision named for each floating dtype (derived: "float16" -> "fp16").
PRECISION_OF = {name: p for p, name in PRECISION_DTYPES.items() if p != "int8"}
# onnx.TensorProto.DataType names -> dtype names
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
ONNX_ENUMS = {name: enum for enum, name in ONNX_NAMES.items()}  # derived: "float16" -> "FLOAT16"
# TensorRT DataType member names -> dtype names.
TRT_NAMES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
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


def precision_of(dtype) -> str:
    """ "fp16" for torch.float16 (or "float16"): the precision name graphs and engines are filed under."""
    name = dtype if isinstance(dtype, str) else dtype_name(dtype)
    if name not in PRECISION_OF:
        raise ValueError(f"no precision runs in {name}; use one of {', '.join(PRECISION_OF)}")
    return PRECISION_OF[name]


def onnx_type(dtype) -> int:
    """The onnx.TensorProto element type of a dtype name or torch dtype (ONNX Runtime's IO binding takes it)."""
    import onnx

    name = dtype if isinstance(dtype, str) else dtype_name(dtype)
    return getattr(onnx.TensorProto, ONNX_ENUMS[name])
