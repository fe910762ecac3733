"""Editing modes against diffusers' IF img2img / inpainting pipelines, same tiny weights and generator."""

import numpy as np
import pytest
import torch
from PIL import Image

import ifengine
from reference_utils import diffusers_chain

TOL = 1e-3


@pytest.fixture
def reference(diffusers_stage1, diffusers_stage2, diffusers_stage3):
    from diffusers import (
        IFImg2ImgPipeline,
        IFImg2ImgSuperResolutionPipeline,
        IFInpaintingPipeline,
        IFInpaintingSuperResolutionPipeline,
    )

    quiet = dict(requires_safety_checker=False)
    return {
        "img2img": (
            IFImg2ImgPipeline(**diffusers_stage1.components, **quiet),
            IFImg2ImgSuperResolutionPipeline(**diffusers_stage2.components, **quiet),
        ),
        "inpaint": (
            IFInpaintingPipeline(**diffusers_stage1.components, **quiet),
            IFInpaintingSuperResolutionPipeline(**diffusers_stage2.components, **quiet),
        ),
        "encode": diffusers_stage1.encode_prompt,
        "x4": diffusers_stage3,
    }


def source_image(width=40, height=24, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width * height * 3).reshape(height, width, 3)
    return Image.fromarray(np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8))


def border_mask(width=40, height=24) -> Image.Image:
    m = np.zeros((height, width), np.uint8)
    m[: height // 2, width // 2 :] = 255  # top-right quarter, touching two borders
    return Image.fromarray(m)


def run_reference(
    ref, mode, image, prompt, *, steps, strength, guidance=(7.0, 4.0, 9.0), noise=(250, 20), mask=None, seed=0, last=3
):
    g = torch.Generator().manual_seed(seed)
    pe, ne = ref["encode"](prompt, clean_caption=True)
    one, two = ref[mode]
    extra = {} if mask is None else {"mask_image": mask}
    per_stage = (
        dict(image=image, strength=strength[0], **extra),
        dict(original_image=image, strength=strength[1], **extra),
        dict(prompt=prompt),
    )
    return diffusers_chain(
        (one, two, ref["x4"]),
        (pe, ne),
        steps=steps,
        guidance=guidance,
        noise_level=noise,
        generator=g,
        last=last,
        per_stage=per_stage,
    )


def assert_match(ours, ref):
    for stage, (a, b) in enumerate(zip(ours.stages, ref, strict=True), start=1):
        a = (a / 2 + 0.5).clamp(0, 1) if stage == 3 else a
        assert a.shape == b.shape, f"stage {stage}: {a.shape} vs {b.shape}"
        assert (a - b).abs().max().item() <= TOL, f"stage {stage} differs by {(a - b).abs().max().item():.2e}"


@pytest.mark.parametrize("strength", [(1.0, 1.0), (0.3, 0.5)])
def test_img2img_non_square_through_all_stages(pipe, reference, strength):
    image, steps = source_image(), (10, 4, 2)
    ref = run_reference(
        reference, "img2img", image, "a blue boat", steps=steps, strength=strength, guidance=(10.0, 4.0, 9.0)
    )
    ours = pipe.img2img(image, "a blue boat", strength=strength, steps=steps, seed=0, output_type="pt", progress=False)
    assert [tuple(s.shape[-2:]) for s in ours.stages] == [(16, 24), (64, 104), (256, 416)]
    assert_match(ours, ref)
    assert ours.settings["mode"] == "img2img" and ours.settings["strength"] == list(strength)


def test_inpainting_mask_on_borders(pipe, reference):
    image, mask, steps = source_image(), border_mask(), (6, 4, 2)
    ref = run_reference(
        reference, "inpaint", image, "a red door", steps=steps, strength=(1.0, 0.8), noise=(0, 20), mask=mask, seed=4
    )
    ours = pipe.inpaint(image, mask, "a red door", steps=steps, seed=4, output_type="pt", progress=False)
    assert_match(ours, ref)


def test_unmasked_pixels_stay_the_source(pipe):
    from ifengine.pipeline.inputs import image_tensor, mask_tensor

    image, mask = source_image(), border_mask()
    out = pipe.inpaint(image, mask, "a cat", steps=(5, 3), last_stage=2, seed=1, output_type="pt", progress=False)
    for stage, short in ((0, 16), (1, 64)):
        src, m = image_tensor(image, short), mask_tensor(mask, short)
        keep = (m == 0).expand_as(src)
        assert 0 < keep.float().mean() < 1
        assert torch.equal(out.stages[stage][keep], src[keep])


def test_style_transfer_without_positive_is_img2img(pipe, reference):
    """Without a positive prompt the original's style transfer is img2img with the style prompt:
    checked against diffusers' img2img pipelines (not against our own img2img)."""
    image, steps, strength = source_image(seed=2), (8, 4), (0.5, 0.5)
    ref = run_reference(
        reference,
        "img2img",
        image,
        "in style lego",
        steps=steps,
        strength=strength,
        guidance=(10.0, 4.0),
        seed=3,
        last=2,
    )
    kw = dict(steps=steps, last_stage=2, seed=3, output_type="pt", progress=False)
    assert_match(pipe.style_transfer(image, "in style lego", strength=strength, **kw), ref)


def test_style_mixer_follows_the_original_formula(pipe, diffusers_stage1):
    """One style step equals a hand-built reference step from diffusers' U-Net and scheduler."""
    from diffusers import DDPMScheduler

    image = source_image(seed=5)
    out = pipe.style_transfer(
        image,
        "in style origami",
        positive_prompt="a tall tower",
        mixer=0.3,
        strength=(0.1, 0.5),
        steps=(10, 2),
        guidance=(6.0, 4.0),
        last_stage=1,
        seed=6,
        output_type="pt",
        progress=False,
    )
    # reference: the single kept step of 10 (strength 0.1), three CFG branches, mixed conditional term
    g = torch.Generator().manual_seed(6)

    def enc(p):
        return diffusers_stage1.encode_prompt(p, do_classifier_free_guidance=False, clean_caption=True)[0]

    embeds = torch.cat([enc(""), enc("in style origami"), enc("a tall tower")])
    sched = DDPMScheduler.from_config(diffusers_stage1.scheduler.config)
    sched.set_timesteps(10)
    t = sched.timesteps[-1:]
    from ifengine.pipeline.inputs import image_tensor

    x = sched.add_noise(image_tensor(image, 16), torch.randn((1, 3, 16, 24), generator=g), t)
    with torch.no_grad():
        raw = diffusers_stage1.unet(torch.cat([x] * 3), t, encoder_hidden_states=embeds).sample
    u, c, p = raw.chunk(3)
    eps = u[:, :3] + 6.0 * ((1 - 0.3) * c[:, :3] + 0.3 * p[:, :3] - u[:, :3])
    ref = sched.step(torch.cat([eps, c[:, 3:]], 1), t[0], x, generator=g).prev_sample
    assert (out.stages[0] - ref).abs().max().item() <= TOL


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p, img: p.img2img("/no/such.png", "x"), "does not exist"),
        (lambda p, img: p.img2img(np.zeros((0, 0, 3), np.uint8), "x"), "HxW|empty"),
        (lambda p, img: p.img2img(img, "x", strength=0), r"strength must be a number in \(0, 1\]"),
        (lambda p, img: p.img2img(img, "x", strength=1.5), r"strength must be a number in \(0, 1\]"),
        (lambda p, img: p.img2img(img, "x", strength=0.05, steps=10), "keeps no step"),
        (lambda p, img: p.inpaint(img, Image.new("L", (24, 24), 255), "x"), "aspect ratios differ"),
        (lambda p, img: p.inpaint(img, Image.new("L", (40, 24), 0), "x"), "no white pixels"),
        (lambda p, img: p.img2img(img, "x", positive_prompt="y"), "style-transfer option"),
        (lambda p, img: p.img2img(np.full((8, 8, 3), 2.0), "x"), r"\[0, 1\]"),
    ],
)
def test_bad_editing_input(pipe, call, message):
    hooks = [
        s.unet.register_forward_pre_hook(lambda *a: pytest.fail("work started before validation"))
        for s in (pipe.stage1, pipe.stage2, pipe.stage3)
    ]
    try:
        with pytest.raises(ValueError, match=message):
            call(pipe, source_image())
    finally:
        for h in hooks:
            h.remove()


