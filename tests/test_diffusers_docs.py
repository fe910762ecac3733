"""diffusers' DeepFloyd IF documentation examples, run on diffusers and then on ifengine.

Each example below is the documentation's code written against diffusers. It runs once as written, then
once more with ``from diffusers import`` replaced by ``from ifengine import`` and nothing else changed,
on the tiny random checkpoints (tests/tiny_models.py) saved in the Hub layout. What differs from the
documentation pages, for both runs alike: the Hub ids are the fixture folders (STAGE1/2/3), the dtype
is float32 (CPU), the step counts are small, and the ``enable_model_cpu_offload()`` lines are left out
(diffusers refuses them on a machine without an accelerator; tests/test_diffusers_idioms.py covers them).
``from diffusers.utils import pt_to_pil`` stays diffusers' own: it reads stage outputs in [-1, 1].
"""

import numpy as np
import pytest
import torch
from PIL import Image

TOL = 1e-3
pytestmark = pytest.mark.usefixtures("one_thread")

TEXT_TO_IMAGE = """
from diffusers import DiffusionPipeline
from diffusers.utils import pt_to_pil
import torch

stage_1 = DiffusionPipeline.from_pretrained(STAGE1, torch_dtype=torch.float32)
stage_2 = DiffusionPipeline.from_pretrained(STAGE2, text_encoder=None, torch_dtype=torch.float32)
safety_modules = {
    "feature_extractor": stage_1.feature_extractor,
    "safety_checker": stage_1.safety_checker,
    "watermarker": stage_1.watermarker,
}
stage_3 = DiffusionPipeline.from_pretrained(STAGE3, **safety_modules, torch_dtype=torch.float32)
for stage in (stage_1, stage_2, stage_3):
    stage.set_progress_bar_config(disable=True)

prompt = 'a photo of a kangaroo wearing an orange hoodie and blue sunglasses holding a sign "very deep learning"'
generator = torch.manual_seed(1)
prompt_embeds, negative_embeds = stage_1.encode_prompt(prompt)

stage_1_output = stage_1(
    prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds, generator=generator, output_type="pt",
    num_inference_steps=4,
).images
first = pt_to_pil(stage_1_output)[0]
stage_2_output = stage_2(
    image=stage_1_output, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
    generator=generator, output_type="pt", num_inference_steps=3,
).images
stage_3_output = stage_3(prompt=prompt, image=stage_2_output, noise_level=100, generator=generator,
                         num_inference_steps=3).images
result = dict(stage_1=stage_1_output, stage_2=stage_2_output, first=first, final=stage_3_output[0])
"""

IMG2IMG = """
from diffusers import IFImg2ImgPipeline, IFImg2ImgSuperResolutionPipeline
import torch

stage_1 = IFImg2ImgPipeline.from_pretrained(STAGE1, torch_dtype=torch.float32)
no_safety = dict(safety_checker=None, watermarker=None, feature_extractor=None)  # the tiny folder has none
stage_2 = IFImg2ImgSuperResolutionPipeline.from_pretrained(
    STAGE2, text_encoder=None, torch_dtype=torch.float32, **no_safety
)
prompt = "A fantasy landscape in style minecraft"
generator = torch.manual_seed(1)
prompt_embeds, negative_embeds = stage_1.encode_prompt(prompt)
stage_1_output = stage_1(
    image=original_image, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
    generator=generator, output_type="pt", num_inference_steps=5,
).images
stage_2_output = stage_2(
    image=stage_1_output, original_image=original_image, prompt_embeds=prompt_embeds,
    negative_prompt_embeds=negative_embeds, generator=generator, output_type="pt", num_inference_steps=5,
).images
result = dict(stage_1=stage_1_output, stage_2=stage_2_output)
"""

INPAINTING = """
from diffusers import IFInpaintingPipeline, IFInpaintingSuperResolutionPipeline
import torch

stage_1 = IFInpaintingPipeline.from_pretrained(STAGE1, torch_dtype=torch.float32)
no_safety = dict(safety_checker=None, watermarker=None, feature_extractor=None)  # the tiny folder has none
stage_2 = IFInpaintingSuperResolutionPipeline.from_pretrained(
    STAGE2, text_encoder=None, torch_dtype=torch.float32, **no_safety
)
prompt = "blue sunglasses"
generator = torch.manual_seed(1)
prompt_embeds, negative_embeds = stage_1.encode_prompt(prompt)
stage_1_output = stage_1(
    image=original_image, mask_image=mask_image, prompt_embeds=prompt_embeds,
    negative_prompt_embeds=negative_embeds, generator=generator, output_type="pt", num_inference_steps=4,
).images
stage_2_output = stage_2(
    image=stage_1_output, original_image=original_image, mask_image=mask_image, prompt_embeds=prompt_embeds,
    negative_prompt_embeds=negative_embeds, generator=generator, output_type="pt", num_inference_steps=5,
).images
result = dict(stage_1=stage_1_output, stage_2=stage_2_output)
"""

STAGE_II_ALONE = """
from diffusers import IFSuperResolutionPipeline
import torch


no_safety = dict(safety_checker=None, watermarker=None, feature_extractor=None)  # the tiny folder has none
stage_2 = IFSuperResolutionPipeline.from_pretrained(STAGE2, text_encoder=None, torch_dtype=torch.float32, **no_safety)
stage_2.set_progress_bar_config(disable=True)
generator = torch.Generator().manual_seed(3)
upscaled = stage_2(
    image=small_image, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
    generator=generator, num_inference_steps=3, output_type="pt",
).images
result = dict(upscaled=upscaled)
"""

