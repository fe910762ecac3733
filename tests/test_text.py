"""Prompt handling: tokenisation to 77, truncation warning, caption cleaning, the embedding cache."""

import logging

import pytest
import torch

import ifengine
from ifengine.memory.plan_inputs import checkpoint_modules
from ifengine.models.checkpoint import resolve
from ifengine.models.t5_precision import device_has_bf16, t5_dtype
from ifengine.stage.components import load_t5
from ifengine.text.clean import preprocess

CAPTIONS = [
    "A photo of a Kangaroo wearing an orange hoodie",
    "  Visit https://www.example.com/page?id=3 for the <b>best</b> deals!!  ",
    "@someone check this-is-my-cute-cat_photo_now.jpg #12 #123456",
    "“Quoted” ‘text’ — with dashes – and ... dots 1920x1080 jc6640 free shipping",
    "an ip 192.168.1.1 and 中文字符 and &amp; &quot;html&quot; entities",
    "'leading quote and trailing colon:",
    "click on here page 12 download free png images of a cat",
    "a dog\\nwith a newline, and a ((bracketed)) [word] {more} | pipe / slash * star",
]


def test_cleaning_matches_the_reference(diffusers_stage1):
    ours = preprocess(CAPTIONS, clean=True)
    ref = diffusers_stage1._text_preprocessing(CAPTIONS, clean_caption=True)
    assert ours == ref


def test_without_cleaning_prompts_are_lowercased(diffusers_stage1):
    assert preprocess(CAPTIONS, clean=False) == diffusers_stage1._text_preprocessing(CAPTIONS, clean_caption=False)


@pytest.fixture(scope="module")
def stage1_only(stage1_dir):
    return ifengine.Cascade.from_pretrained(stage1=stage1_dir)


def test_embeddings_match_diffusers_encode_prompt(stage1_only, diffusers_stage1):
    prompts = ["a red cat", "two dogs"]
    pe, ne = diffusers_stage1.encode_prompt(prompts, negative_prompt=["blurry", ""], clean_caption=False)
    ours = stage1_only.text.encode(["a red cat", "two dogs"])
    assert torch.allclose(ours, pe, atol=1e-6)
    assert torch.allclose(stage1_only.text.encode(["blurry", ""]), ne, atol=1e-6)


def test_repeated_prompts_are_encoded_once(stage1_only):
    stage1_only.text.clear_cache()
    calls = []
    hook = stage1_only.text.model.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        stage1_only("a red cat", steps=2, seed=0, last_stage=1, output_type="pt", progress=False)
        stage1_only(["a red cat", "a red cat"], steps=2, seed=0, last_stage=1, output_type="pt", progress=False)
    finally:
        hook.remove()
    assert calls == [1, 1]  # "a red cat" once, "" once; the second call hits the cache only


def test_truncation_is_warned(stage1_only, caplog):
    long_prompt = " ".join(["a red cat on a mat"] * 40)
    with caplog.at_level(logging.WARNING, logger="ifengine.text.encoder"):
        stage1_only.text.encode([long_prompt])
    assert any("longer than 77 tokens" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ifengine.text.encoder"):
        stage1_only.text.encode(["a short prompt"])
    assert not caplog.records


def test_t5_never_runs_in_fp16():
    assert not device_has_bf16("cpu")  # CPUs take float32 for an fp16 cascade
    for bf16 in (False, True):
        assert t5_dtype(torch.float16, bf16) == (torch.bfloat16 if bf16 else torch.float32)
        assert t5_dtype(torch.bfloat16, bf16) == torch.bfloat16
        assert t5_dtype(torch.float32, bf16) == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bf16", [None, False, True], ids=["this-cpu", "gpu-without-bf16", "gpu-with-bf16"])
def test_loader_and_planner_agree_on_t5_precision(stage1_dir, dtype, bf16):
    """The real loader and the planner's meta modules give T5 the same dtype: on this CPU (None asks the
    device) and for the choices a GPU with or without bfloat16 makes (capability passed in)."""
    loaded = load_t5(resolve(stage1_dir, 1), dtype, torch.device("cpu"), None, bf16=bf16).model
    planned = checkpoint_modules(stage1_dir, dtype=dtype, bf16=device_has_bf16("cpu") if bf16 is None else bf16)
    assert loaded.dtype == planned["t5"].dtype != torch.float16
