"""The diffusers idioms of issue 23, one test each (each failed before the per-stage views existed)."""

import inspect
import subprocess
import sys

import pytest
import torch

import diffusers
import ifengine
from ifengine.stage.options import RequestError

pytestmark = pytest.mark.usefixtures("one_thread")
VIEWS = [
    "IFPipeline",
    "IFImg2ImgPipeline",
    "IFInpaintingPipeline",
    "IFSuperResolutionPipeline",
    "IFImg2ImgSuperResolutionPipeline",
    "IFInpaintingSuperResolutionPipeline",
    "StableDiffusionUpscalePipeline",
]


@pytest.mark.parametrize("name", VIEWS)
def test_call_signature_is_diffusers(name):
    theirs = list(inspect.signature(getattr(diffusers, name).__call__).parameters.values())[1:]
    ours = inspect.signature(getattr(ifengine, name).__call__).parameters
    for p in theirs:  # same names, same order, same defaults
        assert p.name in ours and ours[p.name].default == p.default, p.name
    assert [n for n in ours][1 : len(theirs) + 1] == [p.name for p in theirs]


def test_x4_only_cascade_names_the_view_not_t5(stage3_dir):
    x4 = ifengine.Cascade.from_pretrained(stage3=stage3_dir)
    with pytest.raises(RequestError, match="StableDiffusionUpscalePipeline") as err:
        x4("a cat", progress=False)
    assert "T5" not in str(err.value)


def test_named_timesteps_on_a_stage_one_cascade(pipe1):
    out = pipe1("a cat", timesteps="fast27", output_type="pt", seed=0, progress=False)
    assert out.settings["stages"][0]["timesteps"] == "fast27"


def test_encode_prompt_takes_diffusers_names(pipe1):
    a = pipe1.encode_prompt("a cat", negative_prompt="dog")
    b = pipe1.encode_prompt("a cat", "dog")
    assert torch.equal(a.negative_prompt_embeds, b.negative_prompt_embeds)
    two = pipe1.encode_prompt("a cat", num_images_per_prompt=2, do_classifier_free_guidance=False)
    assert two.prompt_embeds.shape[0] == 2 and two.negative_prompt_embeds is None


def test_view_encode_prompt_defaults_match_diffusers(stage1_dir, diffusers_stage1):
    view = ifengine.IFPipeline.from_pretrained(stage1_dir)
    prompt = "A <b>Photo</b> of https://x.org a CAT"  # cleaning changes this prompt
    pe, ne = view.encode_prompt(prompt, num_images_per_prompt=2)
    dpe, dne = diffusers_stage1.encode_prompt(prompt, num_images_per_prompt=2)
    assert (pe - dpe).abs().max() <= 1e-5 and (ne - dne).abs().max() <= 1e-5


def test_prompt_embeds_load_with_weights_only(pipe1, tmp_path):
    path = tmp_path / "e.pt"
    torch.save(pipe1.encode_prompt("a cat"), path)
    code = (
        "import torch; from ifengine import PromptEmbeds; "
        f"e = torch.load({str(path)!r}, weights_only=True); assert isinstance(e, PromptEmbeds); print(e.prompts)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "a cat" in done.stdout


def test_unpacked_pair_reaches_stage_three(pipe):
    pe, ne = pipe.encode_prompt("a lighthouse", "fog")
    common = dict(steps=(2, 2, 2), seed=2, output_type="pt", progress=False)
    ours = pipe(prompt_embeds=pe, negative_prompt_embeds=ne, **common)
    text = pipe("a lighthouse", negative_prompt="fog", **common)
    assert torch.equal(ours.stages[2], text.stages[2])


def test_load_arguments(stage1_dir):
    assert ifengine.Cascade.from_pretrained(stage1_dir, safety_checker=None).safety is None
    view = ifengine.IFPipeline.from_pretrained(stage1_dir, revision="main", use_safetensors=True, device_map="cpu")
    assert view.device.type == "cpu"
    with pytest.raises(RequestError, match="safetensors"):
        ifengine.IFPipeline.from_pretrained(stage1_dir, use_safetensors=False)
    with pytest.raises(RequestError, match="one device"):
        ifengine.IFPipeline.from_pretrained(stage1_dir, device_map="balanced")
    with pytest.raises(TypeError, match="unexpected"):
        ifengine.IFPipeline.from_pretrained(stage1_dir, colour="red")


def test_mask_image_alias(pipe1):
    img = torch.rand(1, 3, 16, 16)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:10, 4:10] = 1
    common = dict(steps=3, seed=1, output_type="pt", progress=False)
    a = pipe1.inpaint(img, mask_image=mask, prompt="a cat", **common)
    b = pipe1.inpaint(img, mask, "a cat", **common)
    assert torch.equal(a.images, b.images)


