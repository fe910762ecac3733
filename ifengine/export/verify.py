"""Proof that an exported graph is what its spec says: ONNX checker, shape inference, I/O conformance,
and runs on ONNX Runtime.

``check_graph`` runs on every export before it is published. ``run_onnx`` runs a graph on ORT (CPU by
default) from numpy or torch inputs; bf16 graphs, which ORT's CPU provider cannot execute, run through
``bf16.emulate_bf16`` and are reported as emulated.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from ..dtypes import onnx_type
from .spec import ComponentSpec, SpecError
from ..errors import IFEngineError

log = logging.getLogger(__name__)


class GraphCheckError(IFEngineError, ValueError):
    """An exported graph that fails the ONNX checker, shape inference, or its spec."""


def check_graph(path: Path, spec: ComponentSpec) -> None:
    """onnx.checker (full, with strict shape inference) and the graph's I/O against the concrete spec."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        with tempfile.TemporaryDirectory() as tmp:
            onnx.shape_inference.infer_shapes_path(str(path), str(Path(tmp) / "inferred.onnx"), strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise GraphCheckError(f"{path} fails the ONNX checks: {err}") from err
    check_io(onnx.load(str(path), load_external_data=False), spec)


def check_io(model: onnx.ModelProto, spec: ComponentSpec) -> None:
    """Names, order, element types and dims of the graph's inputs and outputs equal the spec's."""
    for kind, graph_io, wanted in (
        ("input", model.graph.input, spec.inputs),
        ("output", model.graph.output, spec.outputs),
    ):
        names = [v.name for v in graph_io]
        if names != [t.name for t in wanted]:
            raise GraphCheckError(
                f"{spec.name}: graph {kind}s {names} differ from the spec's {[t.name for t in wanted]}"
            )
        for value, t in zip(graph_io, wanted, strict=True):
            _check_value(spec.name, value, t)


def _check_value(component: str, value: onnx.ValueInfoProto, t) -> None:
    tensor = value.type.tensor_type
    if tensor.elem_type != onnx_type(t.dtype):
        got = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise GraphCheckError(f"{component}: {t.name} is {got} in the graph, {t.dtype} in the spec")
    dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    if len(dims) != len(t.dims) or any(isinstance(w, int) and g != w for g, w in zip(dims, t.dims, strict=True)):
        raise GraphCheckError(f"{component}: {t.name} has dims {dims} in the graph, {list(t.dims)} in the spec")
    fixed = [g for g, w in zip(dims, t.dims, strict=True) if isinstance(w, str) and not isinstance(g, str)]
    if fixed:
        raise GraphCheckError(f"{component}: {t.name} has fixed sizes {dims} where the spec has named dims {t.dims}")


def is_bf16(model_or_path) -> bool:
    model = (
        model_or_path
        if isinstance(model_or_path, onnx.ModelProto)
        else onnx.load(str(model_or_path), load_external_data=False)
    )
    io = list(model.graph.input) + list(model.graph.output)
    return any(v.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16 for v in io)


# ONNX Runtime's CPU provider runs int8 Q/DQ graphs as uint8 x int8 products, which x86 CPUs without VNNI
# (AVX2 only, AVX-512 without VNNI) sum in pairs with VPMADDUBSW, saturating at int16: the tiny IF-I U-Net's
# held-out cosine to fp32 fell from 0.99 to 0.89 on such a CPU. "1" makes ORT take its exact uint8 x uint8
# kernels there (kOrtSessionOptionsAvx2PrecisionMode); it only matters on x86 and leaves float graphs alone.
ORT_CONFIG = {"session.x64quantprecision": "1"}


def session_options():
    """ORT session options for every session ifengine opens: quiet, exact int8 on x86 (``ORT_CONFIG``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in ORT_CONFIG.items():
        options.add_session_config_entry(key, value)
    return options


def session(path: Path, providers: Sequence[str] = ("CPUExecutionProvider",), emulate_bf16: bool = True):
    """An ORT session for ``path``; a bf16 graph on the CPU provider runs emulated (see bf16.py)."""
    import onnxruntime as ort

    options = session_options()
    if emulate_bf16 and list(providers) == ["CPUExecutionProvider"] and is_bf16(path):
        from .bf16 import emulate_bf16 as emulate  # onnx rewriting, only for bf16 graphs on the CPU

        model = emulate(onnx.load(str(path)))
        # no graph optimisation: it could fold the rounding Cast pairs that carry the bf16 precision
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))
    return ort.InferenceSession(str(path), options, providers=list(providers))


def run_onnx(sess, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run with feeds cast to what the session declares (bf16 feeds go in as float32 when emulated)."""
    declared = {i.name: i.type for i in sess.get_inputs()}
    cast = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
    unknown = set(feeds) - set(declared)
    if unknown:
        raise SpecError(f"feeds {sorted(unknown)} are not inputs of the graph ({sorted(declared)})")
    return sess.run(None, {k: np.asarray(v).astype(cast.get(declared[k], np.float32)) for k, v in feeds.items()})


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """max |out - ref| / max |ref|: error relative to the output's scale."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
