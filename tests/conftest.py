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
