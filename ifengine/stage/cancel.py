"""Stopping a run between denoising steps: a per-call check the stage loops read before every step.

A server that learns its client left (or its deadline passed) must free the replica within one step,
not after the whole cascade. ``stop_when(check)`` sets ``check`` (a callable returning True to stop) for
the code that runs inside it, in this thread and in any thread started with ``asyncio.to_thread`` from it
(a context variable travels with the context). The loops call ``raise_if_stopped()`` before each step:
one Python call and no tensor read, so the GPU loops still never synchronise the host. Without a check,
nothing stops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from ..errors import IFEngineError

_CHECK: ContextVar[Callable[[], bool] | None] = ContextVar("ifengine_stop_check", default=None)


class Cancelled(IFEngineError):
    """The run was stopped between steps because its stop check said so (client gone, deadline passed)."""


@contextlib.contextmanager
def stop_when(check: Callable[[], bool] | None) -> Iterator[None]:
    token = _CHECK.set(check)
    try:
        yield
    finally:
        _CHECK.reset(token)


def raise_if_stopped() -> None:
    check = _CHECK.get()
    if check is not None and check():
        raise Cancelled("stopped between denoising steps: the request was cancelled or ran past its deadline")
