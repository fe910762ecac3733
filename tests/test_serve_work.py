"""The serving stages' batch work without Ray: a request batched with others gets its image alone.

Each request draws its noise from its own generator (stage.noise.GeneratorGroups) and carries the
generator's state from stage to stage, so the batched run must match one plain Cascade call per request
with that request's seed (<= 1e-3 max abs in [0, 1], CPU fp32), and the stage functions must really
have run the requests together.
"""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from ifengine.pipeline.images import to_unit
from ifengine.stage.noise import GeneratorGroups, randn
from ifengine.serve import work
from ifengine.serve.api import GenerationRequest, to_job
from ifengine.serve.config import Limits
from ifengine.serve.edit_jobs import EditForm, edit_job
from ifengine.serve.models import ModelInfo

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = [4, 2, 2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from ifengine.pipeline.cascade import open_cascade

    return open_cascade(device="cpu")


def info_of(pipe) -> ModelInfo:
    return ModelInfo(
        stages=pipe.loaded_stages,
        sample_size=pipe.stage1.unet.config.sample_size,
        downsample={
            n: s.unet.config.downsample_factor
            for n, s in zip((1, 2, 3), (pipe.stage1, pipe.stage2, pipe.stage3), strict=True)
        },
        defaults=pipe.defaults,
        sample_sizes={n: s.unet.config.sample_size for n, s in ((1, pipe.stage1), (2, pipe.stage2))},
    )


def job(pipe, **fields):
    return to_job(GenerationRequest(**{"steps": STEPS, **fields}), info_of(pipe), Limits())


def test_generator_groups_draw_each_request_as_alone():
    a, b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    both = randn((3, 3, 8, 8), GeneratorGroups(((a, 1), (b, 2))), torch.float32)
    alone_a = torch.randn((1, 3, 8, 8), generator=torch.Generator().manual_seed(1))
    alone_b = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(2))
    assert torch.equal(both, torch.cat([alone_a, alone_b]))
    with pytest.raises(ValueError, match="cover 3 rows"):
        randn((4, 3, 8, 8), GeneratorGroups(((a, 1), (b, 2))), torch.float32)


def test_batched_requests_match_their_single_calls(demo):
    jobs = [
        job(demo, prompt="a red cat", seed=3),
        job(demo, prompt="a blue dog", seed=11, n=2, negative_prompt="blurry"),
        job(demo, prompt="a green frog", seed=5),
    ]
    done = work.cascade_batch(demo, [work.start(j) for j in jobs])
    for j, carry in zip(jobs, done, strict=True):
        assert carry.error is None
        assert carry.batched == {"text": 3, "stage1": 4, "stage2": 4, "stage3": 4}  # all ran in one call
        alone = demo(
            list(j.request.prompts),
            negative_prompt=list(j.request.negatives),
            num_images_per_prompt=j.request.num_images_per_prompt,
            seed=j.seed,
            steps=STEPS,
            output_type="pt",
            progress=False,
        )
        assert (to_unit(carry.image) - alone.images).abs().max().item() <= 1e-3


def test_incompatible_requests_run_as_separate_groups(demo):
    a = job(demo, prompt="a red cat", seed=3)
    b = job(demo, prompt="a red cat", seed=3, steps=[3, 2, 2])  # other stage I settings: its own loop
    c = job(demo, prompt="a red cat", seed=3, last_stage=1)
    done = work.cascade_batch(demo, [work.start(x) for x in (a, b, c)])
    assert [d.batched["stage1"] for d in done] == [2, 1, 2]
    assert "stage2" not in done[2].batched and done[2].image.shape[-1] == 16
    assert done[0].image.shape[-1] == 256
    assert not torch.equal(done[0].image, done[1].image)


def test_a_failing_group_marks_only_its_requests(demo):
    good = work.start(job(demo, prompt="a red cat", seed=3))
    bad_job = job(demo, prompt="a red cat", seed=4, steps=[5, 2, 2])
    bad_opts = dataclasses.replace(bad_job.request.stages[0], timesteps=(999, 5000))  # not a valid list
    bad = work.start(
        dataclasses.replace(
            bad_job, request=dataclasses.replace(bad_job.request, stages=(bad_opts, *bad_job.request.stages[1:]))
        )
    )
    done = work.stage_batch(demo, 1, work.encode_batch(demo, [good, bad]))
    assert done[0].error is None and done[0].image is not None
    assert done[1].error is not None and done[1].error.startswith("stage 1")


