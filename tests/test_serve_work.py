"""The serving stages' batch work without Ray: a request batched with others gets its image alone.

Each request draws its noise from its own generator (stage.noise.GeneratorGroups) and carries the
generator's state from stage to stage, so the batched run must match one plain Cascade call per request
with that request's seed (<= 1e-3 max abs in [0, 1], CPU fp32), and the stage functions must really
have run the requests together.
"""

import dataclasses

import pytest
import torch

from ifengine.pipeline.images import to_unit
from ifengine.stage.noise import GeneratorGroups, randn
from ifengine.serve import work
from ifengine.serve.api import GenerationRequest, to_job
from ifengine.serve.config import Limits
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
