"""Bad requests fail before any work, with a message that says what is accepted."""

import inspect

import pytest
import torch

from ifengine import RequestError
from ifengine.stage.sizes import aspect_size, nearest, size_multiple


@pytest.fixture
def no_unet_calls(pipe):
    """Proves validation happens before work: any U-Net call fails the test."""
    hooks = [
        s.unet.register_forward_pre_hook(lambda *a: pytest.fail("work started before validation"))
        for s in (pipe.stage1, pipe.stage2, pipe.stage3)
    ]
    yield
    for h in hooks:
        h.remove()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=18), r"height 18 .* multiples of 4.*Nearest valid heights: 16, 20"),
        (dict(width=0), r"width \(pixels\) must be a whole number >= 1"),
        (dict(steps=0), "stage 1 steps must be a whole number >= 1"),
        (dict(steps=(10, -1)), "stage 2 steps must be"),
        (dict(timesteps="smart13"), "unknown|smart27"),
        (dict(timesteps=([500, 700],)), "descending"),
        (dict(guidance=float("nan")), "guidance must be a finite number"),
        (dict(noise_level=(1000, 20)), r"stage 2 noise_level must be a whole number in \[0, 999\]"),
        (dict(noise_level=(250, 351)), r"stage 3 noise_level .* \[0, 350\]"),
        (dict(output_type="jpeg"), "output_type must be one of"),
        (dict(num_images_per_prompt=0), "num_images_per_prompt"),
        (dict(negative_prompt=["a", "b"]), "negative_prompt has 2 entries but prompt has 1"),
        (dict(last_stage=4), "last_stage must be 1, 2 or 3"),
        (dict(steps=(1, 2, 3, 4)), "at most 3 values"),
    ],
)
def test_bad_requests(pipe, no_unet_calls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe("a cat", progress=False, **kwargs)


def test_bad_prompt(pipe, no_unet_calls):
    with pytest.raises(RequestError, match="prompt must be a string or a non-empty list"):
        pipe([], progress=False)


def test_size_rules_cover_every_stage():
    # stage I /4, stage II /16 at x4 size, stage III /8 at x16 size -> stage I multiples of 4
    assert size_multiple({1: 4, 2: 16, 3: 8}) == 4
    assert size_multiple({1: 8, 2: 16, 3: 8}) == 8  # IF-I-XL, IF-II-L, x4
    assert size_multiple({1: 8, 2: 64}) == 16
    assert nearest(60, 8) == [56, 64] and nearest(3, 8) == [8]
    assert aspect_size("16:9", 64) == (64, 112) and aspect_size("2:3", 64) == (96, 64)
    with pytest.raises(ValueError, match="aspect ratio"):
        aspect_size("wide", 64)


def test_nan_in_a_stage_is_reported(pipe):
    hook = pipe.stage2.unet.register_forward_hook(lambda m, a, out: out * float("nan"))
    try:
        with pytest.raises(FloatingPointError, match="stage 2 produced NaN"):
            pipe("a cat", steps=(2, 2, 2), seed=0, progress=False)
    finally:
        hook.remove()


def test_output_types(pipe):
    kw = dict(steps=2, seed=0, last_stage=1, progress=False)
    pil = pipe("a cat", **kw).images
    arr = pipe("a cat", output_type="np", **kw).images
    pt = pipe("a cat", output_type="pt", **kw).images
    assert pil[0].size == (16, 16) and arr.shape == (1, 16, 16, 3) and pt.shape == (1, 3, 16, 16)
    assert arr.dtype.name == "float32" and arr.min() >= 0 and arr.max() <= 1
    assert torch.allclose(torch.from_numpy(arr).permute(0, 3, 1, 2), pt)
    import numpy as np

    assert np.array_equal(np.asarray(pil[0]), (arr[0] * 255).round().astype("uint8"))


def test_seed_and_generator_agree(pipe):
    """A self-comparison on purpose: seed=n is defined as generator=torch.Generator().manual_seed(n)."""
    kw = dict(steps=2, last_stage=1, output_type="pt", progress=False)
    a = pipe("a cat", seed=11, **kw)
    b = pipe("a cat", generator=torch.Generator().manual_seed(11), **kw)
    assert a.seed == 11 and torch.equal(a.images, b.images)
    c = pipe("a cat", **kw)
    assert isinstance(c.seed, int)
    with pytest.raises(ValueError, match="either generator= or seed="):
        pipe("a cat", seed=1, generator=torch.Generator(), **kw)


def test_make_request_takes_keywords_with_the_call_defaults(pipe):
    with pytest.raises(TypeError):
        pipe.make_request("a cat", None, 64, 64)  # settings are never positional
    call = inspect.signature(type(pipe).__call__).parameters
    for name, param in inspect.signature(pipe.make_request).parameters.items():
        if name != "prompt":
            assert param.kind is param.KEYWORD_ONLY and param.default == call[name].default, name
    req = pipe.make_request("a cat", steps=3, last_stage=2)
    assert req.stages[0].steps == 3 and req.last_stage == 2 and req.negatives == ("",)
