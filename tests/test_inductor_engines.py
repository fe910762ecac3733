"""Inductor engines (torch.export + AOTInductor packages) through the one seam, on this CPU.

One module fixture compiles the tiny cascade's stage I step and its VAE decoder (the demo recipe's
sizes, batch 1-2, fp32) into an engine cache; the cascade through them must equal the torch cascade
(<= 1e-4 per stage) and diffusers (<= 1e-3), `ifengine generate --engines` must write the checkpoints'
PNG and metadata, and stale, foreign and corrupt packages must be refused before anything is loaded.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import ifengine
from ifengine.stage.seam import Capture
from ifengine.backends.inductor.network import InductorNetwork
from ifengine.backends.parts import NetworkIFStep, NetworkVAE
from ifengine.engines.errors import EngineCorrupt, EngineForeign, EngineStale
from ifengine.engines.recipe import load_recipe

from test_cascade import assert_stages_match, reference_chain

COMPILED = ("step1", "vae_decoder")
TOL = 1e-4
RUN = dict(output_type="pt", progress=False)


@pytest.fixture(scope="module")
def engines(tmp_path_factory, stage1_dir, stage2_dir, stage3_dir):
    out = tmp_path_factory.mktemp("inductor_engines")

    assert [r.built for r in _build(out, stage1_dir, stage2_dir, stage3_dir)] == [True, True]
    return out


def _build(out, *dirs, components=COMPILED):
    from ifengine.engines.inductor_build import QUICK, build_inductor
    from ifengine.engines.inductor_plan import make_inductor_plan
    from ifengine.engines.inductor_target import current_inductor_target
    from ifengine.models.checkpoint import resolve

    ckpts = {n: resolve(d, n) for n, d in enumerate(dirs, start=1)}
    plan = make_inductor_plan(load_recipe("demo"), ckpts, out, "cpu", components)
    return build_inductor(plan, current_inductor_target("cpu"), progress=False, configs=QUICK)


@pytest.fixture(scope="module")
def stages(stage1_dir, stage2_dir, stage3_dir):
    return dict(stage1=stage1_dir, stage2=stage2_dir, stage3=stage3_dir)


@pytest.fixture(scope="module")
def compiled(engines, stages):
    return ifengine.Cascade.from_engines(engines, **stages)


@pytest.fixture(scope="module")
def eager(stages):
    return ifengine.Cascade.from_pretrained(*stages.values(), safety=False)


def _folder(engines):
    (folder,) = [p for p in engines.iterdir() if p.is_dir()]
    return folder


def test_the_compiled_networks_run_the_cascade(compiled):
    step, vae = compiled.stage1.step_fn, compiled.stage3.vae
    assert isinstance(step, NetworkIFStep) and isinstance(step.network, InductorNetwork)
    assert isinstance(vae, NetworkVAE) and isinstance(vae.network, InductorNetwork)
    assert step.capture is Capture.AFTER_WARMUP  # on CUDA the whole step may be captured after warm-up
    compiled("a red cat", steps=(2, 2, 2), seed=0, **RUN)
    assert step.network.current.runs == 2 and vae.network.current.runs == 1


@pytest.mark.parametrize(
    "kwargs",
    [dict(steps=(4, 3, 3)), dict(steps=(3, 2, 2), num_images_per_prompt=2)],
    ids=["batch-1", "batch-2"],
)
def test_compiled_cascade_equals_torch(compiled, eager, kwargs):
    """The compiled stage I equals torch's from the same inputs (<= 1e-4); the stages after it take its
    output, which the U-Nets amplify (x1.6 through the tiny stage II), so they are held to 1e-3."""
    ours, ref = compiled("a red cat", seed=3, **kwargs, **RUN), eager("a red cat", seed=3, **kwargs, **RUN)
    for n, (a, b) in enumerate(zip(ours.stages, ref.stages, strict=True), start=1):
        err, tol = (a - b).abs().max().item(), TOL if n == 1 else 1e-3
        assert err <= tol, f"stage {n} differs from the torch cascade by {err:.2e}"


def test_each_compiled_network_equals_torch_from_the_same_inputs(engines, stages, eager):
    """With only the VAE decoder compiled, stages I and II are torch's bit for bit and stage III (the
    compiled decoder on the same latents) is within 1e-4: the per-stage check for the stage III network."""
    vae_only = ifengine.Cascade.from_engines(engines, components=["vae_decoder"], **stages)
    assert isinstance(vae_only.stage3.vae.network, InductorNetwork)
    assert not isinstance(vae_only.stage1.step_fn, NetworkIFStep)  # stage I on torch
    ours, ref = (
        vae_only("a red cat", seed=5, steps=(3, 2, 2), **RUN),
        eager("a red cat", seed=5, steps=(3, 2, 2), **RUN),
    )
    assert torch.equal(ours.stages[0], ref.stages[0]) and torch.equal(ours.stages[1], ref.stages[1])
    err = (ours.stages[2] - ref.stages[2]).abs().max().item()
    assert err <= TOL, f"stage III differs from the torch cascade by {err:.2e}"


def test_compiled_cascade_equals_diffusers(compiled, diffusers_stage1, diffusers_stage2, diffusers_stage3):
    steps = (6, 4, 3)
    ref = reference_chain(diffusers_stage1, diffusers_stage2, diffusers_stage3, "a red cat", steps=steps)
    ours = compiled("a red cat", steps=steps, generator=torch.Generator().manual_seed(0), **RUN)
    assert_stages_match(ours, ref)  # <= 1e-3 per stage


@pytest.mark.slow
def test_compiled_text_encoders_equal_torch(tmp_path, stages, eager):
    """T5 and CLIP compiled (their tokenizers copied beside the packages) give the torch encoders'
    embeddings, so the cascade through them equals the torch one; without the tokenizer copy the
    package is refused as corrupt before anything loads."""
    from ifengine.backends.parts import NetworkTextModel

    assert [r.built for r in _build(tmp_path, *stages.values(), components=("t5", "clip"))] == [True, True]
    text = ifengine.Cascade.from_engines(tmp_path, **stages)
    assert isinstance(text.text.model, NetworkTextModel) and isinstance(text.stage3.text.model, NetworkTextModel)
    prompts = ["a red cat", "A <b>Blue</b> DOG on the moon, 1990s photo"]
    for ours, ref in ((text.text, eager.text), (text.stage3.text, eager.stage3.text)):
        err = (ours.encode(prompts) - ref.encode(prompts)).abs().max().item()
        assert err <= TOL, f"compiled text encoder differs from torch by {err:.2e}"
    a, b = text("a red cat", seed=2, steps=(3, 2, 2), **RUN), eager("a red cat", seed=2, steps=(3, 2, 2), **RUN)
    for n, (x, y) in enumerate(zip(a.stages, b.stages, strict=True), start=1):
        assert (x - y).abs().max().item() <= 1e-3, f"stage {n}"
    shutil.rmtree(_folder(tmp_path) / "assets")
    with pytest.raises(EngineCorrupt, match="tokenizer folder .* missing"):
        ifengine.Cascade.from_engines(tmp_path, **stages)


def test_generate_with_engines_writes_the_checkpoints_png(engines, stages, tmp_path, monkeypatch):
    from ifengine.cli import main

    monkeypatch.chdir(tmp_path)
    flags = [f"--{k}={v}" for k, v in stages.items()]
    common = ["generate", "a red cat", *flags, "--steps", "3,2,2", "--seed", "4", "--quiet"]
    assert main([*common, "--out", "torch.png"]) == 0
    assert main([*common, "--engines", str(engines), "--out", "inductor.png"]) == 0
    a, b = Image.open(tmp_path / "torch.png"), Image.open(tmp_path / "inductor.png")
    diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max()
    assert diff <= 1, f"PNGs differ by {diff}/255"
    assert a.text == b.text  # the same parameters and settings: the engines name the same models


def test_a_second_build_reuses_the_packages(engines, stage1_dir, stage2_dir, stage3_dir):
    assert not any(r.built for r in _build(engines, stage1_dir, stage2_dir, stage3_dir))


def _no_loading(monkeypatch):
    """Any package load (or torch part) after a refused check would be work done before the error."""

    def refuse(*args, **kwargs):
        raise AssertionError("a package was loaded before the cache checks finished")

    monkeypatch.setattr(torch._inductor, "aoti_load_package", refuse)


def test_changed_weights_make_the_package_stale(engines, stages, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    stage1 = tmp_path / "stage1"
    shutil.copytree(stages["stage1"], stage1)
    (weights,) = (stage1 / "unet").glob("*.safetensors")
    state = load_file(weights)
    name = next(iter(state))
    state[name] = state[name] + 0.01
    save_file(state, weights)
    _no_loading(monkeypatch)
    with pytest.raises(EngineStale, match=r"step1-fp32-\w+\.json was compiled from other weights"):
        ifengine.Cascade.from_engines(engines, **{**stages, "stage1": stage1})


def _copy(engines, tmp_path):
    out = tmp_path / "engines"
    shutil.copytree(engines, out)
    return out, _folder(out)


def test_a_package_recorded_for_another_torch_or_device_is_foreign(engines, stages, tmp_path, monkeypatch):
    out, folder = _copy(engines, tmp_path)
    (manifest,) = folder.glob("vae_decoder-*.json")
    raw = json.loads(manifest.read_text())
    raw["target"]["torch"] = "2.0.0"
    manifest.write_text(json.dumps(raw))
    _no_loading(monkeypatch)
    with pytest.raises(EngineForeign, match=rf"{manifest.name} was built for torch '2.0.0'"):
        ifengine.Cascade.from_engines(out, **stages)
    raw["target"] |= {"torch": torch.__version__, "device": "cuda"}
    manifest.write_text(json.dumps(raw))
    with pytest.raises(EngineForeign, match=rf"{manifest.name} was built for device 'cuda'"):
        ifengine.Cascade.from_engines(out, **stages)
    folder.rename(folder.with_name("inductor-sm90-nvidia-h100-torch2.11.0"))
    with pytest.raises(EngineForeign, match="only for inductor-sm90-nvidia-h100-torch2.11.0, not for this machine"):
        ifengine.Cascade.from_engines(out, **stages)


def test_a_package_traced_from_other_model_code_is_stale(engines, stages, tmp_path, monkeypatch):
    out, folder = _copy(engines, tmp_path)
    (manifest,) = folder.glob("step1-*.json")
    raw = json.loads(manifest.read_text())
    raw["graph_code_sha256"] = "0" * 64  # as if models/ or the step code changed since the build
    manifest.write_text(json.dumps(raw))
    _no_loading(monkeypatch)
    with pytest.raises(EngineStale, match=rf"{manifest.name} was compiled from other ifengine model or step code"):
        ifengine.Cascade.from_engines(out, **stages)


def test_a_truncated_package_is_corrupt(engines, stages, tmp_path, monkeypatch):
    out, folder = _copy(engines, tmp_path)
    (package,) = folder.glob("step1-*.pt2")
    package.write_bytes(package.read_bytes()[:1000])
    _no_loading(monkeypatch)
    with pytest.raises(EngineCorrupt, match=rf"{package.name} has 1000 bytes, its manifest says \d+ \(truncated"):
        ifengine.Cascade.from_engines(out, **stages)


def test_weights_baked_in_make_a_weight_change_stale(compiled):
    with pytest.raises(EngineStale, match="weights compiled in"):
        compiled.stage1.step_fn.network.weights_changed()


def test_shapes_outside_the_package_profile_are_refused(compiled):
    network = compiled.stage1.step_fn.network
    with pytest.raises(ValueError, match="no engine covers"):
        network.prepare({"batch": 3, "height": 16, "width": 16, "tokens": 77, "steps": 4})


def test_the_bench_system_runs_the_compiled_cascade(engines, stages):
    from ifengine.bench.systems import RunSpec, load_systems
    from ifengine.bench.timing import Clock

    paths = {k: str(v) for k, v in stages.items()}
    with pytest.raises(ValueError, match="ifengine-inductor needs --engines DIR"):
        load_systems(["ifengine-inductor"], paths, torch.device("cpu"), torch.float32)
    (system,) = load_systems(["ifengine-inductor"], paths, torch.device("cpu"), torch.float32, engines=engines).values()
    clock = Clock("cpu")
    system.run(RunSpec(batch=1, size=16, steps=(2, 2, 2)), clock)
    assert {"T5", "I", "II", "III", "total"} <= set(clock.collect())
