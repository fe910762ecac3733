"""TensorRT backend: buffer, binding, profile, scratch and streaming logic on CPU; real TensorRT tests marked.

The logic tests run everywhere. The ``tensorrt`` tests build and run a real engine and skip, with the
reason, where TensorRT or a GPU is missing (on our build and CI machines TensorRT cannot be installed).
"""

import contextlib
import pytest
import torch

from ifengine.engines import bindings
from ifengine.engines.builder import engine_manifest
from ifengine.engines.errors import EngineCorrupt, TensorRTError, TensorRTUnavailable
from ifengine.engines.exports import find_exports
from ifengine.engines.io_plan import IOPlan
from ifengine.engines.build_plan import BuildFlags, make_plan
from ifengine.engines.recipe import parse_recipe
from ifengine.engines.trt_build import PhaseBars, builder_settings, check_profile_inputs
from ifengine.export.spec import DimRange
from test_engines_fixtures import TARGET, export_tiny_vae

RECIPE = {
    "batch": {"min": 1, "opt": 1, "max": 2},
    "shapes": {"aspects": ["1:1", "16:9", "9:16"]},
    "components": {"vae_decoder": "fp32"},
}


def _plan_and_manifest(tmp_path, recipe=RECIPE):
    artifacts = tmp_path / "artifacts"
    export_tiny_vae(artifacts)
    plan = make_plan(
        parse_recipe(recipe, "mine.toml"), artifacts, tmp_path / "engines", exports=find_exports(artifacts)
    )
    return plan, [engine_manifest(job, TARGET, plan) for job in plan.jobs]


@pytest.fixture
def vae(tmp_path):
    _, (manifest,) = _plan_and_manifest(tmp_path)
    return IOPlan.from_manifest(manifest)


def test_buffers_are_planned_at_the_profile_maximum_with_output_dims_derived(vae):
    assert vae.dims["height"] == DimRange(256, 256, 448, 8)
    assert vae.dims["out_height"] == DimRange(1024, 1024, 1792, 32)  # the VAE's x4, from the spec's ranges
    assert vae.max_shapes() == {"latents": (2, 4, 448, 448), "image": (2, 3, 1792, 1792)}
    assert vae.io_shapes({"batch": 1, "height": 256, "width": 448}) == {
        "latents": (1, 4, 256, 448),
        "image": (1, 3, 1024, 1792),
    }
    assert vae.nbytes("image", (2, 3, 1792, 1792)) == 2 * 3 * 1792 * 1792 * 4


def test_shapes_outside_the_profile_are_refused_before_enqueueing(vae):
    with pytest.raises(ValueError, match="height=512 is outside the engine's profile 256..448.*add the size"):
        vae.full_dims({"batch": 1, "height": 512, "width": 256})
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.full_dims({"batch": 1, "height": 260, "width": 256})
    with pytest.raises(ValueError, match="no value for dim"):
        vae.full_dims({"batch": 1, "height": 256})


def test_dims_are_read_off_input_shapes(vae):
    assert vae.dims_of({"latents": (2, 4, 256, 448)}) == {"batch": 2, "height": 256, "width": 448}
    with pytest.raises(ValueError, match="expected .*'batch', 4"):
        vae.dims_of({"latents": (2, 3, 256, 448)})
    with pytest.raises(ValueError, match="input 'latents' is missing"):
        vae.dims_of({})


def test_static_buffers_are_allocated_once_and_viewed_per_call(vae):
    buffers = bindings.allocate_buffers(vae, "cpu")
    assert {n: b.numel() for n, b in buffers.items()} == {"latents": 2 * 4 * 448 * 448, "image": 2 * 3 * 1792 * 1792}
    small = bindings.views(buffers, vae.io_shapes({"batch": 1, "height": 256, "width": 256}))
    assert small["image"].shape == (1, 3, 1024, 1024)
    assert all(small[n].data_ptr() == buffers[n].data_ptr() for n in buffers)  # the bound address stays valid
    small["latents"].fill_(3.0)
    assert buffers["latents"][: 4 * 256 * 256].eq(3.0).all()


