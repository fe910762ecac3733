"""Precision variants: T5 stays finite in fp16 where fp32 activations pass 65504; int8 graphs carry
explicit symmetric Q/DQ (zero point 0, per-channel weights) and stay within cosine 0.98 of fp32."""

import shutil

import numpy as np
import onnx
import pytest
import torch
from export_support import relative_error
from onnx import numpy_helper

from ifengine.export.api import export_artifacts
from ifengine.export.calibration import HELD_OUT_PROMPTS, feeds, stage_calls
from ifengine.export.int8 import embedder, int8_cosines
from ifengine.export.manifest import read_manifest
from ifengine.export.spec import ComponentSpec
from ifengine.export.verify import check_graph, run_onnx, session
from ifengine.models.checkpoint import resolve

INT8_UNETS = ("unet1", "unet2", "x4_unet")
FP16_MAX = 65504.0


@pytest.fixture(scope="module")
def int8(exports):
    return exports.get("int8", ("t5",) + INT8_UNETS)


def _ffn_peak(model, ids, mask) -> float:
    """Largest |activation| at the output of any T5 FFN block (where v1.1 overflows fp16)."""
    peaks = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: peaks.append(out.abs().max().item()))
        for name, m in model.named_modules()
        if name.endswith("DenseReluDense")
    ]
    with torch.no_grad():
        model(ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    return max(peaks)


@pytest.fixture(scope="module")
def hot_t5_checkpoint(stage1_dir, tmp_path_factory):
    """stage1_dir with T5 FFN output weights scaled so that fp32 activations pass fp16's maximum."""
    from transformers import T5EncoderModel

    root = tmp_path_factory.mktemp("hot_t5") / "stage1"
    shutil.copytree(stage1_dir, root)
    model = T5EncoderModel.from_pretrained(root / "text_encoder", dtype=torch.float32)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("DenseReluDense"):
                module.wo.weight.mul_(20000.0)
    for f in (root / "text_encoder").glob("*.safetensors*"):
        f.unlink()
    model.save_pretrained(root / "text_encoder")
    return root, model.eval()


def test_t5_fp16_graph_stays_finite_where_fp32_passes_65504(hot_t5_checkpoint, tmp_path):
    root, model = hot_t5_checkpoint
    ids = torch.randint(0, model.config.vocab_size, (2, 77), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    assert _ffn_peak(model, ids, mask) > FP16_MAX  # the test provokes the overflow it guards against
    with torch.no_grad():
        ref = model(ids, attention_mask=mask)[0].numpy()
        naive = model.half()(ids, attention_mask=mask)[0].float().numpy()  # every weight fp16, wo included
        model.float()
    assert not np.isfinite(naive).all() or relative_error(naive, ref) > 0.1  # plain fp16 breaks
    (path,) = export_artifacts({1: root}, tmp_path, components=["t5"], precisions=["fp16"], progress=False)
    manifest = read_manifest(path)
    graph = path.parent / manifest["graph"]
    check_graph(graph, ComponentSpec.from_dict(manifest["spec"]))
    out = run_onnx(session(graph), {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert out.dtype == np.float16 and np.isfinite(out).all()
    assert relative_error(out, ref) <= 1e-2
    assert "wo" in manifest["variant"]["note"]


def _quant_nodes(graph):
    model = onnx.load(str(graph))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return model, inits


def _check_symmetric_qdq(graph) -> dict[str, int]:
    """Every Q/DQ has zero point 0 (int8); weights are per-channel; returns counts of quantized op types."""
    model, inits = _quant_nodes(graph)
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero = inits[node.input[2]]
            assert zero.dtype == np.int8 and not zero.any(), f"{node.name}: zero point must be int8 0"
    counts = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        weight = producers.get(node.input[1])
        if weight is None or weight.op_type != "DequantizeLinear" or weight.input[0] not in inits:
            continue
        scale = inits[weight.input[1]]
        assert inits[weight.input[0]].dtype == np.int8 and scale.ndim == 1 and scale.size > 1
        axis = next(a.i for a in weight.attribute if a.name == "axis")
        assert scale.size == inits[weight.input[0]].shape[axis]
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@pytest.mark.parametrize("component", INT8_UNETS)
def test_int8_unet_is_symmetric_qdq_and_close_to_fp32(exports, int8, stage1_dir, stage2_dir, stage3_dir, component):
    manifest = exports.manifest(component, "int8")
    graph, spec = exports.graph(component, "int8"), ComponentSpec.from_dict(manifest["spec"])
    check_graph(graph, spec)
    counts = _check_symmetric_qdq(graph)
    assert counts.get("Conv", 0) > 5 and counts.get("MatMul", 0) + counts.get("Gemm", 0) > 5
    assert manifest["quantization"]["held_out_cosine_min"] >= 0.98
    # an independent check: other held-out prompts, timesteps and noise than the exporter measured on
    ckpts = {1: resolve(stage1_dir, 1), 2: resolve(stage2_dir, 2), 3: resolve(stage3_dir, 3)}
    stage = ckpts[3 if component == "x4_unet" else int(component[-1])].stage
    calls = stage_calls(
        stage,
        manifest["config"],
        embedder(stage, manifest["config"], ckpts),
        HELD_OUT_PROMPTS[::-1],
        3,
        spec.ranges["height"].opt,
        spec.ranges["width"].min,
        seed=99,
    )
    cosines = int8_cosines(exports.graph(component, "fp32"), graph, feeds(component, spec, calls))
    assert min(cosines) >= 0.98, cosines
    out = run_onnx(session(graph), feeds(component, spec, calls[:1])[0])[0]
    assert np.isfinite(out).all()


def test_t5_int8_is_weight_only_and_close_to_fp32(exports, int8):
    graph = exports.graph("t5", "int8")
    counts = _check_symmetric_qdq(graph)
    model, _ = _quant_nodes(graph)
    assert counts.get("MatMul", 0) >= 8 and not any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    manifest = exports.manifest("t5", "int8")
    vocab = manifest["config"]["text_encoder"]["vocab_size"]
    ids = torch.randint(0, vocab, (3, 77), generator=torch.Generator().manual_seed(5)).numpy()
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    ref = run_onnx(session(exports.graph("t5", "fp32")), feed)[0]
    out = run_onnx(session(graph), feed)[0]
    cos = float((out * ref).sum() / np.linalg.norm(out) / np.linalg.norm(ref))
    assert cos >= 0.99
    fp32_bytes = sum(f["size"] for f in exports.manifest("t5", "fp32")["files"].values())
    assert sum(f["size"] for f in manifest["files"].values()) < 0.5 * fp32_bytes + 2**20


@pytest.mark.parametrize("component", ["step1", "step2", "step3"])
def test_int8_step_graphs(exports, component):
    manifest = exports.manifest(component, "int8")
    check_graph(exports.graph(component, "int8"), ComponentSpec.from_dict(manifest["spec"]))
    _check_symmetric_qdq(exports.graph(component, "int8"))
    assert manifest["quantization"]["held_out_cosine_min"] >= 0.98
