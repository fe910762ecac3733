"""The cascade on ONNX Runtime (exported graphs, IO binding, CPU provider) against the torch backend:
same seed, fp32, every stage within 1e-3 max abs, with and without step graphs, and the editing modes."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import ifengine
from ifengine.stage.seam import EagerStep
from ifengine.export.manifest import ArtifactError
from ifengine.export.spec import SpecError
from ifengine.backends.parts import NetworkIFStep, NetworkUNet
from ifengine.backends.onnxruntime.session import OrtGraph

TOL = 1e-3
RUN = dict(seed=3, output_type="pt", progress=False)


@pytest.fixture(scope="module")
def ort_cascade(exports):
    return ifengine.Cascade.from_artifacts(exports.get("fp32"), providers=["CPUExecutionProvider"])


def assert_close(ours, ref):
    assert len(ours.stages) == len(ref.stages)
    for stage, (a, b) in enumerate(zip(ours.stages, ref.stages, strict=True), start=1):
        assert a.shape == b.shape
        err = (a - b).abs().max().item()
        assert err <= TOL, f"stage {stage} differs from the torch backend by {err:.2e}"


def test_cascade_uses_the_exported_graphs(ort_cascade):
    assert isinstance(ort_cascade.stage1.unet, NetworkUNet) and isinstance(ort_cascade.stage1.step_fn, NetworkIFStep)
    assert ort_cascade.stage3.step_fn is not None and ort_cascade.safety is None
    assert ort_cascade.stage1.unet.network.graph.session.get_providers() == ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(steps=(4, 3, 3)),
        dict(steps=(3, 2, 2), height=24, width=16, num_images_per_prompt=1),
        dict(steps=(3, 2, 2), guidance=(1.0, 4.0, 1.0)),
    ],
    ids=["square", "non-square-batch-2", "without-guidance"],
)
def test_onnxruntime_cascade_matches_torch(ort_cascade, pipe, kwargs):
    prompt = ["a red cat", "a blue boat"] if "height" in kwargs else "a red cat"
    assert_close(ort_cascade(prompt, **kwargs, **RUN), pipe(prompt, **kwargs, **RUN))


def test_bare_unet_graphs_match_too(exports, pipe):
    bare = ifengine.Cascade.from_artifacts(exports.get("fp32"), use_step_graphs=False)
    assert isinstance(bare.stage1.step_fn, EagerStep)  # the torch step around the U-Net graph
    assert_close(bare("a cat", steps=(3, 2, 2), **RUN), pipe("a cat", steps=(3, 2, 2), **RUN))


def _image(width=40, height=24):
    base = np.linspace(0, 255, width * height * 3).reshape(height, width, 3)
    return Image.fromarray(base.astype(np.uint8))


def test_editing_modes_run_on_onnxruntime(ort_cascade, pipe):
    image = _image()
    mask = np.zeros((24, 40), np.uint8)
    mask[:12, 20:] = 255
    calls = [
        lambda p: p.img2img(image, "a boat", strength=(0.5, 0.5), steps=(4, 4, 2), **RUN),
        lambda p: p.inpaint(image, Image.fromarray(mask), "a door", steps=(3, 2), last_stage=2, **RUN),
        lambda p: p.style_transfer(
            image, "in lego style", positive_prompt="a tower", mixer=0.3, steps=(4, 4), last_stage=2, **RUN
        ),
    ]
    for call in calls:
        assert_close(call(ort_cascade), call(pipe))


def test_fp16_artifacts_run(exports, pipe):
    ref = pipe("a red cat", steps=(3, 2), last_stage=2, **RUN)
    fp16 = ifengine.Cascade.from_artifacts(exports.get("fp16"), precision="fp16")
    out = fp16("a red cat", steps=(3, 2), last_stage=2, **RUN)
    assert fp16.dtype == torch.float16 and all(torch.isfinite(s).all() for s in out.stages)
    assert (out.stages[0] - ref.stages[0]).abs().max() < 0.1


def test_wrong_shapes_and_bad_artifacts_are_clear_errors(exports, tmp_path):
    graph = OrtGraph(exports.manifest_path("unet1", "fp32"))
    with pytest.raises(SpecError, match="height=40 is outside 8..32"):
        graph(sample=torch.zeros(2, 3, 40, 16), timestep=torch.zeros(2), encoder_hidden_states=torch.zeros(2, 77, 32))
    with pytest.raises(ArtifactError, match="not a folder of exported graphs"):
        ifengine.Cascade.from_artifacts(tmp_path / "nowhere")
    with pytest.raises(ArtifactError, match="no bf16 kernels"):
        ifengine.Cascade.from_artifacts(exports.get("bf16"), precision="bf16")
    art = exports.copy(tmp_path / "art")
    manifest = art / "t5" / "fp32" / "manifest.json"
    raw = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**raw, "checkpoint_sha256": "0" * 64}))
    with pytest.raises(ArtifactError, match="stage 1 artifacts come from different checkpoints"):
        ifengine.Cascade.from_artifacts(art)
    manifest.write_text(json.dumps({**raw, "ifengine_version": "0.0.1"}))
    with pytest.raises(ArtifactError, match="exported by ifengine 0.0.1"):
        ifengine.Cascade.from_artifacts(art)
    manifest.write_text(json.dumps(raw))
    for path in (art / "clip").rglob("*"):
        if path.name == "manifest.json":
            path.unlink()
    with pytest.raises(ArtifactError, match="stage III needs clip"):
        ifengine.Cascade.from_artifacts(art)
