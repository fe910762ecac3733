"""torch module -> ONNX file with the TorchScript exporter, and file-level ONNX helpers.

The TorchScript exporter (``dynamo=False``) is used: it exports every component here, matches torch to
~1e-6 in fp32, and is what NVIDIA's TensorRT diffusion demo uses. Graphs over 2 GB keep their weights
in one external data file (``model.onnx.data``) next to the graph.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from collections.abc import Iterator

import onnx
import torch
from onnx.external_data_helper import ExternalDataInfo, uses_external_data
from torch import nn

from .graphs import pretransposed_linears
from .spec import ComponentSpec

log = logging.getLogger(__name__)

EXPORTER = "torch.onnx.export (TorchScript tracer, dynamo=False)"
PROTO_LIMIT = 2**31 - 1  # protobuf's limit on one serialized message
# Weights past this size go to one external data file (the margin leaves room for the graph itself).
EXTERNAL_DATA_THRESHOLD = PROTO_LIMIT - 64 * 2**20
_ALIGN = 4096


def exporter_info() -> dict[str, str]:
    import onnxruntime

    return {
        "name": EXPORTER,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def trace_to_onnx(
    module: nn.Module, spec: ComponentSpec, args: tuple[torch.Tensor, ...], path: Path, opset: int
) -> None:
    """Export ``module(*args)`` with the spec's names and dynamic axes; weights go external past 2 GB.

    The tracer runs the module once. Half-precision convolutions run channels-last meanwhile: CPU fp16
    convolution is ~10x faster in that layout (a full-size fp16 U-Net would otherwise trace for hours),
    and memory layout does not appear in the graph.
    """
    module.eval()  # the exporter restores a module's train/eval mode afterwards: enter it in eval
    half = any(p.dtype in (torch.float16, torch.bfloat16) for p in module.parameters())
    if half:
        args = tuple(a.to(memory_format=torch.channels_last) if a.dim() == 4 else a for a in args)
    layout = _channels_last(module) if half else contextlib.nullcontext()
    with torch.no_grad(), pretransposed_linears(module), layout, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*(onnx|ONNX|Constant folding|legacy).*")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
            do_constant_folding=True,
        )
    gather_external_data(path)
    externalize_if_large(path)


@contextlib.contextmanager
def _channels_last(module: nn.Module) -> Iterator[None]:
    """Conv weights channels-last for the block (one tensor at a time), then back."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs:
        conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for conv in convs:
            conv.weight.data = conv.weight.data.contiguous()


def data_name(path: Path) -> str:
    return f"{path.name}.data"


def gather_external_data(path: Path) -> None:
    """Move per-tensor external files (what the exporter writes past 2 GB) into one ``<graph>.data`` file."""
    model = onnx.load(str(path), load_external_data=False)
    tensors = [t for t in _all_tensors(model) if uses_external_data(t)]
    if not tensors or all(ExternalDataInfo(t).location == data_name(path) for t in tensors):
        return
    folder, offset = path.parent, 0
    with open(folder / data_name(path), "wb") as out:
        for tensor in tensors:
            offset = _append(tensor, folder, out, offset, path)
    onnx.save_model(model, str(path))
    log.debug("gathered %d external tensors into %s", len(tensors), data_name(path))


def externalize_if_large(path: Path) -> None:
    """An inline graph whose weights pass ``EXTERNAL_DATA_THRESHOLD`` is rewritten with external data."""
    model = onnx.load(str(path), load_external_data=False)
    if any(uses_external_data(t) for t in _all_tensors(model)) or tensor_bytes(model) <= EXTERNAL_DATA_THRESHOLD:
        return
    save_onnx(model, path)


def _append(tensor, folder: Path, out, offset: int, path: Path) -> int:
    info = ExternalDataInfo(tensor)
    source = folder / info.location
    with open(source, "rb") as handle:
        handle.seek(info.offset or 0)
        data = handle.read(info.length) if info.length else handle.read()
    padding = (-offset) % _ALIGN
    out.write(b"\0" * padding)
    offset += padding
    out.write(data)
    _set_location(tensor, data_name(path), offset, len(data))
    if source.name != data_name(path):
        os.remove(source)
    return offset + len(data)


def _set_location(tensor, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def tensor_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in _all_tensors(model))


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Save inline, or with one external data file when the graph would pass protobuf's 2 GB limit."""
    external = tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=data_name(path),
        size_threshold=1024,
    )


def load_onnx(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=True)


def convert_opset(path: Path, opset: int) -> None:
    """Rewrite the graph at ``path`` for ``opset`` (bf16 Conv, pooling and norms need opset 22)."""
    from onnx import version_converter

    model = load_onnx(path)
    current = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if current == opset:
        return
    converted = version_converter.convert_version(model, opset)
    _remove_graph_files(path)
    save_onnx(converted, path)


def _remove_graph_files(path: Path) -> None:
    for p in (path, path.parent / data_name(path)):
        if p.exists():
            p.unlink()
