"""Run a bf16 graph where ONNX Runtime has no bf16 kernels (its CPU provider): emulated bf16.

``emulate_bf16`` rewrites the graph so every tensor the original types as bf16 is carried as float32
and rounded to bf16 right after the node that makes it (a Cast to bf16 and back). Weights are exact
(bf16 widens losslessly) and each op computes in float32 on bf16-rounded inputs and rounds its result,
which is how bf16 GPU kernels behave (float32 accumulation, bf16 storage). It proves the graph's
structure and its bf16 numerics closely, not bit for bit: a GPU provider runs the graph itself.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper, numpy_helper

BF16, FLOAT = TensorProto.BFLOAT16, TensorProto.FLOAT


def emulate_bf16(model: onnx.ModelProto) -> onnx.ModelProto:
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    bf16_values = {
        v.name
        for v in list(graph.input) + list(graph.output) + list(graph.value_info)
        if v.type.tensor_type.elem_type == BF16
    }
    _widen_tensors(graph)
    nodes = []
    for node in graph.node:
        _widen_attributes(node)
        rounded = [o for o in node.output if o in bf16_values]
        for name in rounded:
            node.output[list(node.output).index(name)] = f"{name}__f32"
        nodes.append(node)
        for name in rounded:
            nodes += [
                helper.make_node("Cast", [f"{name}__f32"], [f"{name}__bf16"], to=BF16),
                helper.make_node("Cast", [f"{name}__bf16"], [name], to=FLOAT),
            ]
    del graph.node[:]
    graph.node.extend(nodes)
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.type.tensor_type.elem_type == BF16:
            value.type.tensor_type.elem_type = FLOAT
    return model


def _widen(tensor: onnx.TensorProto) -> onnx.TensorProto:
    array = numpy_helper.to_array(tensor).astype("float32")
    return numpy_helper.from_array(array, tensor.name)


def _widen_tensors(graph: onnx.GraphProto) -> None:
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type == BF16:
            graph.initializer[i].CopyFrom(_widen(tensor))


def _widen_attributes(node: onnx.NodeProto) -> None:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == BF16:
            attr.t.CopyFrom(_widen(attr.t))
        if node.op_type == "Cast" and attr.name == "to" and attr.i == BF16:
            attr.i = FLOAT  # the rounding Cast pair inserted after the node keeps bf16 precision
