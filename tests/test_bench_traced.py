"""The traced step executor (backends/traced/executor.py + hoist.py) computes what the eager step computes.

Tiny random cascades on the CPU: every stage output of a traced run must equal the eager run to <= 1e-5,
through CFG and no-CFG, stage II's conditioning, the x4 stage, inpainting's mask and the style mixer.
"""

import numpy as np
import pytest
import torch
from PIL import Image

import ifengine
from ifengine.stage.seam import Capture, EagerStep
from ifengine.backends.traced import executor as T
from ifengine.backends.traced.hoist import split_invariant

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead


@pytest.fixture(scope="module")
def pipes(stage1_dir, stage2_dir, stage3_dir):
    load = lambda executor: ifengine.Cascade.from_pretrained(  # noqa: E731
        stage1_dir, stage2_dir, stage3_dir, safety=False
    ).set_executor(executor)
    return load("eager"), load("traced")


def run(pipe, method="__call__", *args, **kwargs):
    kwargs = {"steps": (4, 3, 3), "seed": 7, "output_type": "pt", "progress": False, **kwargs}
    return getattr(pipe, method)(*args, **kwargs).stages


def assert_close(ours, ref):
    assert len(ours) == len(ref)
    for stage, (a, b) in enumerate(zip(ours, ref, strict=True), start=1):
        err = (a - b).abs().max().item()
        assert err <= TOL, f"stage {stage}: traced differs from eager by {err:.2e}"


def test_traced_cascade_equals_eager(pipes):
    eager, traced = pipes
    assert_close(run(traced, "__call__", "a red cat"), run(eager, "__call__", "a red cat"))
    built = [s.step_fn for s in (traced.stage1, traced.stage2, traced.stage3)]
    assert all(isinstance(f, T.TracedStep) and f._cache for f in built)
    assert all(g.split.hoisted_nodes > 0 for f in built for g in f._cache.values())


def test_new_prompt_and_schedule_reuse_the_graph_and_rerun_the_prologue(pipes):
    eager, traced = pipes
    run(traced, "__call__", "a red cat")
    graphs = [len(s.step_fn._cache) for s in (traced.stage1, traced.stage2, traced.stage3)]
    # other text (the prologue must see it) and another step count (same shapes: same graph)
    kwargs = dict(steps=(6, 2, 4), seed=3)
    assert_close(run(traced, "__call__", "a blue dog", **kwargs), run(eager, "__call__", "a blue dog", **kwargs))
    assert [len(s.step_fn._cache) for s in (traced.stage1, traced.stage2, traced.stage3)] == graphs


def test_no_guidance_and_batches(pipes):
    eager, traced = pipes
    kwargs = dict(guidance=(1.0, 1.0, 1.0), num_images_per_prompt=2, last_stage=2)
    assert_close(run(traced, "__call__", ["a", "b"], **kwargs), run(eager, "__call__", ["a", "b"], **kwargs))


def test_inpainting_mask_and_style_mixer(pipes):
    eager, traced = pipes
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    mask = np.zeros((16, 16), np.uint8)
    mask[:8] = 255
    mask = Image.fromarray(mask)
    kw = dict(last_stage=2)
    assert_close(run(traced, "inpaint", image, mask, "a cat", **kw), run(eager, "inpaint", image, mask, "a cat", **kw))
    kw = dict(mixer=0.5, positive_prompt="oil painting", steps=(4, 3, 3), last_stage=2)
    assert_close(
        run(traced, "style_transfer", image, "a cat", **kw), run(eager, "style_transfer", image, "a cat", **kw)
    )


def test_auto_traces_only_long_cpu_runs(stage1_dir):
    pipe = ifengine.Cascade.from_pretrained(stage1_dir, safety=False)  # "auto" is the default
    step = pipe.stage1.step_fn
    assert isinstance(step, T.TracedStep) and step.min_steps == T.AUTO_MIN_STEPS
    pipe("x", steps=2, output_type="pt", progress=False, seed=0)
    assert not step._cache  # short runs stay eager: a trace would cost more than it saves
    pipe("x", steps=T.AUTO_MIN_STEPS, output_type="pt", progress=False, seed=0)
    assert len(step._cache) == 1


def test_executor_names_and_foreign_stages(stage1_dir):
    pipe = ifengine.Cascade.from_pretrained(stage1_dir, safety=False)
    assert isinstance(pipe.set_executor("eager").stage1.step_fn, EagerStep)
    with pytest.raises(ValueError, match="unknown executor"):
        pipe.set_executor("fast")

    class Foreign:  # e.g. an exported step graph from another backend: a Step, but not the executor's
        capture, eager_equivalent = Capture.NEVER, None

        def weights_changed(self):
            return None

        def __call__(self, *args, **kwargs):
            return None

    foreign = Foreign()
    pipe.stage1.step_fn = foreign
    pipe.set_executor("traced")
    assert pipe.stage1.step_fn is foreign


class _Toy(torch.nn.Module):
    def __init__(self, inplace: bool):
        super().__init__()
        self.lin, self.inplace = torch.nn.Linear(4, 4), inplace

    def forward(self, x, c):
        k = self.lin(c)
        if self.inplace:
            c.mul_(2.0)  # mutates a run-invariant input: hoisting would freeze a stale value
        return x * k.sum() + x


@pytest.mark.parametrize("inplace", [False, True])
def test_hoisting_moves_invariant_work_and_refuses_mutation(inplace):
    module = _Toy(inplace).eval()
    x, c = torch.randn(3, 4), torch.randn(2, 4)
    with torch.no_grad():
        graph = torch.jit.freeze(torch.jit.trace(module, (x, c.clone()))).graph.copy()
        graph.eraseInput(0)
        split = split_invariant(graph, {1})
        assert (split.prologue is None) == inplace
        hoisted = () if split.prologue is None else split.prologue(*[(x, c)[k] for k in split.prologue_inputs])
        hoisted = hoisted if isinstance(hoisted, tuple) else (hoisted,)
        if not inplace:
            assert split.hoisted_nodes >= 2  # the linear and the sum
        expected = module(x, c.clone())
        out = split.step(*[(x, c.clone())[k] for k in split.step_inputs], *hoisted)
    torch.testing.assert_close(out, expected)
