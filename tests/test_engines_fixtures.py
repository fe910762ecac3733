"""Helpers for the engine tests: tiny real ONNX graphs with export manifests, and a fixed target.

The graphs are real (onnx helper API, checked by onnx.checker and run by onnxruntime in a test below);
the export manifests follow the exporter's agreed layout (component, precision, graph, graph_sha256,
source_sha256, spec, opset, exporter, ifengine_version).
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ifengine.engines.cache import Target
from ifengine.engines.specs import spec_to_dict
from ifengine.export.spec import vae_decoder_spec
from ifengine.models.presets import vae_preset

TARGET = Target(gpu="NVIDIA H200", compute_capability="9.0", tensorrt="10.13.0.35")
ONNX_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}


def tiny_vae_spec():
    return vae_decoder_spec(vae_preset("tiny-vae"))


def tiny_vae_graph(path: Path, dtype: str = "float32", channels_out: int = 3) -> Path:
    """latents [b, 4, h, w] -> image [b, 3, 4h, 4w]: first three channels, nearest x4 upsampling."""
    t = ONNX_TYPES[dtype]
    nodes = [
        helper.make_node("Slice", ["latents", "starts", "ends", "axes"], ["rgb"]),
        helper.make_node("Resize", ["rgb", "", "scales"], ["image"], mode="nearest"),
    ]
    inits = [
        helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
        helper.make_tensor("ends", TensorProto.INT64, [1], [channels_out]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 4, 4]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_vae_decoder",
        [helper.make_tensor_value_info("latents", t, ["batch", 4, "height", "width"])],
        [helper.make_tensor_value_info("image", t, ["batch", channels_out, "out_height", "out_width"])],
        inits,
    )
    # IR version 10: what onnxruntime and TensorRT 10 read (onnx 1.23 would write 14)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=10)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_export(artifacts: Path, component: str, precision: str, spec, graph_source: Path) -> Path:
    """An artifact in the exporter's layout: ARTIFACTS/<component>/<precision>/manifest.json naming a payload
    folder with the graph; returns the manifest path."""
    folder = artifacts / component / precision
    payload = folder / f"payload-{hashlib.sha256(graph_source.read_bytes()).hexdigest()[:8]}"
    payload.mkdir(parents=True, exist_ok=True)
    graph = payload / "model.onnx"
    graph.write_bytes(graph_source.read_bytes())
    digest = hashlib.sha256(graph.read_bytes()).hexdigest()
    body = {
        "format": 1,
        "component": component,
        "precision": precision,
        "graph": str(graph.relative_to(folder)),
        "graph_sha256": digest,
        "files": {"model.onnx": {"size": graph.stat().st_size, "sha256": digest}},
        "source_sha256": "0" * 64,
        "checkpoint_sha256": "1" * 64,
        "config": {},
        "spec": spec_to_dict(spec),
        "opset": 19,
        "exporter": "test",
        "ifengine_version": "0.1.0",
    }
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps(body))
    return manifest


def export_tiny_vae(artifacts: Path, precision: str = "fp32", channels_out: int = 3) -> Path:
    dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision]
    graph = tiny_vae_graph(artifacts / ".sources" / f"vae-{precision}-{channels_out}.onnx", dtype, channels_out)
    return write_export(artifacts, "vae_decoder", precision, tiny_vae_spec(), graph)


def fake_engine_bytes(job, timing_cache=None, progress=True) -> bytes:
    """Stands in for TensorRT's serialized engine: deterministic bytes per job."""
    return b"ENGINE:" + json.dumps(job.key_fields(), sort_keys=True).encode() * 50


def test_tiny_vae_graph_runs_and_upsamples(tmp_path):
    import onnxruntime as ort

    path = tiny_vae_graph(tmp_path / "g.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    latents = np.random.default_rng(0).standard_normal((2, 4, 8, 16)).astype(np.float32)
    (image,) = session.run(None, {"latents": latents})
    assert image.shape == (2, 3, 32, 64)
    np.testing.assert_array_equal(image[:, :, ::4, ::4], latents[:, :3])