def test_callbacks_see_and_replace_the_sample(stage1_dir, diffusers_stage1):
    view = ifengine.IFPipeline.from_cascade(ifengine.Cascade.from_pretrained(stage1_dir, safety=False))
    seen, theirs = [], []
    common = dict(num_inference_steps=4, output_type="pt")
    diffusers_stage1("a cat", callback=lambda i, t, x: theirs.append(int(t)), generator=torch.manual_seed(0), **common)
    view("a cat", callback=lambda i, t, x: seen.append(int(t)), generator=torch.manual_seed(0), **common)
    assert seen == theirs

    def zero(pipe, i, t, kwargs):
        assert pipe is view and set(kwargs) == {"latents"}
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == 3 else {}

    out = view("a cat", callback_on_step_end=zero, generator=torch.manual_seed(0), **common).images
    assert torch.count_nonzero(out) == 0
    with pytest.raises(RequestError, match="tensor_inputs"):
        view("a cat", callback_on_step_end=zero, callback_on_step_end_tensor_inputs=["noise"], **common)


def test_views_share_the_cascade(pipe):
    one, two = ifengine.IFPipeline.from_cascade(pipe), ifengine.IFSuperResolutionPipeline.from_cascade(pipe)
    three = ifengine.StableDiffusionUpscalePipeline.from_cascade(pipe)
    assert one.unet is pipe.stage1.unet and two.unet is pipe.stage2.unet and three.vae is pipe.stage3.vae
    assert one.components["unet"] is one.unet and "low_res_scheduler" in three.components
    assert one.to("cpu") is one and one.enable_model_cpu_offload() is one  # no GPU: weights stay on the host
    one.set_progress_bar_config(disable=True)
    assert not one.progress and one.get_list_adapters is not None  # LoRA calls reach the cascade
    images, nsfw, marks = one("a cat", num_inference_steps=2, output_type="np", return_dict=False)
    assert images.shape == (1, 16, 16, 3) and nsfw is None
    lat = three("a cat", image=torch.zeros(1, 3, 8, 8), num_inference_steps=2, output_type="latent").images
    assert lat.shape == (1, pipe.stage3.unet.config.out_channels, 8, 8)
    with pytest.raises(RequestError, match="eta"):
        three("a cat", image=torch.zeros(1, 3, 8, 8), eta=0.5)


def test_fixed_small_scheduler_swap_matches_diffusers(stage1_dir, diffusers_stage1):
    view = ifengine.IFPipeline.from_pretrained(stage1_dir, safety_checker=None)
    view.scheduler = view.scheduler.__class__.from_config(view.scheduler.config, variance_type="fixed_small")
    d = diffusers_stage1
    d.scheduler = d.scheduler.__class__.from_config(d.scheduler.config, variance_type="fixed_small")
    common = dict(num_inference_steps=3, output_type="pt")
    ours = view("a cat", generator=torch.manual_seed(4), **common).images
    ref = d("a cat", generator=torch.manual_seed(4), **common).images
    assert (ours - ref).abs().max() <= 1e-3


def test_callback_through_the_runtime_loop(stage1_dir, stage2_dir):
    """The GPU runner's loop (here on the CPU, without graphs) hands each step to the callback and copies a
    returned sample into its static buffer."""
    cascade = ifengine.Cascade.from_pretrained(stage1_dir, stage2_dir, safety=False).use_runtime(cuda_graphs=False)
    assert cascade.runtime is not None
    calls = []

    def last_zero(pipe, i, t, kwargs):
        calls.append(i)
        return {"intermediate_images": torch.zeros_like(kwargs["intermediate_images"])} if i == 2 else None

    view = ifengine.IFSuperResolutionPipeline.from_cascade(cascade)
    out = view(
        image=torch.zeros(1, 3, 16, 16), prompt="a cat", num_inference_steps=3, output_type="pt",
        callback_on_step_end=last_zero, callback_on_step_end_tensor_inputs=["intermediate_images"],
    ).images  # fmt: skip
    assert calls == [0, 1, 2] and torch.count_nonzero(out) == 0