def test_addresses_are_bound_once_and_shapes_only_when_they_change(vae):
    binder = bindings.Binder(vae, {"latents": 1024, "image": 4096})
    first = binder.update({"batch": 1, "height": 256, "width": 256})
    assert first.shapes == {"latents": (1, 4, 256, 256)} and first.addresses == {"latents": 1024, "image": 4096}
    binder.warm = True
    assert binder.update({"batch": 1, "height": 256, "width": 256}) is None and binder.warm
    second = binder.update({"batch": 2, "height": 256, "width": 448})
    assert second.shapes == {"latents": (2, 4, 256, 448)} and second.addresses == {}
    assert not binder.warm and binder.shapes["image"] == (2, 3, 1024, 1792)
    binder.reset()  # a failed bind: everything is bound again
    again = binder.update({"batch": 2, "height": 256, "width": 448})
    assert again.shapes and again.addresses


class Recorder:
    """Stands in for the thin TensorRT layer (trt_runtime's bind/output_shape/enqueue), recording calls."""

    def __init__(self, monkeypatch):
        import ifengine.backends.tensorrt.engines as backend

        self.calls, self.shapes = [], {}
        monkeypatch.setattr(backend.trt_rt, "bind", self.bind)
        monkeypatch.setattr(backend.trt_rt, "output_shape", lambda ctx, name: self.shapes[name])
        monkeypatch.setattr(backend.trt_rt, "enqueue", lambda ctx, stream: self.calls.append(("enqueue", stream)))
        monkeypatch.setattr(backend, "enqueue_handle", lambda stream: contextlib.nullcontext(7))

    def bind(self, context, shapes, addresses):
        self.calls.append(("bind", dict(shapes), dict(addresses)))
        if shapes:  # what TensorRT's shape inference would report for the image
            b, _, h, w = shapes["latents"]
            self.shapes["image"] = (b, 3, 4 * h, 4 * w)


def test_the_engine_copies_into_static_buffers_and_binds_only_on_shape_changes(vae, monkeypatch):
    from ifengine.backends.tensorrt.engines import TensorRTEngine, TensorRTEngineSet

    rec = Recorder(monkeypatch)
    engine = TensorRTEngine(vae, context=None, device="cpu")
    latents = torch.randn(1, 4, 256, 256)
    out = engine({"latents": latents})
    assert out["image"].shape == (1, 3, 1024, 1024)
    assert out["image"].data_ptr() == engine.buffers["image"].data_ptr()
    assert torch.equal(engine.inputs()["latents"], latents)
    engine({"latents": latents * 2})
    engine({"latents": torch.randn(2, 4, 256, 448)})
    kinds = [c[0] for c in rec.calls]
    assert kinds == ["bind", "enqueue", "enqueue", "bind", "enqueue"]
    assert rec.calls[0][2] == {n: b.data_ptr() for n, b in engine.buffers.items()} and rec.calls[3][2] == {}
    assert rec.calls[1] == ("enqueue", 7) and engine.io.binder.warm
    with pytest.raises(ValueError, match="outside the engine's profile"):
        engine({"latents": torch.randn(1, 4, 512, 256)})
    engines = TensorRTEngineSet(engines={"vae_decoder": [engine]}, scratch=torch.empty(256, dtype=torch.uint8))
    assert engines.scratch_bytes == 256 and engines.engine("vae_decoder", batch=1, height=256, width=256) is engine
    with pytest.raises(KeyError, match="no unet1 engine loaded"):
        engines.engine("unet1")


def test_the_component_network_carries_its_export_and_picks_the_engine(tmp_path, monkeypatch):
    from ifengine.backends.base import call
    from ifengine.stage.seam import Capture
    from ifengine.backends.tensorrt.engines import EngineNetwork, TensorRTEngine, TensorRTEngineSet

    Recorder(monkeypatch)
    plan, (manifest,) = _plan_and_manifest(tmp_path)
    io = IOPlan.from_manifest(manifest)
    engine = TensorRTEngine(io, context=None, device="cpu")
    engines = TensorRTEngineSet({"vae_decoder": [engine]}, torch.empty(1), manifests={"vae_decoder": manifest})
    network = EngineNetwork(engines, "vae_decoder", device="cpu")
    assert network.name == "vae_decoder" and network.manifest["component"] == "vae_decoder"
    assert network.manifest_path == plan.jobs[0].export.manifest and network.spec.input_names == ["latents"]
    assert network.capture is Capture.AFTER_WARMUP and network.config == network.manifest["config"]
    image = call(network, {"latents": torch.zeros(1, 4, 256, 256)})["image"]
    assert image.shape == (1, 3, 1024, 1024) and image.data_ptr() == engine.buffers["image"].data_ptr()


