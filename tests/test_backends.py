"""The backend seam on the CPU: ONNX Runtime networks (IO binding to static buffers) through the GPU runner.

Exported graphs of the tiny checkpoints (shared per session with test_onnx_backend.py) run as
``OrtNetwork``s; the same ``StaticIO`` decisions serve the TensorRT adapter, so what is asserted here about
binding, buffer reuse and capture rules is what TensorRT would be told. References: the torch cascade
(<= 1e-4 at stage I in fp32) and diffusers for the same seed, for text-to-image and every editing mode.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from test_cascade import assert_stages_match, reference_chain
from test_edit import assert_match, border_mask, reference, run_reference, source_image  # noqa: F401 (fixture)

import ifengine
from ifengine.backends.base import call
from ifengine.stage.seam import Capturable, Capture, capture_of, weakest
from ifengine.backends.onnxruntime.network import OrtNetwork
from ifengine.backends.onnxruntime.session import OrtGraph
from ifengine.runtime.api import Runtime

RUN = dict(seed=3, output_type="pt", progress=False)


@pytest.fixture(scope="module")
def ort(exports):
    return ifengine.Cascade.from_artifacts(exports.get("fp32"), providers=["cpu"])


def _unet(exports) -> OrtNetwork:
    return OrtNetwork(OrtGraph(exports.manifest_path("unet1", "fp32")))


def _out(outputs):
    (out,) = outputs.values()
    return out


def _feeds(batch=2, h=16, w=16):
    return {
        "sample": torch.randn(batch, 3, h, w),
        "timestep": torch.full((batch,), 7.0),
        "encoder_hidden_states": torch.randn(batch, 77, 32),
    }


def test_io_binding_binds_only_on_change_and_reuses_the_static_buffers(exports):
    net = _unet(exports)
    feeds = _feeds()
    first = _out(call(net, feeds))
    ref = net.graph.session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
    assert np.allclose(first.numpy(), ref, atol=1e-5)  # the bound output is what ORT computes from the feeds
    ptr, binds = first.data_ptr(), net.io.binds
    again = _out(call(net, _feeds()))
    assert net.io.binds == binds == 1 and again.data_ptr() == ptr  # same dims: nothing rebound, same buffer
    smaller = _out(call(net, _feeds(batch=1, h=8, w=8)))
    # new dims: bound again, into a view of the same buffer
    assert net.io.binds == 2 and smaller.data_ptr() == ptr and smaller.shape == (1, 6, 8, 8)
    call(net, _feeds(batch=2, h=32, w=32))  # larger than ever: the buffers grow, every address is rebound
    assert (
        net.io.binds == 3
        and net.io.buffers[net.spec.output_names[0]].data_ptr() != ptr
        and net.io.binder.addresses_bound
    )
    with pytest.raises(ValueError, match="height=40 is outside 8..32"):
        call(net, _feeds(h=40))


def test_capture_rules_are_typed_statements():
    assert not Capture.NEVER.allows(warm=True) and Capture.ALWAYS.allows(warm=False)
    assert Capture.AFTER_WARMUP.allows(warm=True) and not Capture.AFTER_WARMUP.allows(warm=False)
    assert weakest([Capture.ALWAYS, Capture.AFTER_WARMUP]) is Capture.AFTER_WARMUP
    assert weakest([Capture.AFTER_WARMUP, Capture.NEVER]) is Capture.NEVER
    assert capture_of(torch.nn.Linear(1, 1)) is Capture.AFTER_WARMUP  # torch code: capturable after warm-up
    with pytest.raises(TypeError):
        Capturable()  # a backend must state its rule


def test_an_unbound_network_refuses_to_run(exports):
    net = _unet(exports)
    with pytest.raises(RuntimeError, match="call prepare"):
        net.enqueue()


def test_the_onnxruntime_cascade_runs_through_the_gpu_runner(ort, pipe):
    assert isinstance(ort.runtime, Runtime) and ort.runner is ort.runtime
    assert ort.stage1.step_fn.capture is Capture.NEVER and ort.stage1.unet.capture is Capture.NEVER
    step = ort.stage1.step_fn.network
    runs, binds = step.runs, step.io.binds
    out = ort("a red cat", steps=(4, 3, 3), **RUN)
    ref = pipe("a red cat", steps=(4, 3, 3), **RUN)
    assert step.runs == runs + 4 and step.io.binds <= binds + 1  # 4 enqueues, at most one bind per run
    assert len(ort.runtime.runner.graphs[1]) == 0  # Capture.NEVER: the runner never made a graph for it
    assert (out.stages[0] - ref.stages[0]).abs().max().item() <= 1e-4
    for a, b in zip(out.stages[1:], ref.stages[1:], strict=True):
        assert (a - b).abs().max().item() <= 1e-3


def test_the_onnxruntime_cascade_matches_diffusers(ort, diffusers_stage1, diffusers_stage2, diffusers_stage3):
    steps = (4, 3, 2)
    ref = reference_chain(diffusers_stage1, diffusers_stage2, diffusers_stage3, "a red cat", steps=steps, seed=2)
    assert_stages_match(ort("a red cat", steps=steps, seed=2, output_type="pt", progress=False), ref)


def test_editing_modes_on_onnxruntime_match_diffusers_and_torch(ort, pipe, reference):  # noqa: F811
    image, mask = source_image(), border_mask()
    kw = dict(steps=(3, 2, 2), seed=0, output_type="pt", progress=False)
    ours = ort.img2img(image, "a boat", strength=(0.5, 0.5), **kw)
    ref = run_reference(
        reference, "img2img", image, "a boat", steps=(3, 2, 2), strength=(0.5, 0.5), guidance=(10, 4, 9)
    )
    assert_match(ours, ref)  # img2img's defaults: guidance 10 at stage I
    ours = ort.inpaint(image, mask, "a door", strength=(1.0, 0.8), last_stage=2, **kw)
    ref = run_reference(
        reference, "inpaint", image, "a door", steps=(3, 2), strength=(1.0, 0.8), noise=(0, 20), mask=mask, last=2
    )
    assert_match(ours, ref)
    # style transfer on ONNX Runtime against torch: tests/test_onnx_backend.py (diffusers has no such mode)


def test_backends_mix_per_component(exports, stage1_dir, pipe):
    """U-Net I and its step on ONNX Runtime, T5 on torch from the stage I checkpoint."""
    from ifengine.backends.assemble import assemble, torch_parts
    from ifengine.backends.onnxruntime.load import open_networks
    from ifengine.models.checkpoint import resolve

    networks = open_networks(exports.get("fp32"), ["CPUExecutionProvider"], "fp32", skip={"t5", "clip", "x4_unet"})
    networks = {c: n for c, n in networks.items() if c in ("unet1", "step1")}
    parts = torch_parts({1: resolve(stage1_dir, 1, None)}, set(networks), torch.float32, torch.device("cpu"))
    assert parts.stages == {}  # U-Net I has a network: the torch U-Net is not loaded
    mixed = ifengine.Cascade.from_parts(assemble(networks, torch.device("cpu"), torch.float32, parts=parts))
    assert isinstance(mixed.text.model, torch.nn.Module) and mixed.stage1.unet.network.name == "unet1"
    out = mixed("a red cat", steps=(3,), last_stage=1, **RUN)
    ref = pipe("a red cat", steps=(3, 2, 2), last_stage=1, **RUN)
    assert (out.stages[0] - ref.stages[0]).abs().max().item() <= 1e-4


def test_generate_with_artifacts_writes_the_checkpoints_picture(exports, stage1_dir, stage2_dir, stage3_dir, tmp_path):
    from ifengine.cli import main

    common = ["generate", "a red cat", "--steps", "3,2,2", "--seed", "4", "--quiet", "--no-safety"]
    ckpts = ["--stage1", str(stage1_dir), "--stage2", str(stage2_dir), "--stage3", str(stage3_dir)]
    assert main(common + ckpts + ["--out", str(tmp_path / "torch.png")]) == 0
    assert main(common + ["--artifacts", str(exports.get("fp32")), "--out", str(tmp_path / "ort.png")]) == 0
    a = np.asarray(Image.open(tmp_path / "torch.png"), np.int16)
    b = np.asarray(Image.open(tmp_path / "ort.png"), np.int16)
    assert a.shape == b.shape and a.shape[-1] == 3
    assert Image.open(tmp_path / "torch.png").text == Image.open(tmp_path / "ort.png").text  # same settings
    # fp32 ORT and torch agree to ~1e-5; a value that close to a rounding edge may land one level over
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01
    source = tmp_path / "src.png"
    source_image().save(source)
    edit = ["--image", str(source), "--mask", str(source), "--last-stage", "1"]  # inpainting through the flags
    assert main(common + edit + ckpts + ["--out", str(tmp_path / "torch-edit.png")]) == 0
    assert main(common + edit + ["--artifacts", str(exports.get("fp32")), "--out", str(tmp_path / "ort-edit.png")]) == 0
    a = np.asarray(Image.open(tmp_path / "torch-edit.png"), np.int16)
    b = np.asarray(Image.open(tmp_path / "ort-edit.png"), np.int16)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1


def test_generate_refuses_flags_that_cannot_apply_to_graphs(tmp_path, capsys):
    from ifengine.cli import main

    out = ["--out", str(tmp_path / "x.png")]
    assert main(["generate", "a cat", "--providers", "cuda", *out]) == 2
    assert "add --artifacts DIR" in capsys.readouterr().err
    assert main(["generate", "a cat", "--artifacts", str(tmp_path), "--vram", "8GiB", *out]) == 2
    assert "--vram act on torch checkpoints only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    helptext = capsys.readouterr().out
    assert all(flag in helptext for flag in ("--engines", "--artifacts", "--providers"))


def test_providers_by_short_name():
    from ifengine.backends.onnxruntime.load import provider_list

    assert provider_list(None) == provider_list("cpu") == ["CPUExecutionProvider"]
    assert provider_list("cuda") == ["CUDAExecutionProvider"]
    assert provider_list("tensorrt") == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert provider_list([("CUDAExecutionProvider", {"device_id": 1})]) == [("CUDAExecutionProvider", {"device_id": 1})]
    with pytest.raises(ValueError, match="unknown provider 'rocm'"):
        provider_list("rocm")


def test_graph_cascades_keep_the_explicit_request_limits(ort):
    """The torch activation model does not describe ORT/TensorRT memory, but max_batch/max_pixels still hold."""
    ort.set_limits(max_batch=1, max_pixels=32 * 32)  # the tiny stage I is 16x16, so stage II makes 64x64
    try:
        with pytest.raises(ValueError, match="max_batch=1"):
            ort("a red cat", num_images_per_prompt=2, steps=(2, 2, 2), last_stage=1, **RUN)
        with pytest.raises(ValueError, match="max_pixels"):
            ort("a red cat", steps=(2, 2, 2), last_stage=2, **RUN)
    finally:
        ort.set_limits()
