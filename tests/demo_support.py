"""The tiny demo cascade for test modules that share one load, in the cache folder test_cli.py uses.

Plain generators (not fixtures) so each module declares its own module-scoped fixtures from them."""

from __future__ import annotations

from pathlib import Path

import pytest


def demo_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "ifengine-cache"


def demo_env(tmp_path_factory):
    """IFENGINE_CACHE pointing at the session's demo cache while the generator is open (the CLI reads it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IFENGINE_CACHE", str(demo_cache(tmp_path_factory)))
        yield demo_cache(tmp_path_factory)


def load_demo():
    """The demo cascade on the CPU (call with IFENGINE_CACHE set by ``demo_env``)."""
    from ifengine.pipeline.cascade import open_cascade

    return open_cascade(device="cpu")
