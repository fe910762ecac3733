"""The tiny demo cascade for test modules that share one load: the same cache folder test_cli.py uses."""

from __future__ import annotations

from pathlib import Path

import pytest


def demo_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "ifengine-cache"


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory):
    """IFENGINE_CACHE pointing at the session's demo cache for the whole module (the CLI reads it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IFENGINE_CACHE", str(demo_cache(tmp_path_factory)))
        yield demo_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def demo_pipe(demo_env):
    """The demo cascade on the CPU, loaded once per module; limits set by a test are reset after it."""
    from ifengine.demo import demo_cascade

    pipe = demo_cascade()
    yield pipe
