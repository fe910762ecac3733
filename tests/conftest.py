"""Shared fixtures: tiny random IF-cascade checkpoints in the Hub layout, and diffusers loads of them.

The directories are built once per session; treat them as read-only (copy one before editing).
"""

import pytest

# tiny_models and diffusers are imported inside the fixtures so that test runs which never
# ask for these fixtures do not pay for importing diffusers.


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are all per-op overhead: extra intra-op threads only add synchronisation, and on a
    busy 2-core CI machine OpenMP spin-waiting made such modules ~5x slower. Restored afterwards.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def stage1_dir(tmp_path_factory):
    """Tiny IF-I checkpoint: model_index.json, unet/, text_encoder/, tokenizer/, scheduler/."""
    from tiny_models import make_stage1

    return make_stage1(tmp_path_factory.mktemp("if_stage1"))


@pytest.fixture(scope="session")
def stage1_safety_dir(tmp_path_factory):
    """Tiny IF-I checkpoint that also has safety_checker/, feature_extractor/, watermarker/."""
    from tiny_models import make_stage1

    return make_stage1(tmp_path_factory.mktemp("if_stage1_safety"), safety=True)


@pytest.fixture(scope="session")
def stage2_dir(tmp_path_factory):
    """Tiny IF-II checkpoint: no text encoder, tokenizer/, unet/, two schedulers."""
    from tiny_models import make_stage2

    return make_stage2(tmp_path_factory.mktemp("if_stage2"))


@pytest.fixture(scope="session")
def stage3_dir(tmp_path_factory):
    """Tiny stable-diffusion-x4-upscaler checkpoint: CLIP text encoder, unet/, vae/, schedulers."""
    from tiny_models import make_stage3

    return make_stage3(tmp_path_factory.mktemp("x4_upscaler"))


def _load(path, **components):
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(path, dtype=torch.float32, **components).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


# Loaded pipelines are function-scoped: pipelines carry mutable state (scheduler timesteps,
# dtype/device moves), so each test gets a fresh one. Loading a tiny one takes well under 1 s.
@pytest.fixture
def diffusers_stage1(stage1_dir):
    """diffusers.IFPipeline loaded from stage1_dir (CPU, float32)."""
    return _load(stage1_dir)


@pytest.fixture
def diffusers_stage1_safety(stage1_safety_dir):
    """diffusers.IFPipeline with safety checker and watermarker, from stage1_safety_dir."""
    from tiny_models import load_if_safety_checker

    # The safety checker is loaded by hand: see load_if_safety_checker for the diffusers bug.
    checker = load_if_safety_checker(stage1_safety_dir / "safety_checker")
    return _load(stage1_safety_dir, safety_checker=checker)


@pytest.fixture
def diffusers_stage2(stage2_dir):
    """diffusers.IFSuperResolutionPipeline loaded from stage2_dir (CPU, float32)."""
    return _load(stage2_dir)


@pytest.fixture
def diffusers_stage3(stage3_dir):
    """diffusers.StableDiffusionUpscalePipeline loaded from stage3_dir (CPU, float32)."""
    return _load(stage3_dir)


@pytest.fixture(scope="session")
def exports(tmp_path_factory, stage1_dir, stage2_dir, stage3_dir):
    """The tiny cascade exported once per session (every precision on first use; see export_support)."""
    from export_support import shared_exports

    return shared_exports(tmp_path_factory, stage1_dir, stage2_dir, stage3_dir)


@pytest.fixture(scope="module")
def pipe(stage1_dir, stage2_dir, stage3_dir):
    """ifengine's Cascade over the three tiny checkpoints (CPU, float32), one per test module: a test that
    changes it (limits, executor, adapters) undoes the change; tests that change weights take ``pipe1``."""
    import ifengine

    return ifengine.Cascade.from_pretrained(stage1_dir, stage2_dir, stage3_dir)


@pytest.fixture
def pipe1(stage1_dir):
    """A fresh stage-I-only Cascade for each test (LoRA and other weight changes)."""
    import ifengine

    return ifengine.Cascade.from_pretrained(stage1_dir, safety=False)


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory):
    """IFENGINE_CACHE at the session's demo cache for a module (the demo checkpoints are built once there)."""
    from demo_support import demo_env

    yield from demo_env(tmp_path_factory)


@pytest.fixture(scope="module")
def demo_pipe(demo_env):
    """The tiny demo cascade on the CPU, one per test module."""
    from demo_support import load_demo

    return load_demo()


class FakeGraph:
    """What torch.cuda.graph records: the step, to be replayed later (capture itself runs nothing)."""

    def __init__(self, fn):
        self.fn, self.replays = fn, 0

    def replay(self):
        self.replays += 1
        self.fn()


@pytest.fixture
def fake_cuda(monkeypatch):
    """The CUDA touch points of runtime/graphs.py (stream, pool, capture) replaced by recording fakes, so
    that the state machine around them, the real code, runs on the CPU. Records every capture as
    (pool, stream) and every stream made (a fresh object per stream, as CUDA would give)."""
    import contextlib

    from ifengine.runtime import graphs

    record = {"captures": [], "streams": []}

    def new_stream(device):
        record["streams"].append(object())
        return record["streams"][-1]

    def capture(fn, pool, stream):
        record["captures"].append((pool, stream))
        return FakeGraph(fn)

    monkeypatch.setattr(graphs, "check_graph_device", lambda device: None)
    monkeypatch.setattr(graphs, "_new_stream", new_stream)
    monkeypatch.setattr(graphs, "_pool_handle", lambda: object())
    monkeypatch.setattr(graphs, "_capture", capture)
    monkeypatch.setattr(graphs, "_side_stream", lambda stream: contextlib.nullcontext())
    return record
