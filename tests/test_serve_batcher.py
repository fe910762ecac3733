"""The replicas' batcher (serve/batcher.py) on a plain asyncio loop: batches cut when the replica is free."""

import asyncio

import pytest

from ifengine.serve.batcher import Batcher


class Recorder:
    """A batch function that records each batch and takes ``seconds`` to run it; the first batch also
    waits for ``gate`` (set by the test once it has queued what it wants queued behind that batch)."""

    def __init__(self, seconds: float = 0.0, fail_on=None, gate: asyncio.Event | None = None):
        self.seconds, self.fail_on, self.gate, self.batches = seconds, fail_on, gate, []

    async def __call__(self, items, extras=None):
        self.batches.append(list(items))
        if self.gate is not None and len(self.batches) == 1:
            await self.gate.wait()
        await asyncio.sleep(self.seconds)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [(i, e) for i, e in zip(items, extras, strict=True)] if extras is not None else [i * 10 for i in items]


def gated(max_size: int, wait_s: float):
    """A batcher whose first batch runs until the test opens the gate."""
    gate = asyncio.Event()
    record = Recorder(gate=gate)
    return gate, record, Batcher(record, max_size=max_size, wait_s=wait_s)


def test_requests_that_queue_while_a_batch_runs_make_the_next_batch_whole():
    async def scenario():
        gate, record, batcher = gated(max_size=4, wait_s=0.01)
        first = asyncio.ensure_future(batcher(0))
        await asyncio.sleep(0.05)  # the first batch (just item 0) is running now
        rest = []
        for i in range(1, 9):  # arrive one by one, far apart compared with wait_s
            rest.append(asyncio.ensure_future(batcher(i)))
            await asyncio.sleep(0.015)
        gate.set()
        results = await asyncio.gather(first, *rest)
        return record.batches, results

    batches, results = asyncio.run(scenario())
    assert results == [i * 10 for i in range(9)]
    # Ray's @serve.batch would have cut [1], [2], ... in 10 ms windows while [0] ran
    assert batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]


def test_a_lone_request_waits_at_most_wait_s_for_companions():
    async def scenario():
        record = Recorder()
        batcher = Batcher(record, max_size=8, wait_s=0.1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await batcher(3) == 30
        alone = loop.time() - start
        pair = await asyncio.gather(batcher(1), batcher(2))
        return record.batches, alone, pair

    batches, alone, pair = asyncio.run(scenario())
    assert 0.1 <= alone < 1.0 and pair == [10, 20]
    assert batches == [[3], [1, 2]]


def test_cancelled_callers_are_dropped_before_their_batch_is_cut():
    async def scenario():
        gate, record, batcher = gated(max_size=4, wait_s=0.0)
        busy = asyncio.ensure_future(batcher(0))
        await asyncio.sleep(0.02)
        left = asyncio.ensure_future(batcher(1))
        stays = asyncio.ensure_future(batcher(2))
        await asyncio.sleep(0.02)
        left.cancel()  # a client that went away while it waited
        await asyncio.sleep(0)
        gate.set()
        return await asyncio.gather(busy, stays), left.cancelled(), record.batches

    results, cancelled, batches = asyncio.run(scenario())
    assert results == [0, 20] and cancelled and batches == [[0], [2]]


def test_a_failing_batch_fails_only_its_callers_and_the_next_batch_runs():
    async def scenario():
        record = Recorder(seconds=0.05, fail_on=1)
        batcher = Batcher(record, max_size=2, wait_s=0.0)
        calls = [asyncio.ensure_future(batcher(i)) for i in range(4)]
        return await asyncio.gather(*calls, return_exceptions=True), record.batches

    results, batches = asyncio.run(scenario())
    assert batches == [[0, 1], [2, 3]]
    assert [type(r).__name__ for r in results[:2]] == ["ValueError"] * 2 and "bad item 1" in str(results[0])
    assert results[2:] == [20, 30]


def test_several_arguments_arrive_as_one_list_each():
    async def scenario():
        batcher = Batcher(Recorder(), max_size=4, wait_s=0.01)
        return await asyncio.gather(batcher("a", 1), batcher("b", None))

    assert asyncio.run(scenario()) == [("a", 1), ("b", None)]


def test_a_batch_returning_the_wrong_count_is_an_error_for_its_callers():
    async def short(items):
        return items[:-1]

    async def scenario():
        batcher = Batcher(short, max_size=4, wait_s=0.01)
        return await asyncio.gather(batcher(1), batcher(2), return_exceptions=True)

    results = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) and "returned 1 results" in str(r) for r in results)


@pytest.mark.parametrize(("size", "wait", "message"), [(0, 0.1, "max_size"), (2.5, 0.1, "max_size"), (2, -1, "wait_s")])
def test_bad_settings_are_refused(size, wait, message):
    with pytest.raises(ValueError, match=message):
        Batcher(Recorder(), max_size=size, wait_s=wait)
