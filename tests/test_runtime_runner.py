"""The static-buffer stage loops (cuda_graphs off, the same buffers a graph would capture) against the eager
loops of stage.stages, on the tiny checkpoints: results must be bit-identical."""

import dataclasses

import pytest
import torch

import ifengine
from ifengine.stage.options import StageOptions
from ifengine.stage.stages import RunContext, Start, run_if_stage, run_x4_stage
from ifengine.runtime.capture_audit import audit
from ifengine.runtime.gpu_runner import DecodeSettings, GraphRunner
from ifengine.runtime.graphs import GraphCache

CPU = torch.device("cpu")
S1 = StageOptions(steps=4, guidance=7.0)
S2 = StageOptions(steps=3, guidance=4.0, noise_level=250)
S3 = StageOptions(steps=2, guidance=9.0, noise_level=20)


@pytest.fixture(scope="module")
def cascade(stage1_dir, stage2_dir, stage3_dir):
    return ifengine.Cascade.from_pretrained(stage1_dir, stage2_dir, stage3_dir, safety=False)


def make_runner(**kwargs) -> GraphRunner:
    cache = GraphCache(CPU, enabled=False)
    return GraphRunner(CPU, graphs={1: cache, 2: cache, 3: cache}, **kwargs)


def ctx(seed: int = 0) -> RunContext:
    return RunContext(CPU, torch.float32, torch.Generator().manual_seed(seed), False)


def embeds(rows: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, 77, 32, generator=torch.Generator().manual_seed(seed))


def image(shape, seed: int = 2) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


EDITS = {
    "text-to-image": {},
    "img2img": dict(start=Start(image((1, 3, 8, 8)), 0.6)),
    "inpainting": dict(start=Start(image((1, 3, 8, 8)), 0.8, (image((1, 1, 8, 8), 3) > 0).float())),
    "style mixer": dict(mixer=0.3),
}


@pytest.mark.parametrize("mode", list(EDITS))
def test_stage1_equals_the_eager_loop(cascade, mode):
    kwargs = EDITS[mode]
    cond = embeds(3 if "mixer" in kwargs else 2)
    ref = run_if_stage(1, cascade.stage1, S1, cond, (1, 3, 8, 8), ctx(), **kwargs)
    ours = make_runner().run_if_stage(1, cascade.stage1, S1, cond, (1, 3, 8, 8), ctx(), **kwargs)
    assert torch.equal(ours, ref)


def test_stage2_equals_the_eager_loop(cascade):
    low = image((1, 3, 8, 8))
    ref = run_if_stage(2, cascade.stage2, S2, embeds(2), (1, 3, 32, 32), ctx(), image=low)
    ours = make_runner().run_if_stage(2, cascade.stage2, S2, embeds(2), (1, 3, 32, 32), ctx(), image=low)
    assert torch.equal(ours, ref)


def test_stage3_equals_the_eager_loop_and_decodes_as_planned(cascade, monkeypatch):
    low = image((1, 3, 16, 16))
    ref = run_x4_stage(cascade.stage3, S3, ["a red cat"], [""], low, ctx())
    ours = make_runner().run_x4_stage(cascade.stage3, S3, ["a red cat"], [""], low, ctx())
    assert ours.shape == (1, 3, 64, 64) and torch.equal(ours, ref)
    calls = []
    monkeypatch.setattr(cascade.stage3.vae, "decode_tiled", lambda z, tile, overlap: calls.append((tile, overlap)) or z)
    make_runner(decode=DecodeSettings(tile=8, overlap=2)).run_x4_stage(cascade.stage3, S3, ["a"], [""], low, ctx())
    assert calls == [(8, 2)]


