"""``stage.cancel.stop_when``: a run stops before the next denoising step once its check says so."""

import asyncio

import pytest

from ifengine.stage.cancel import Cancelled, stop_when


@pytest.fixture(scope="module")
def demo():
    from ifengine.pipeline.cascade import open_cascade

    return open_cascade(device="cpu")


def test_a_run_stops_within_one_step_of_its_check(demo):
    calls = []

    def check():
        calls.append(1)
        return len(calls) > 3  # let three steps run, stop before the fourth

    with stop_when(check), pytest.raises(Cancelled):
        demo("a cat", seed=0, steps=[50, 2, 2], progress=False)
    assert len(calls) == 4


def test_the_check_reaches_a_worker_thread_and_none_runs_to_the_end(demo):
    async def run():
        with stop_when(lambda: True):
            return await asyncio.to_thread(demo, "a cat", seed=0, steps=[50, 2, 2], progress=False)

    with pytest.raises(Cancelled):
        asyncio.run(run())
    out = demo("a cat", seed=0, steps=[2, 2, 2], progress=False)  # outside: no check, runs through
    assert len(out.images) == 1