X4_ALONE = """
from diffusers import StableDiffusionUpscalePipeline
import torch

pipeline = StableDiffusionUpscalePipeline.from_pretrained(STAGE3, torch_dtype=torch.float32)
pipeline.set_progress_bar_config(disable=True)
generator = torch.Generator().manual_seed(7)
out = pipeline(prompt="a white cat", image=low_res_img, generator=generator, num_inference_steps=3,
               output_type="np")
pt = pipeline(prompt="a white cat", image=low_res_img, generator=torch.Generator().manual_seed(7),
              num_inference_steps=3, output_type="pt").images
pil = pipeline(prompt="a white cat", image=low_res_img, generator=torch.Generator().manual_seed(7),
               num_inference_steps=3).images[0]
result = dict(np=out.images, pt=pt, pil=pil)
"""

DREAMBOOTH_LORA = """
from diffusers import DiffusionPipeline
import torch

pipe = DiffusionPipeline.from_pretrained(STAGE1, torch_dtype=torch.float32)
pipe.set_progress_bar_config(disable=True)
pipe.load_lora_weights(LORA_DIR)
# the DreamBooth page: update the scheduler configuration to the fixed model variance
pipe.scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config, variance_type="fixed_small")
image = pipe("a sks dog", num_inference_steps=4, generator=torch.manual_seed(0), output_type="pt").images
half = pipe("a sks dog", num_inference_steps=4, generator=torch.manual_seed(0), output_type="pt",
            cross_attention_kwargs={"scale": 0.5}).images
pipe.fuse_lora(lora_scale=0.7)
fused = pipe("a sks dog", num_inference_steps=4, generator=torch.manual_seed(0), output_type="pt").images
pipe.unfuse_lora()
pipe.unload_lora_weights()
base = pipe("a sks dog", num_inference_steps=4, generator=torch.manual_seed(0), output_type="pt").images
result = dict(image=image, half=half, fused=fused, base=base)
"""


def run_both(source: str, namespace: dict) -> tuple[dict, dict]:
    assert "from diffusers import" in source
    ours = source.replace("from diffusers import", "from ifengine import")
    results = []
    for text in (source, ours):
        scope = dict(namespace)
        exec(compile(text, "<docs example>", "exec"), scope)
        results.append(scope["result"])
    return results[0], results[1]


def assert_same(ref, ours):
    assert type(ref) is type(ours) or isinstance(ours, type(ref)), (type(ref), type(ours))
    if isinstance(ref, Image.Image):
        a, b = np.asarray(ref, np.int16), np.asarray(ours, np.int16)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1  # a level at most: rounding to uint8
        return
    ref, ours = torch.as_tensor(ref), torch.as_tensor(ours)
    assert ref.shape == ours.shape and ref.dtype == ours.dtype
    assert (ref - ours).abs().max().item() <= TOL
    assert ref.min() >= ours.min() - TOL and ref.max() <= ours.max() + TOL  # same range


def source_image(size=24):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def mask(size=24):
    m = np.zeros((size, size), np.uint8)
    m[4:14, 6:18] = 255
    return Image.fromarray(m)


@pytest.fixture
def folders(stage1_dir, stage2_dir, stage3_dir):
    return dict(STAGE1=str(stage1_dir), STAGE2=str(stage2_dir), STAGE3=str(stage3_dir))


def test_text_to_image_three_stages_with_prompt_embeds(folders):
    ref, ours = run_both(TEXT_TO_IMAGE, folders)
    assert ours["stage_1"].min() < 0  # "pt" is [-1, 1], as pt_to_pil reads it
    for key in ref:
        assert_same(ref[key], ours[key])


def test_img2img(folders):
    ref, ours = run_both(IMG2IMG, {**folders, "original_image": source_image()})
    for key in ref:
        assert_same(ref[key], ours[key])


def test_inpainting(folders):
    ref, ours = run_both(INPAINTING, {**folders, "original_image": source_image(), "mask_image": mask()})
    for key in ref:
        assert_same(ref[key], ours[key])


def test_stage_two_alone_on_an_image(folders, diffusers_stage1):
    pe, ne = diffusers_stage1.encode_prompt("a red barn")
    small = source_image(16)
    ref, ours = run_both(STAGE_II_ALONE, {**folders, "small_image": small, "prompt_embeds": pe, "negative_embeds": ne})
    assert_same(ref["upscaled"], ours["upscaled"])


def test_x4_alone_on_an_image(folders):
    ref, ours = run_both(X4_ALONE, {**folders, "low_res_img": source_image(16)})
    assert ours["pt"].min() >= 0 and ours["pt"].max() <= 1  # the x4 upscaler's "pt" is [0, 1]
    for key in ref:
        assert_same(ref[key], ours[key])


def test_dreambooth_lora_inference(folders, stage1_dir, tmp_path):
    """The DreamBooth page's inference: a LoRA in the training script's format loaded with
    load_lora_weights, the fixed_small scheduler swap, a per-call scale, fuse / unfuse / unload."""
    from test_lora import make_lora

    lora = make_lora(stage1_dir / "unet", tmp_path / "lora", seed=4)
    ref, ours = run_both(DREAMBOOTH_LORA, {**folders, "LORA_DIR": str(lora)})
    assert (ours["image"] - ours["base"]).abs().max() > 10 * TOL  # the LoRA changed the picture
    for key in ref:
        assert_same(ref[key], ours[key])
