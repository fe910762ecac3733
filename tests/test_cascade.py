"""The cascade against diffusers' IFPipeline -> IFSuperResolutionPipeline -> StableDiffusionUpscalePipeline.

Same tiny random weights (saved in the Hub layout by the fixtures), same CPU generator passed through
the chain, fp32 on the CPU: every stage output must match to <= 1e-3 max abs.
"""

import torch

import ifengine
from reference_utils import diffusers_chain

TOL = 1e-3


def reference_chain(
    d1,
    d2,
    d3,
    prompt,
    negative=None,
    *,
    steps,
    guidance=(7.0, 4.0, 9.0),
    noise_level=(250, 20),
    height=16,
    width=16,
    n=1,
    timesteps=(None, None),
    last=3,
    seed=0,
):
    """The chain as the IF model card runs it, one generator throughout."""
    g = torch.Generator().manual_seed(seed)
    prompts = [prompt] if isinstance(prompt, str) else prompt
    negatives = None if negative is None else ([negative] * len(prompts) if isinstance(negative, str) else negative)
    pe, ne = d1.encode_prompt(
        prompts,
        do_classifier_free_guidance=True,
        negative_prompt=negatives,
        num_images_per_prompt=n,
        clean_caption=True,
    )
    each = [p for p in prompts for _ in range(n)]
    neg3 = None if negatives is None else [p for p in negatives for _ in range(n)]
    # guidance 1 or less: diffusers runs without the negative branch only when given no negative embeds
    per_stage = (
        dict(
            height=height,
            width=width,
            timesteps=timesteps[0],
            **({} if guidance[0] > 1 else {"negative_prompt_embeds": None}),
        ),
        dict(
            height=height * 4,
            width=width * 4,
            timesteps=timesteps[1],
            **({} if guidance[1] > 1 else {"negative_prompt_embeds": None}),
        ),
        dict(prompt=each, negative_prompt=neg3),
    )
    return diffusers_chain(
        (d1, d2, d3),
        (pe, ne),
        steps=steps,
        guidance=guidance,
        noise_level=noise_level,
        generator=g,
        last=last,
        per_stage=per_stage,
    )


def assert_stages_match(ours, ref):
    assert len(ours.stages) == len(ref)
    for stage, (a, b) in enumerate(zip(ours.stages, ref, strict=True), start=1):
        if stage == 3:  # the x4 pipeline returns [0, 1]; our stage outputs are [-1, 1]
            a = (a / 2 + 0.5).clamp(0, 1)
        assert a.shape == b.shape, f"stage {stage}: {a.shape} vs {b.shape}"
        err = (a - b).abs().max().item()
        assert err <= TOL, f"stage {stage} differs from diffusers by {err:.2e}"


def test_full_cascade_matches_diffusers(pipe, diffusers_stage1, diffusers_stage2, diffusers_stage3):
    steps = (6, 4, 3)
    ref = reference_chain(diffusers_stage1, diffusers_stage2, diffusers_stage3, "a red cat", steps=steps)
    ours = pipe("a red cat", steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt", progress=False)
    assert_stages_match(ours, ref)
    assert ours.images.shape == (1, 3, 256, 256)
    assert torch.equal(ours.images, (ours.stages[2] / 2 + 0.5).clamp(0, 1))


def test_two_prompts_negatives_and_images_per_prompt(pipe, diffusers_stage1, diffusers_stage2, diffusers_stage3):
    prompts, negatives = ["a red cat", "two dogs on a boat"], ["blurry", "a cat"]
    steps = (4, 3, 2)
    ref = reference_chain(
        diffusers_stage1, diffusers_stage2, diffusers_stage3, prompts, negatives, steps=steps, n=2, seed=3
    )
    ours = pipe(
        prompts,
        negative_prompt=negatives,
        num_images_per_prompt=2,
        steps=steps,
        seed=3,
        output_type="pt",
        progress=False,
    )
    assert_stages_match(ours, ref)
    assert ours.images.shape[0] == 4


def test_non_square(pipe, diffusers_stage1, diffusers_stage2, diffusers_stage3):
    steps = (4, 3, 2)
    ref = reference_chain(
        diffusers_stage1, diffusers_stage2, diffusers_stage3, "a tall tower", steps=steps, height=24, width=16, seed=5
    )
    ours = pipe("a tall tower", height=24, width=16, steps=steps, seed=5, output_type="pt", progress=False)
    assert_stages_match(ours, ref)
    assert ours.stages[2].shape[-2:] == (384, 256)


def test_named_timesteps_and_no_guidance(pipe, diffusers_stage1, diffusers_stage2, diffusers_stage3):
    from diffusers.pipelines.deepfloyd_if import timesteps as reference_lists

    steps = (27, 27, 2)
    ref = reference_chain(
        diffusers_stage1,
        diffusers_stage2,
        diffusers_stage3,
        "a lighthouse",
        steps=steps,
        guidance=(1.0, 1.0, 1.0),
        seed=7,
        last=2,
        timesteps=(reference_lists.fast27_timesteps, reference_lists.smart27_timesteps),
    )
    ours = pipe(
        "a lighthouse",
        steps=steps,
        guidance=1.0,
        timesteps=("fast27", "smart27"),
        seed=7,
        last_stage=2,
        output_type="pt",
        progress=False,
    )
    assert_stages_match(ours, ref)


def test_stage1_default_settings(stage1_dir, diffusers_stage1):
    """Default steps (100), guidance and caption cleaning, stage I only."""
    pipe = ifengine.Cascade.from_pretrained(stage1=stage1_dir)
    ref = diffusers_stage1(
        "A <b>Red</b> Cat http://x.com",
        generator=torch.Generator().manual_seed(1),
        height=16,
        width=16,
        output_type="pt",
    ).images
    ours = pipe("A <b>Red</b> Cat http://x.com", seed=1, output_type="pt", progress=False)
    assert ours.settings["stages"][0]["steps"] == 100
    assert (ours.stages[0] - ref).abs().max().item() <= TOL
