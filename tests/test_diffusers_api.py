"""diffusers' spellings and prompt embeddings, against diffusers' IF pipelines on the same tiny weights.

The same diffusers-style call (num_inference_steps, guidance_scale, negative_prompt, a list of generators,
output_type, prompt_embeds) runs on ifengine and on diffusers' IFPipeline / IFSuperResolutionPipeline;
the stage outputs must agree as in test_cascade.py.
"""

import pytest
import torch

import ifengine
from ifengine.pipeline.embeds import PromptEmbeds

TOL = 1e-3
pytestmark = pytest.mark.usefixtures("one_thread")


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def close(a, b):
    return (a - b).abs().max().item() <= TOL


def test_diffusers_call_gives_diffusers_images(pipe, diffusers_stage1, diffusers_stage2):
    call = dict(num_inference_steps=4, guidance_scale=5.0, output_type="pt")
    g = gens(3, 4)
    ref1 = diffusers_stage1(
        "a red cat", negative_prompt="blurry", num_images_per_prompt=2, height=16, width=16, generator=g, **call
    ).images
    # the model card's chain: stage II has no T5 and takes stage I's embeddings
    pe, ne = diffusers_stage1.encode_prompt("a red cat", num_images_per_prompt=2, negative_prompt="blurry")
    ref2 = diffusers_stage2(
        image=ref1, prompt_embeds=pe, negative_prompt_embeds=ne, generator=g, noise_level=250, **call
    ).images
    ours = pipe(
        "a red cat",
        negative_prompt="blurry",
        num_images_per_prompt=2,
        generator=gens(3, 4),
        last_stage=2,
        progress=False,
        **call,
    )
    assert ours.settings["stages"][0]["steps"] == 4 and ours.settings["stages"][1]["guidance"] == 5.0
    assert close(ours.stages[0], ref1) and close(ours.stages[1], ref2)
    # a list of generators is one per image: image 1 alone with generator 4 is image 1 of the pair
    alone = pipe("a red cat", negative_prompt="blurry", generator=gens(4), last_stage=1, progress=False, **call)
    assert close(alone.stages[0][0], ours.stages[0][1])


def test_aliases_agree_with_ifengine_names(pipe):
    a = pipe(
        "a boat", num_inference_steps=3, guidance_scale=2.0, seed=1, last_stage=1, output_type="pt", progress=False
    )
    b = pipe("a boat", steps=3, guidance=2.0, seed=1, last_stage=1, output_type="pt", progress=False)
    c = pipe("a boat", steps=3, num_inference_steps=3, guidance=2.0, seed=1, last_stage=1, output_type="pt",
             progress=False)  # fmt: skip
    assert torch.equal(a.images, b.images) and torch.equal(a.images, c.images)


@pytest.mark.parametrize(
    "kwargs, names",
    [
        (dict(steps=4, num_inference_steps=5), ("steps=4", "num_inference_steps=5")),
        (dict(guidance=3.0, guidance_scale=7.0), ("guidance=3.0", "guidance_scale=7.0")),
        (dict(steps=(4, 3), num_inference_steps=4), ("steps=(4, 3)", "num_inference_steps=4")),
    ],
)
def test_conflicting_spellings_are_refused(pipe, kwargs, names):
    with pytest.raises(ValueError, match="disagree") as err:
        pipe("a boat", progress=False, **kwargs)
    assert all(n in str(err.value) for n in names)


def test_conflicting_dtypes_are_refused(stage1_dir):
    with pytest.raises(ValueError, match="torch_dtype"):
        ifengine.Cascade.from_pretrained(stage1_dir, dtype=torch.float32, torch_dtype=torch.float16)


def test_prompt_embeds_give_the_text_images_and_diffusers_ones(pipe, diffusers_stage1):
    emb = pipe.encode_prompt(["a red cat", "a ship"], ["blurry", ""])
    pe, ne = emb  # unpacks as diffusers' encode_prompt
    dpe, dne = diffusers_stage1.encode_prompt(["a red cat", "a ship"], negative_prompt=["blurry", ""])
    assert close(pe, dpe) and close(ne, dne)
    common = dict(steps=(3, 2, 2), seed=5, output_type="pt", progress=False)
    text = pipe(["a red cat", "a ship"], negative_prompt=["blurry", ""], **common)
    from_embeds = pipe(prompt_embeds=emb, **common)
    for a, b in zip(text.stages, from_embeds.stages, strict=True):
        assert torch.equal(a, b)
    bare = pipe(prompt_embeds=pe, negative_prompt_embeds=ne, last_stage=2, **common)
    assert torch.equal(bare.stages[1], text.stages[1])
    ref = diffusers_stage1(
        prompt_embeds=dpe, negative_prompt_embeds=dne, num_inference_steps=3, height=16, width=16,
        generator=torch.Generator().manual_seed(5), output_type="pt",
    ).images  # fmt: skip
    assert close(text.stages[0], ref)


def test_cascade_without_t5_runs_from_embeddings(pipe, stage1_dir, stage2_dir, stage3_dir):
    emb = pipe.encode_prompt("a lighthouse", "fog")
    lean = ifengine.Cascade.from_pretrained(stage1_dir, stage2_dir, stage3_dir, text_encoder=None)
    assert lean.text is None
    common = dict(steps=(3, 2, 2), seed=2, output_type="pt", progress=False)
    ours = lean(prompt_embeds=emb, **common)
    assert torch.equal(ours.stages[2], pipe("a lighthouse", negative_prompt="fog", **common).stages[2])
    source = torch.zeros(1, 3, 16, 16)
    edited = lean.img2img(source, prompt_embeds=emb, **common)  # through stage III: its CLIP rows come along
    text = pipe.img2img(source, "a lighthouse", negative_prompt="fog", **common)
    assert torch.equal(edited.stages[2], text.stages[2])
    with pytest.raises(ValueError, match="without T5"):
        lean("a lighthouse", progress=False)
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        lean(prompt_embeds=emb.prompt_embeds.clone(), last_stage=1, progress=False)  # not from encode_prompt
    with pytest.raises(ValueError, match="without T5"):
        lean.encode_prompt("a lighthouse")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt="a", prompt_embeds=torch.zeros(1, 77, 32)), "not both"),
        (dict(prompt_embeds=torch.zeros(77, 32)), r"\(batch, tokens, hidden\)"),
        (dict(prompt_embeds=torch.zeros(1, 77, 32), negative_prompt_embeds=torch.zeros(2, 77, 32)), "must match"),
        (dict(prompt_embeds=torch.zeros(1, 77, 32)), "stage III encodes its prompt"),
        (dict(prompt_embeds=torch.zeros(1, 77, 8), last_stage=1), "features"),
        (dict(negative_prompt_embeds=torch.zeros(1, 77, 32), prompt="a"), "goes with prompt_embeds"),
    ],
)
def test_bad_embeddings_are_refused(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(progress=False, **kwargs)


def test_prompt_embeds_object_is_what_encode_prompt_returns(pipe):
    emb = pipe.encode_prompt("a cat")
    assert isinstance(emb, PromptEmbeds) and emb.prompts == ("a cat",)
    assert emb.clip_prompt_embeds is not None and emb.prompt_embeds.shape[0] == 1