def test_runs_reuse_one_step_and_the_same_buffers(cascade):
    runner = make_runner()
    first = runner.run_if_stage(1, cascade.stage1, S1, embeds(2), (1, 3, 8, 8), ctx(0))
    x_ptr, cache = runner.arenas[1].data_ptr("x"), runner.graphs[1]
    second = runner.run_if_stage(1, cascade.stage1, S1, embeds(2), (1, 3, 8, 8), ctx(1))
    assert len(cache) == 1 and runner.arenas[1].data_ptr("x") == x_ptr
    assert not torch.equal(first, second)  # the result is a copy, not a view of the reused buffer
    runner.run_if_stage(1, cascade.stage1, S1, embeds(4), (2, 3, 8, 8), ctx(2))  # larger: buffers grow
    grown = runner.arenas[1].generation
    assert len(cache) == 1 and grown > 0  # graphs over the moved buffers were dropped, the new shape recorded
    runner.run_if_stage(1, cascade.stage1, S1, embeds(2), (1, 3, 8, 8), ctx(3))  # smaller again: a view
    assert len(cache) == 2 and runner.arenas[1].generation == grown


def test_the_recorded_step_never_touches_the_host(cascade):
    runner = make_runner()
    runner.run_if_stage(2, cascade.stage2, S2, embeds(2), (1, 3, 32, 32), ctx(), image=image((1, 3, 8, 8)))
    runner.run_x4_stage(cascade.stage3, S3, ["a"], [""], image((1, 3, 16, 16)), ctx())
    steps = [graph.fn for graph in runner.graphs[1]._graphs.values()]
    assert len(steps) == 2
    for stage in (2, 3):
        runner.arenas[stage].view("index", (), torch.long).zero_()  # rewind the device-side step counter
    with torch.no_grad():
        for step in steps:
            assert audit(step).problems == []


def test_the_runner_takes_steps_only_through_the_seam(cascade):
    from ifengine.backends.traced.executor import IF_STEP, TracedStep
    from ifengine.stage.seam import Capture, EagerStep
    from ifengine.stage.steps import if_step

    calls = []

    def custom(*args, **kwargs):
        calls.append(1)
        return if_step(*args, **kwargs)

    with pytest.raises(TypeError, match=r"not a stage\.seam\.Step \(missing capture, eager_equivalent"):
        dataclasses.replace(cascade.stage1, step_fn=custom)  # a bare function states no contract

    class Counted(EagerStep):  # a step with no eager twin (as an exported step graph): the runner runs it
        capture = Capture.AFTER_WARMUP

    stage = dataclasses.replace(cascade.stage1, step_fn=Counted(custom))
    make_runner().run_if_stage(1, stage, S1, embeds(2), (1, 3, 8, 8), ctx())
    assert len(calls) == S1.steps
    traced = TracedStep(IF_STEP)  # replays the eager step through host-side caches: the runner runs its twin
    make_runner().run_if_stage(1, dataclasses.replace(stage, step_fn=traced), S1, embeds(2), (1, 3, 8, 8), ctx())
    assert not traced._cache and traced.eager_equivalent.fn is if_step


def test_cuda_graphs_on_a_cpu_cascade_are_refused_with_the_fix_named(cascade):
    from ifengine.runtime import configure

    with pytest.raises(ValueError, match="cuda_graphs=False"):
        configure(cascade, cuda_graphs=True)
    assert configure(cascade).options.cuda_graphs is False  # the default follows the device


def test_compiled_unets_trace_as_one_graph():
    """fullgraph=True: a graph break would put Python between kernels inside a captured step."""
    from ifengine.models.if_unet import IFUNet
    from ifengine.models.presets import unet_preset
    from ifengine.backends.torch.settings import TorchBackendOptions, UNetBackend

    torch.manual_seed(0)
    unet = IFUNet(unet_preset("tiny-I")).eval()
    compiled = UNetBackend(TorchBackendOptions(compile=True, compile_backend="eager")).unet_for(unet)
    args = (torch.randn(2, 3, 16, 16), torch.tensor(5), torch.randn(2, 77, 32))
    with torch.no_grad():
        assert torch.equal(compiled(*args), unet(*args))


def test_buffers_reserved_for_the_largest_call_never_move(cascade):
    runner = make_runner()
    runner.reserve_for(1, batch=2, height=8, width=8, steps=S1.steps, text_dim=32, dtype=torch.float32)
    for batch, mode in ((2, "style mixer"), (1, "inpainting"), (1, "text-to-image")):
        rows = 3 if mode == "style mixer" else 2
        runner.run_if_stage(1, cascade.stage1, S1, embeds(rows * batch), (batch, 3, 8, 8), ctx(), **EDITS[mode])
    assert runner.arenas[1].generation == 0
