"""Checkpoint loading: Hub layout folders, fp16 variant, shards, strict keys, clear errors."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import ifengine
from ifengine.models.checkpoint import CheckpointError, resolve
from ifengine.models.if_unet import IFUNet
from ifengine.models.weights import WeightsError, load_component, weight_files


@pytest.fixture(scope="module")
def fp16_sharded_dir(tmp_path_factory):
    from tiny_models import make_stage1

    return make_stage1(tmp_path_factory.mktemp("fp16_sharded"), variant="fp16", shard=True)


def test_fp16_variant_with_sharded_text_encoder(fp16_sharded_dir, stage1_dir):
    pipe = ifengine.Cascade.from_pretrained(stage1=fp16_sharded_dir, variant="fp16")
    unet_files = weight_files(fp16_sharded_dir / "unet", variant="fp16")
    assert [f.name for f in unet_files] == ["diffusion_pytorch_model.fp16.safetensors"]
    shards = weight_files(fp16_sharded_dir / "text_encoder", stem="model", variant="fp16")
    assert len(shards) >= 2
    ref = load_file(str(unet_files[0]))
    ours = pipe.stage1.unet.state_dict()
    assert all(torch.equal(ours[k].half(), ref[k]) for k in ref)
    out = pipe("a cat", steps=2, seed=0, last_stage=1, output_type="np", progress=False)
    assert out.images.shape == (1, 16, 16, 3)


def test_hub_layout_each_stage_is_checked(stage1_dir, stage2_dir, stage3_dir):
    assert resolve(stage1_dir, 1).stage == 1
    with pytest.raises(CheckpointError, match="holds stage II .* given as stage I"):
        resolve(stage2_dir, 1)
    with pytest.raises(CheckpointError, match="holds stage III .* given as stage II"):
        ifengine.Cascade.from_pretrained(stage1=stage1_dir, stage2=stage3_dir)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a diffusers checkpoint folder"):
        resolve(tmp_path, 1)
    with pytest.raises(CheckpointError, match="neither a checkpoint folder nor a Hub id"):
        resolve(tmp_path / "missing" / "deeper", 1)


def test_hub_failure_explains_gating(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="gated.*accept the licence.*log in"):
        resolve("DeepFloyd/IF-I-XL-v1.0", 1)


def _copy_unet(src, tmp_path):
    dst = tmp_path / "unet"
    shutil.copytree(src / "unet", dst)
    return dst, json.loads((dst / "config.json").read_text())


def test_missing_and_unexpected_keys_are_named(stage1_dir, tmp_path):
    from ifengine.models.config import UNetConfig

    folder, raw = _copy_unet(stage1_dir, tmp_path)
    path = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    state.pop("conv_out.weight")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(path))
    config = UNetConfig.from_dict(raw)
    with pytest.raises(WeightsError, match="missing keys.*conv_out.weight.*unexpected keys.*extra.weight"):
        load_component(lambda: IFUNet(config), folder, torch.float32)


def test_shape_mismatch_is_named(stage1_dir, tmp_path):
    from ifengine.models.config import UNetConfig

    folder, raw = _copy_unet(stage1_dir, tmp_path)
    path = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    state["conv_in.bias"] = torch.zeros(3)
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"conv_in.bias: file \(3,\)"):
        load_component(lambda: IFUNet(UNetConfig.from_dict(raw)), folder, torch.float32)


def test_missing_weights_lists_folder(tmp_path):
    with pytest.raises(WeightsError, match="no diffusion_pytorch_model.safetensors"):
        weight_files(tmp_path)


def test_unsupported_config_value_is_named(stage1_dir, tmp_path):
    from ifengine.models.config import UNetConfig

    _, raw = _copy_unet(stage1_dir, tmp_path)
    with pytest.raises(ValueError, match="addition_embed_type"):
        UNetConfig.from_dict({**raw, "addition_embed_type": "image"})


def test_checkpoint_config_wins_over_preset(stage1_dir, stage2_dir, tmp_path):
    from ifengine.models.presets import unet_preset

    copy = tmp_path / "stage2"
    shutil.copytree(stage2_dir, copy)
    raw = json.loads((copy / "unet" / "config.json").read_text())
    (copy / "unet" / "config.json").write_text(json.dumps({**raw, "sample_size": 128}))
    pipe = ifengine.Cascade.from_pretrained(stage1=stage1_dir, stage2=copy)
    assert pipe.stage2.unet.config.sample_size == 128 != unet_preset("tiny-II").sample_size


def test_later_stages_may_be_omitted(stage1_dir, stage2_dir):
    pipe = ifengine.Cascade.from_pretrained(stage1=stage1_dir, stage2=stage2_dir)
    out = pipe("a cat", steps=2, seed=0, output_type="pt", progress=False)
    assert [s.shape[-1] for s in out.stages] == [16, 64]
    with pytest.raises(ifengine.RequestError, match="last_stage=3 needs stage 3"):
        pipe("a cat", last_stage=3)


@pytest.mark.parametrize(
    "key, value", [("time_embedding_type", "fourier"), ("conv_in_kernel", 7), ("class_embeddings_concat", True)]
)
def test_unimplemented_settings_are_refused(stage1_dir, tmp_path, key, value):
    from ifengine.models.config import UNetConfig

    _, raw = _copy_unet(stage1_dir, tmp_path)
    UNetConfig.from_dict(raw)
    with pytest.raises(ValueError, match=f"sets {key}="):
        UNetConfig.from_dict({**raw, key: value})
