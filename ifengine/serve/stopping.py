"""Freeing a replica when nobody waits for its work: the client left or the request's deadline passed.

Ray Serve cancels a replica's request task when its caller is cancelled (the HTTP client disconnected,
or the ingress's deadline ``Limits.request_timeout_s`` ran out), and drops cancelled requests that still
wait for a batch. A batch already running in a worker thread is not a task Ray can cancel, so each
replica notes which of its requests were cancelled, and the running batch's stop check
(``stage.cancel.stop_when``, read before every denoising step) stops it once every request in it is gone.
A batch with one caller still waiting runs on for that caller.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable

from ..stage.cancel import stop_when


class Ticket:
    """A key for a request whose argument cannot be weakly referenced (an edit's keyword dict)."""


class Gone:
    """The requests of one replica whose callers were cancelled (weakly held: they leave with their objects)."""

    def __init__(self):
        self.refs: dict[int, weakref.ref] = {}  # id -> weak reference (a Carry is not hashable)

    def gone(self, key: object) -> bool:
        ref = self.refs.get(id(key))
        return ref is not None and ref() is key

    async def track(self, key: object, call: Awaitable):
        try:
            return await call
        except asyncio.CancelledError:
            self.refs = {i: r for i, r in self.refs.items() if r() is not None}  # drop the freed ones
            self.refs[id(key)] = weakref.ref(key)
            raise

    async def in_thread(self, keys: list, fn: Callable, *args):
        """``fn(*args)`` in a worker thread that stops between steps once every caller of ``keys`` is gone."""
        with stop_when(lambda: all(self.gone(k) for k in keys)):
            return await asyncio.to_thread(fn, *args)

    async def call(self, fn: Callable, *args):
        """One unbatched request: its thread stops when its caller is cancelled."""
        key = Ticket()
        task = asyncio.ensure_future(self.in_thread([key], fn, *args))
        return await self.track(key, asyncio.shield(task))  # the task runs on to see the stop