def test_unreadable_file(pipe, tmp_path):
    bad = tmp_path / "not.png"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="not a readable image"):
        pipe.img2img(bad, "x")


def test_style_transfer_needs_stage2(stage1_dir):
    only1 = ifengine.Cascade.from_pretrained(stage1=stage1_dir)
    with pytest.raises(ValueError, match="needs a stage II checkpoint"):
        only1.style_transfer(source_image(), "in style lego")


def test_input_formats_are_equivalent(tmp_path):
    from ifengine.pipeline.inputs import image_tensor, load_image

    img = source_image()
    arr = np.asarray(img)
    ref = image_tensor(load_image(img), 16)
    path = tmp_path / "src.png"
    img.save(path)
    as_float = arr.astype(np.float32) / 255
    as_tensor = torch.from_numpy(as_float).permute(2, 0, 1)
    rgba = img.convert("RGBA")
    for source in (path, str(path), arr, as_float, as_tensor, as_tensor[None], rgba):
        assert torch.equal(image_tensor(load_image(source), 16), ref), type(source)
    grey = image_tensor(load_image(img.convert("L")), 16)
    assert grey.shape == ref.shape and torch.equal(grey[:, 0], grey[:, 1])


def test_exif_orientation_is_honoured(tmp_path):
    from ifengine.pipeline.inputs import load_image

    img = source_image(40, 24)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    assert load_image(path).size == (24, 40)


def test_cli_editing_modes(tmp_path, monkeypatch, stage1_dir, stage2_dir):
    from ifengine.cli import main

    src, mask = tmp_path / "src.png", tmp_path / "mask.png"
    source_image().save(src)
    border_mask().save(mask)
    base = [
        "generate",
        "--stage1",
        str(stage1_dir),
        "--stage2",
        str(stage2_dir),
        "--steps",
        "4",
        "--quiet",
        "--seed",
        "1",
        "--image",
        str(src),
    ]
    assert main(base + ["a boat", "--strength", "0.5", "--out", str(tmp_path / "a.png")]) == 0
    assert main(base + ["a door", "--mask", str(mask), "--out", str(tmp_path / "b.png")]) == 0
    assert (
        main(
            base
            + ["in style lego", "--style", "--positive", "a tower", "--mixer", "0.4", "--out", str(tmp_path / "c.png")]
        )
        == 0
    )
    for name, mode in (("a.png", "img2img"), ("b.png", "inpaint"), ("c.png", "style")):
        img = Image.open(tmp_path / name)
        assert img.size == (104, 64)
        assert f'"mode": "{mode}"' in img.text["ifengine"]
    assert main(base + ["x", "--mask", str(mask), "--style", "--out", str(tmp_path / "d.png")]) == 2