def test_a_shape_mismatch_reported_by_tensorrt_unbinds(vae, monkeypatch):
    import ifengine.backends.tensorrt.engines as backend
    from ifengine.backends.tensorrt.engines import TensorRTEngine

    rec = Recorder(monkeypatch)
    monkeypatch.setattr(backend.trt_rt, "bind", lambda *a: rec.shapes.update(image=(1, 3, 9, 9)))
    engine = TensorRTEngine(vae, context=None, device="cpu")
    with pytest.raises(RuntimeError, match="TensorRT gives image the shape"):
        engine.prepare({"batch": 1, "height": 256, "width": 256})
    assert engine.io.binder.bound_dims is None


def test_one_scratch_allocation_serves_every_engine():
    assert bindings.shared_scratch_bytes([3_000, 70_000_001, 12]) == 70_000_128
    assert bindings.shared_scratch_bytes([]) == 0


@pytest.mark.parametrize(
    "requested, streaming, default, expected",
    [
        (None, False, None, None),  # ordinary engine: nothing to set
        (None, True, None, None),  # streaming engine, no budget anywhere: TensorRT's default
        (None, True, "auto", 600),  # the recipe's default
        ("auto", True, 1.0, 600),  # the caller wins over the recipe
        ("25%", True, None, 250),
        (0.5, True, None, 1000),  # GiB above the streamable size: all weights stay
        (100, True, "auto", 100),
    ],
)
def test_weight_streaming_budgets_resolve_to_bytes(requested, streaming, default, expected, monkeypatch):
    monkeypatch.setattr(bindings, "GIB", 4000)
    assert bindings.resolve_budget(requested, streaming, default, streamable=1000, automatic=600) == expected


def test_a_budget_for_an_engine_built_without_streaming_is_refused():
    with pytest.raises(ValueError, match="set weight_streaming = true"):
        bindings.resolve_budget("auto", False, None, 0, 0)
    with pytest.raises(ValueError, match="use 'auto'"):
        bindings.resolve_budget("lots", True, None, 10, 5)


def test_static_engines_are_chosen_by_exact_shape_and_dynamic_ones_by_range(tmp_path):
    static = {**RECIPE, "build": {"static_shapes": True}}
    _, manifests = _plan_and_manifest(tmp_path / "s", static)
    _, (dynamic,) = _plan_and_manifest(tmp_path / "d")
    plans = [IOPlan.from_manifest(m) for m in [dynamic] + manifests]
    assert [p.name for p in plans] == [
        "vae_decoder-fp32",
        "vae_decoder-fp32-b1-256x256",
        "vae_decoder-fp32-b1-448x256",
        "vae_decoder-fp32-b1-256x448",
    ]
    assert bindings.select(plans, {"batch": 1, "height": 256, "width": 448}) == 2
    assert bindings.select(plans, {"batch": 2, "height": 256, "width": 448}) == 0
    with pytest.raises(ValueError, match="no engine covers .*add the size or batch"):
        bindings.select(plans[1:], {"batch": 2, "height": 256, "width": 448})


def _described(plan):
    lo, opt, hi = ({k: getattr(r, a) for k, r in plan.dims.items()} for a in ("min", "opt", "max"))
    return {
        "latents": {
            "input": True,
            "dtype": "float32",
            "shape": (-1, 4, -1, -1),
            "profile": tuple(plan.shape(plan.spec.inputs[0], d) for d in (lo, opt, hi)),
        },
        "image": {"input": False, "dtype": "float32", "shape": (-1, 3, -1, -1)},
    }


def test_the_engine_must_match_its_manifest(vae):
    bindings.check_engine_io(vae, _described(vae))
    wrong_dtype, wrong_profile = _described(vae), _described(vae)
    wrong_dtype["image"]["dtype"] = "float16"
    wrong_profile["latents"]["profile"] = ((1, 4, 64, 64),) * 3
    for described, message in (
        (wrong_dtype, "float16 in the engine"),
        (wrong_profile, "profile in the engine"),
        ({"latents": {}}, "tensors"),
    ):
        with pytest.raises(EngineCorrupt, match=message):
            bindings.check_engine_io(vae, described)


