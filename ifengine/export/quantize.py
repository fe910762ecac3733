"""int8 graphs with explicit, symmetric Q/DQ nodes (what TensorRT's explicit quantization builds).

Static (U-Nets, step graphs): ONNX Runtime's ``quantize_static`` in QDQ format, int8 weights and
activations, zero point 0 everywhere, weights per output channel, on Conv, Gemm and the MatMuls that
multiply by a weight; activation ranges come from calibration feeds (``calibration.py``). Biases and the
attention MatMuls between two activations stay in float (TensorRT fuses neither as int8 Q/DQ).

Weight-only (T5): each weight of a MatMul/Gemm becomes int8 with a per-output-channel scale and a
DequantizeLinear in front of the float MatMul, so the weights take a quarter of their fp32 memory while
the activations (and T5's overflow-prone FFN) stay fp32.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_export import data_name, load_onnx, save_onnx

log = logging.getLogger(__name__)

QUANT_OPS = ("Conv", "MatMul", "Gemm")
# Percentile (99.99) activation ranges beat MinMax and entropy on every U-Net we measured (cosine to fp32
# on held-out inputs: tiny IF-II 0.961 -> 0.989); outliers otherwise stretch the int8 grid.
# CalibStridedMinMax 1 makes ORT calibrate one feed at a time (despite its name, for every method): its
# histogram calibrators otherwise keep every intermediate tensor of every feed in memory at once, which
# took a 0.36 B-parameter U-Net at 64x64 past 22 GB.
STATIC_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "QuantizeBias": False,
    "MatMulConstBOnly": True,
    "CalibPercentile": 99.99,
    "CalibStridedMinMax": 1,
}


class _Feeds:
    """ONNX Runtime's CalibrationDataReader over a list of feeds, readable in ranges."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]]):
        self._all = list(feeds)
        self._left = iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._left = iter(self._all[start_index:end_index])

    def get_next(self):
        return next(self._left, None)


def quantize_static_qdq(fp32_path: Path, out_path: Path, feeds: list[Mapping[str, np.ndarray]]) -> None:
    """Write the int8 Q/DQ graph of ``fp32_path`` calibrated on ``feeds``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    big = (fp32_path.parent / data_name(fp32_path)).exists()
    with tempfile.TemporaryDirectory(dir=out_path.parent) as work:
        pre = Path(work) / "pre.onnx"
        # symbolic shape inference cannot follow our dynamic H/W; ONNX shape inference suffices here
        quant_pre_process(
            str(fp32_path),
            str(pre),
            skip_optimization=True,
            skip_symbolic_shape=True,
            save_as_external_data=big,
            all_tensors_to_one_file=True,
        )
        quantize_static(
            str(pre),
            str(out_path),
            _Feeds(feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANT_OPS),
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile,
            extra_options=dict(STATIC_OPTIONS),
            use_external_data_format=big,
        )
    log.debug("int8 Q/DQ graph written to %s from %d calibration feeds", out_path, len(feeds))


def quantize_weight_only(fp32_path: Path, out_path: Path) -> int:
    """Write ``fp32_path`` with int8 per-channel weights behind DequantizeLinear; returns the count."""
    model = load_onnx(fp32_path)
    inits = {t.name: t for t in model.graph.initializer}
    nodes, done = [], {}
    for node in model.graph.node:
        axis = _weight_axis(node)
        name = node.input[1] if axis is not None and len(node.input) > 1 else None
        weight = inits.get(name)
        if name in done:
            node.input[1] = done[name]
        elif weight is not None and weight.data_type == onnx.TensorProto.FLOAT and len(weight.dims) == 2:
            nodes.append(_dequantize(model, weight, axis))
            node.input[1] = done[name] = nodes[-1].output[0]
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    save_onnx(model, out_path)
    log.debug("weight-only int8: %d weights quantized", len(done))
    return len(done)


def _weight_axis(node: onnx.NodeProto) -> int | None:
    """Output-channel axis of the node's weight input B, or None when the node has no weight."""
    if node.op_type == "MatMul":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return None


def symmetric_int8(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 values and per-channel scales with zero point 0: w ~= q * scale."""
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    scale = np.abs(w).max(axis=reduce) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def _dequantize(model: onnx.ModelProto, weight: onnx.TensorProto, axis: int) -> onnx.NodeProto:
    q, scale = symmetric_int8(numpy_helper.to_array(weight), axis)
    base = weight.name
    zero = np.zeros_like(scale, dtype=np.int8)
    model.graph.initializer.remove(weight)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(q, f"{base}_int8"),
            numpy_helper.from_array(scale, f"{base}_scale"),
            numpy_helper.from_array(zero, f"{base}_zero_point"),
        ]
    )
    return helper.make_node(
        "DequantizeLinear",
        [f"{base}_int8", f"{base}_scale", f"{base}_zero_point"],
        [f"{base}_dequantized"],
        name=f"{base}_DequantizeLinear",
        axis=axis,
    )
