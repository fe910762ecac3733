"""A replica's batches, cut when the replica is free to run them.

Ray Serve's ``@serve.batch`` (2.60) cuts a batch ``batch_wait_timeout_s`` after its first request and at
once starts collecting the next, while the first still runs: under load every batch is what arrived in
one wait window, not what queued while the replica was busy. In ``benchmarks/serve_load.py`` (one core,
concurrency 16, max batch 8) the whole-cascade replica ran batches of 4 on average with 8 or more
requests waiting. Here a batch is cut only once the previous one has finished: it takes what has queued
(up to the maximum), and waits for companions only until its oldest request has waited
``wait_s``, so a lone request is delayed at most that long and a busy replica not at all.

Callers that are cancelled while they wait (a client that left, a deadline passed) are dropped before
their batch is cut, as Ray drops them; one that leaves while its batch runs is ``stopping.Gone``'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class _Waiting:
    args: tuple
    future: asyncio.Future
    since: float  # loop time it arrived


class Batcher:
    """``await batcher(*args)`` runs ``run(*columns)`` on a batch of such calls (one list per positional
    argument, as ``@serve.batch`` passes them) and returns this call's item of the list it returns."""

    def __init__(self, run: Callable[..., Awaitable[list]], max_size: int = 4, wait_s: float = 0.05):
        if not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be a whole number >= 1, got {max_size!r}")
        if not wait_s >= 0:
            raise ValueError(f"wait_s must be >= 0 seconds, got {wait_s!r}")
        self.run, self.max_size, self.wait_s = run, max_size, float(wait_s)
        self._queue: deque[_Waiting] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def __call__(self, *args):
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._arrived = asyncio.Event()
            self._task = loop.create_task(self._serve())
        waiting = _Waiting(args, loop.create_future(), loop.time())
        self._queue.append(waiting)
        self._arrived.set()
        return await waiting.future  # cancelling the caller cancels the future: its batch skips it

    async def _serve(self) -> None:
        try:
            while True:
                batch = await self._next_batch()
                await self._run(batch)
        finally:  # the loop only ends with the replica's event loop; nobody may wait forever
            _fail(list(self._queue), RuntimeError("the replica's batch loop stopped"))

    async def _next_batch(self) -> list[_Waiting]:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if not self._queue:
                await self._wait_arrival(None)
                continue
            left = self._queue[0].since + self.wait_s - loop.time()
            if len(self._queue) >= self.max_size or left <= 0:
                return [self._queue.popleft() for _ in range(min(self.max_size, len(self._queue)))]
            await self._wait_arrival(left)

    async def _wait_arrival(self, timeout: float | None) -> None:
        self._arrived.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), timeout)

    def _drop_cancelled(self) -> None:
        if any(w.future.done() for w in self._queue):
            self._queue = deque(w for w in self._queue if not w.future.done())

    async def _run(self, batch: list[_Waiting]) -> None:
        columns = [list(col) for col in zip(*(w.args for w in batch), strict=True)]
        try:
            results = await self.run(*columns)
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} requests returned {len(results)} results")
        except Exception as err:  # noqa: BLE001 - every caller of the batch gets the error, the loop goes on
            log.warning("a batch of %d requests failed: %s: %s", len(batch), type(err).__name__, err)
            _fail(batch, err)
            return
        except BaseException:  # the loop itself is cancelled (the replica stops): its callers must not hang
            _fail(batch, RuntimeError("the replica stopped while this batch ran"))
            raise
        for w, result in zip(batch, results, strict=True):
            if not w.future.done():
                w.future.set_result(result)


def _fail(batch: list[_Waiting], err: BaseException) -> None:
    for w in batch:
        if not w.future.done():
            w.future.set_exception(err)