def test_builder_settings_and_graph_inputs_are_checked_before_building(vae, tmp_path):
    assert builder_settings(BuildFlags(4, 2**30, True, True)) == {
        "flags": ["WEIGHT_STREAMING", "REFIT"],
        "optimization_level": 4,
        "workspace": 2**30,
    }
    assert builder_settings(BuildFlags())["flags"] == []
    plan, _ = _plan_and_manifest(tmp_path)
    check_profile_inputs(["latents"], plan.jobs[0].profile)
    with pytest.raises(TensorRTError, match="re-export"):
        check_profile_inputs(["latents", "extra"], plan.jobs[0].profile)


def test_build_progress_follows_top_level_phases_only():
    bars = PhaseBars("unet1-fp16")
    bars.start("Building engine", None, 4)
    bars.start("Tactic search", "Building engine", 100)  # nested: no bar
    assert set(bars.bars) == {"Building engine"}
    assert bars.step("Building engine", 1) and bars.bars["Building engine"].n == 2
    assert bars.step("Tactic search", 5)  # never cancels
    bars.finish("Building engine")
    assert bars.bars == {}


def _built_engines(tmp_path):
    """Engines built through the real build path with fake TensorRT bytes (they pass every cache check)."""
    from ifengine.engines.builder import build_plan
    from test_engines_fixtures import fake_engine_bytes

    plan, _ = _plan_and_manifest(tmp_path)
    build_plan(plan, TARGET, fake_engine_bytes, progress=False)
    return plan.out


def test_without_tensorrt_the_backend_says_how_to_install_it(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    from ifengine.backends.tensorrt.load import load_engines

    built = _built_engines(tmp_path)
    with pytest.raises(TensorRTUnavailable, match="pip install"):
        load_engines(built, ["vae_decoder"])


def _need_tensorrt_and_gpu():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (it cannot be installed on our build machines)")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.mark.tensorrt
def test_real_tensorrt_builds_loads_runs_and_replays_a_cuda_graph(tmp_path):
    _need_tensorrt_and_gpu()
    from ifengine.engines.builder import build_plan
    from ifengine.engines.trt_build import build_serialized
    from ifengine.engines.trt_runtime import current_target
    from ifengine.backends.tensorrt.load import load_engines

    plan, _ = _plan_and_manifest(tmp_path)
    (result,) = build_plan(plan, current_target(), build_serialized, progress=False)
    engines = load_engines(plan.out, ["vae_decoder"], artifacts=plan.artifacts)
    latents = torch.randn(1, 4, 256, 448, device="cuda")
    expected = lambda x: x[:, :3].repeat_interleave(4, 2).repeat_interleave(4, 3)  # noqa: E731
    image = engines("vae_decoder", {"latents": latents})["image"]
    torch.cuda.synchronize()
    assert torch.equal(image, expected(latents)) and engines.scratch_bytes >= 0
    engine = engines.engine("vae_decoder", batch=1, height=256, width=448)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        engine.enqueue()
    engine.inputs()["latents"].copy_(latents * 2)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(engine.outputs()["image"], expected(latents * 2))
    assert not build_plan(plan, current_target(), build_serialized, progress=False)[0].built


def test_throughput_mode_is_refused_for_engines_that_share_one_scratch(vae):
    """Two streams would run two engines at once on the one scratch allocation they share."""
    from ifengine.backends.parts import NetworkVAE
    from ifengine.backends.tensorrt.engines import TensorRTEngine
    from ifengine.bench.fullsize import random_cascade
    from ifengine.runtime import configure

    cascade = random_cascade(("tiny-I", "tiny-II", "tiny-x4"), dtype=torch.float32, device="cpu")
    configure(cascade, mode="throughput").close()  # torch modules run concurrently without trouble
    engine = TensorRTEngine(vae, context=None, device="cpu")
    cascade.stage3.vae = NetworkVAE(engine, cascade.stage3.vae.config)
    with pytest.raises(ValueError, match="vae_decoder run on TensorRT engines that share one scratch"):
        configure(cascade, mode="throughput")
    configure(cascade, mode="latency").close()