def _picture(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _edit(pipe, mode, seed, mask=None, **fields):
    form = EditForm(mode, _picture(40, 30, 0), mask, fields.pop("prompt", "a watercolour"), steps=4, **fields)
    return edit_job(info_of(pipe), form, last=3, seed=seed, lora=None)


def _alone(pipe, j):
    plan, mode = j.edit, j.edit.mode
    kwargs = dict(
        negative_prompt=list(j.request.negatives),
        num_images_per_prompt=j.request.num_images_per_prompt,
        seed=j.seed,
        steps=4,
        strength=plan.strength,
        output_type="pt",
        progress=False,
    )
    source = _picture(40, 30, 0)
    if mode == "img2img":
        return pipe.img2img(source, list(j.request.prompts), **kwargs)
    if mode == "inpaint":
        return pipe.inpaint(source, _mask(), list(j.request.prompts), **kwargs)
    return pipe.style_transfer(
        source, list(j.request.prompts), positive_prompt=list(plan.positives or []) or None, mixer=plan.mixer, **kwargs
    )


def _mask() -> Image.Image:
    mask = Image.new("L", (40, 30), 0)
    mask.paste(255, (10, 5, 30, 25))
    return mask


def test_batched_edits_match_their_single_calls(demo):
    """Edits travel the stages as generations do: those that share a start (mode settings, strength, mask
    or not) run in one call per stage, each one equal to the library's editing call alone."""
    jobs = [
        _edit(demo, "img2img", 3, strength=0.5),
        _edit(demo, "img2img", 7, strength=0.5, n=2, negative_prompt="blurry", prompt="an oil painting"),
        _edit(demo, "inpaint", 5, mask=_mask()),
        _edit(demo, "style", 9, positive_prompt="bright colours", mixer=0.3),
        _edit(demo, "style", 11, positive_prompt="dark", mixer=0.3, prompt="ink"),
        _edit(demo, "img2img", 13, strength=0.75),  # another strength: its own call at stage I
        job(demo, prompt="a red cat", seed=3),
    ]
    done = work.cascade_batch(demo, [work.start(j) for j in jobs])
    assert [c.error for c in done] == [None] * len(jobs)
    assert [c.batched["stage1"] for c in done] == [3, 3, 1, 2, 2, 1, 1]
    # stage II: every img2img here keeps the mode's stage II strength (0.8), so all four rows meet there
    assert done[0].batched["stage2"] == done[5].batched["stage2"] == 4 and done[3].batched["stage2"] == 2
    # stage II rounds the 40x30 source's long side on its own: 64x88, not 4x stage I's 16x24
    assert done[0].image.shape[-2:] == (256, 352)
    for j, carry in zip(jobs[:-1], done[:-1], strict=True):
        alone = _alone(demo, j)
        assert carry.image.shape[-2:] == alone.images.shape[-2:]
        assert (to_unit(carry.image) - alone.images).abs().max().item() <= 1e-3, j.edit.mode


def test_padded_edit_batches_keep_each_image(demo):
    """A stage call padded up to a captured size: the filler copies an edit's start, its rows are dropped."""
    jobs = [_edit(demo, "inpaint", 5, mask=_mask()), _edit(demo, "inpaint", 6, mask=_mask(), prompt="ink")]
    carries = work.encode_batch(demo, [work.start(j) for j in jobs])
    plain = work.stage_batch(demo, 1, carries)
    padded = work.stage_batch(demo, 1, carries, sizes=(4,))
    assert [c.batched["stage1"] for c in padded] == [4, 4] and [c.batched["stage1"] for c in plain] == [2, 2]
    for a, b in zip(plain, padded, strict=True):
        assert torch.allclose(a.image, b.image, atol=1e-5)


def test_edit_jobs_refuse_bad_fields_by_name(demo):
    from ifengine.serve.api import ApiError

    for fields, param in (
        (dict(mode="inpaint"), "mask"),
        (dict(mode="img2img", strength=0.01), "strength"),
        (dict(mode="img2img", mixer=0.5, positive_prompt="x"), "positive_prompt"),
        (dict(mode="style", positive_prompt="x", mixer=2.0), "mixer"),
    ):
        mode = fields.pop("mode")
        with pytest.raises(ApiError) as err:
            _edit(demo, mode, 1, **fields)
        assert err.value.status == 400 and err.value.param == param, err.value.message
