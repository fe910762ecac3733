"""Safety checker + watermark as diffusers applies them, and stages II / III run alone on given inputs."""

import numpy as np
import torch

import ifengine
from ifengine.stage.options import StageOptions
from ifengine.stage.stages import RunContext, run_if_stage, run_x4_stage


def test_safety_checker_and_watermark_match_diffusers(stage1_safety_dir, diffusers_stage1_safety):
    pipe = ifengine.Cascade.from_pretrained(stage1=stage1_safety_dir)
    assert pipe.safety is not None and pipe.safety.heads is not None and pipe.safety.watermark is not None
    ref = diffusers_stage1_safety(
        "a red cat", num_inference_steps=3, generator=torch.Generator().manual_seed(2), height=64, width=64
    )
    ours = pipe("a red cat", steps=3, seed=2, height=64, width=64, progress=False)
    assert ours.nsfw_detected is not None and len(ours.nsfw_detected) == 1
    expected_flag = bool(ref.nsfw_detected[0] or ref.watermark_detected[0])
    assert ours.nsfw_detected[0] == expected_flag
    a, b = np.asarray(ours.images[0]).astype(int), np.asarray(ref.images[0]).astype(int)
    assert np.abs(a - b).max() <= 1


def test_watermark_is_pasted_and_can_be_switched_off(stage1_safety_dir):
    kw = dict(steps=2, seed=4, height=64, width=64, progress=False)
    marked = ifengine.Cascade.from_pretrained(stage1=stage1_safety_dir)("a cat", **kw).images[0]
    plain = ifengine.Cascade.from_pretrained(stage1=stage1_safety_dir, safety=False)("a cat", **kw).images[0]
    diff = np.abs(np.asarray(marked).astype(int) - np.asarray(plain).astype(int)).sum(axis=2)
    ys, xs = np.nonzero(diff)
    if len(ys):  # the logo lands bottom-right (unless the checker blacked the whole image)
        assert ys.min() >= 64 // 2 and xs.min() >= 64 // 2


def test_stage2_alone_matches_diffusers(pipe, diffusers_stage1, diffusers_stage2):
    image = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pe, ne = diffusers_stage1.encode_prompt("a boat", clean_caption=False)
    ref = diffusers_stage2(
        image=image,
        prompt_embeds=pe,
        negative_prompt_embeds=ne,
        height=64,
        width=96,
        num_inference_steps=5,
        noise_level=100,
        generator=torch.Generator().manual_seed(9),
        output_type="pt",
    ).images
    ctx = RunContext(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(9), progress=False)
    opts = StageOptions(steps=5, guidance=4.0, noise_level=100)
    ours = run_if_stage(2, pipe.stage2, opts, torch.cat([ne, pe]), (1, 3, 64, 96), ctx, image=image)
    assert (ours - ref).abs().max().item() <= 1e-3


def test_stage3_alone_matches_diffusers(pipe, diffusers_stage3):
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ref = diffusers_stage3(
        prompt=["a boat", "a tree"],
        image=image,
        num_inference_steps=4,
        noise_level=50,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(8),
        output_type="pt",
    ).images
    ctx = RunContext(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(8), progress=False)
    opts = StageOptions(steps=4, guidance=5.0, noise_level=50)
    ours = run_x4_stage(pipe.stage3, opts, ["a boat", "a tree"], ["", ""], image, ctx)
    assert ours.shape == (2, 3, 64, 64)
    assert ((ours / 2 + 0.5).clamp(0, 1) - ref).abs().max().item() <= 1e-3
