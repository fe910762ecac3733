"""The tiny tokenizers and tiny random checkpoints that other tests build on are sound."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DiffusionPipeline  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tiny_models import make_stage1, make_stage2, make_stage3  # noqa: E402
from transformers import AutoTokenizer, CLIPTokenizer, T5Tokenizer  # noqa: E402

from ifengine.demo import tokenizers as tiny_tok  # noqa: E402

MAX_LEN = 77
PROMPT = "A photo of a corgi riding a red bicycle, watercolor"
LONG_PROMPT = "a very long prompt " * 40

STAGE1_FILES = {
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/spiece.model",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
}
SAFETY_FILES = {
    "safety_checker/config.json",
    "safety_checker/model.safetensors",
    "feature_extractor/preprocessor_config.json",
    "watermarker/config.json",
    "watermarker/diffusion_pytorch_model.safetensors",
}
STAGE2_FILES = {
    "model_index.json",
    "scheduler/scheduler_config.json",
    "image_noising_scheduler/scheduler_config.json",
    "tokenizer/spiece.model",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
}
STAGE3_FILES = {
    "model_index.json",
    "scheduler/scheduler_config.json",
    "low_res_scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
}


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _config(root: Path, name: str) -> dict:
    return json.loads((root / name).read_text())


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# --------------------------------------------------------------------------- tokenizers


def test_committed_assets_are_small_and_regenerate_identically(tmp_path):
    tiny_tok.regenerate_assets(tmp_path)
    committed = tiny_tok.ASSETS_DIR
    assert _files(tmp_path) == _files(committed)
    assert sum((committed / f).stat().st_size for f in _files(committed)) < 200_000
    for name in _files(committed):
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name


@pytest.mark.parametrize("loader", [T5Tokenizer, AutoTokenizer])
def test_t5_tokenizer_pads_and_truncates_to_77(loader):
    tok = loader.from_pretrained(tiny_tok.t5_tokenizer_dir())
    assert type(tok).__name__ == "T5Tokenizer"
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert 200 < len(tok) < 500
    batch = tok([PROMPT, LONG_PROMPT], padding="max_length", max_length=MAX_LEN, truncation=True)
    ids, mask = batch.input_ids, batch.attention_mask
    assert [len(x) for x in ids] == [MAX_LEN, MAX_LEN]
    used = sum(mask[0])
    assert ids[0][used - 1] == 1 and set(ids[0][used:]) == {0} and mask[0] == [1] * used + [0] * (MAX_LEN - used)
    assert tok.unk_token_id not in ids[0]
    assert ids[1][-1] == 1 and sum(mask[1]) == MAX_LEN


def test_t5_tokenizer_matches_raw_sentencepiece():
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny_tok.t5_tokenizer_dir() / "spiece.model"))
    tok = T5Tokenizer.from_pretrained(tiny_tok.t5_tokenizer_dir())
    for text in (PROMPT, "Fullwidth\uff01 and an ellipsis\u2026", "  spaced   out  "):
        assert tok(text).input_ids == sp.encode(text) + [tok.eos_token_id], text


@pytest.mark.parametrize("loader", [CLIPTokenizer, AutoTokenizer])
def test_clip_tokenizer_pads_with_eos_and_truncates_to_77(loader):
    tok = loader.from_pretrained(tiny_tok.clip_tokenizer_dir())
    assert type(tok).__name__ == "CLIPTokenizer"
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|startoftext|>", "<|endoftext|>", "<|endoftext|>")
    assert tok.model_max_length == MAX_LEN
    batch = tok([PROMPT, LONG_PROMPT], padding="max_length", max_length=MAX_LEN, truncation=True)
    ids, mask = batch.input_ids, batch.attention_mask
    used = sum(mask[0])
    assert ids[0][0] == tok.bos_token_id and ids[0][used - 1] == tok.eos_token_id
    assert set(ids[0][used:]) == {tok.eos_token_id} and mask[0] == [1] * used + [0] * (MAX_LEN - used)
    assert len(ids[1]) == MAX_LEN and ids[1][-1] == tok.eos_token_id and sum(mask[1]) == MAX_LEN


# --------------------------------------------------------------------------- layouts and configs


@pytest.mark.parametrize(
    "fixture, expected",
    [
        ("stage1_dir", STAGE1_FILES),
        ("stage1_safety_dir", STAGE1_FILES | SAFETY_FILES),
        ("stage2_dir", STAGE2_FILES),
        ("stage3_dir", STAGE3_FILES),
    ],
)
def test_hub_layout(request, fixture, expected):
    assert _files(request.getfixturevalue(fixture)) == expected


def test_stage1_configs_have_real_fields(stage1_safety_dir):
    index = _config(stage1_safety_dir, "model_index.json")
    assert index["_class_name"] == "IFPipeline" and index["text_encoder"] == ["transformers", "T5EncoderModel"]
    assert index["feature_extractor"] == ["transformers", "CLIPImageProcessor"]
    unet = _config(stage1_safety_dir, "unet/config.json")
    assert unet["encoder_hid_dim_type"] == "text_proj" and unet["addition_embed_type"] == "text"
    assert unet["resnet_time_scale_shift"] == "scale_shift" and unet["cross_attention_norm"] == "group_norm"
    t5 = _config(stage1_safety_dir, "text_encoder/config.json")
    assert t5["is_gated_act"] and t5["dense_act_fn"] == "gelu_new" and t5["tie_word_embeddings"] is False
    assert t5["vocab_size"] == len(T5Tokenizer.from_pretrained(stage1_safety_dir / "tokenizer"))
    sched = _config(stage1_safety_dir, "scheduler/scheduler_config.json")
    assert (sched["variance_type"], sched["beta_schedule"], sched["timestep_spacing"]) == (
        "learned_range",
        "squaredcos_cap_v2",
        "leading",
    )
    assert sched["thresholding"] and sched["sample_max_value"] == 1.5 and sched["clip_sample"]


def test_stage2_and_stage3_configs_have_real_fields(stage2_dir, stage3_dir):
    assert _config(stage2_dir, "model_index.json")["text_encoder"] == [None, None]
    unet2 = _config(stage2_dir, "unet/config.json")
    assert unet2["class_embed_type"] == "timestep" and unet2["resnet_skip_time_act"]
    assert unet2["resnet_out_scale_factor"] == unet2["mid_block_scale_factor"] == pytest.approx(1 / 0.7071)
    assert _config(stage2_dir, "scheduler/scheduler_config.json")["sample_max_value"] == 1.0
    assert _config(stage3_dir, "model_index.json")["max_noise_level"] == 350
    unet3 = _config(stage3_dir, "unet/config.json")
    assert unet3["num_class_embeds"] == 1000 and unet3["only_cross_attention"] == [True, True, True, False]
    assert _config(stage3_dir, "vae/config.json")["scaling_factor"] == 0.08333
    sched = _config(stage3_dir, "scheduler/scheduler_config.json")
    assert (sched["prediction_type"], sched["steps_offset"], sched["clip_sample"]) == ("v_prediction", 1, False)


@pytest.mark.parametrize(
    "make, fixture", [(make_stage1, "stage1_dir"), (make_stage2, "stage2_dir"), (make_stage3, "stage3_dir")]
)
def test_weights_are_deterministic(request, tmp_path, make, fixture):
    first, second = request.getfixturevalue(fixture), make(tmp_path)
    for name in sorted(_files(first)):
        if name.endswith(".safetensors"):
            assert (first / name).read_bytes() == (second / name).read_bytes(), name


# --------------------------------------------------------------------------- end to end


def test_stage1_runs(diffusers_stage1):
    out = diffusers_stage1(
        "a red cat", num_inference_steps=2, height=16, width=16, output_type="pt", generator=_generator()
    ).images
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()


def test_stage1_with_safety_checker_runs(diffusers_stage1_safety):
    pipe = diffusers_stage1_safety
    assert pipe.safety_checker is not None and pipe.watermarker.watermark_image.abs().sum() > 0
    out = pipe("a red cat", num_inference_steps=2, height=16, width=16, output_type="np", generator=_generator())
    assert out.images.shape == (1, 16, 16, 3) and len(out.nsfw_detected) == 1


def test_stage2_upscales_with_external_embeddings(diffusers_stage1, diffusers_stage2):
    assert diffusers_stage2.text_encoder is None
    embeds, negative = diffusers_stage1.encode_prompt("a red cat", do_classifier_free_guidance=True)
    assert embeds.shape == (1, MAX_LEN, 32)
    low_res = torch.rand(1, 3, 16, 16, generator=_generator()) * 2 - 1
    out = diffusers_stage2(
        image=low_res,
        prompt_embeds=embeds,
        negative_prompt_embeds=negative,
        num_inference_steps=2,
        output_type="pt",
        generator=_generator(),
    ).images
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()


def test_stage3_upscales_4x(diffusers_stage3):
    image = torch.rand(1, 3, 16, 16, generator=_generator())
    out = diffusers_stage3(
        "a red cat", image=image, num_inference_steps=2, output_type="pt", generator=_generator()
    ).images
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()


# --------------------------------------------------------------------------- fp16 and shards


def test_fp16_variant_with_sharded_text_encoder_reloads(tmp_path, stage1_dir):
    root = make_stage1(tmp_path, variant="fp16", shard=True)
    files = _files(root)
    shards = sorted(f for f in files if f.startswith("text_encoder/model.fp16-"))
    assert len(shards) >= 2 and "text_encoder/model.safetensors.index.fp16.json" in files
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in files
    half = load_file(root / "unet/diffusion_pytorch_model.fp16.safetensors")
    full = load_file(stage1_dir / "unet/diffusion_pytorch_model.safetensors")
    assert all(half[k].dtype == torch.float16 and torch.equal(half[k], full[k].half()) for k in full)
    pipe = DiffusionPipeline.from_pretrained(root, variant="fp16", dtype=torch.float32)
    out = pipe("a red cat", num_inference_steps=2, height=16, width=16, output_type="pt", generator=_generator()).images
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()


def test_sharded_text_encoder_reloads_same_weights(tmp_path, diffusers_stage1):
    root = make_stage1(tmp_path, shard=True)
    files = _files(root)
    assert len([f for f in files if f.startswith("text_encoder/model-")]) >= 2
    assert "text_encoder/model.safetensors.index.json" in files and "text_encoder/model.safetensors" not in files
    reloaded = DiffusionPipeline.from_pretrained(root, dtype=torch.float32).text_encoder.state_dict()
    for key, value in diffusers_stage1.text_encoder.state_dict().items():
        assert torch.equal(reloaded[key], value), key
