"""One section of the GPU check in its own process, forked from a server that imported the libraries once.

``multiprocessing``'s forkserver: the server process imports torch, transformers' T5/CLIP and the
engine (``PRELOAD``) once, single-threaded and without touching CUDA, and forks one fresh child per
section. Each child starts in its own session (so the parent can kill it and anything it started),
sends its output to the section's log and rewrites the result file atomically each time the section
saves a partial result and once at the end: the parent finds the last complete record whatever happens
to this process. No CUDA context exists before the fork, so each child initialises its own.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from pathlib import Path

from ...atomic import write_json_atomic
from .config import CheckConfig

# imported once by the fork server (an ImportError there is ignored; the child then imports it itself)
PRELOAD = [
    "torch",
    "transformers.models.t5.modeling_t5",
    "transformers.models.clip.modeling_clip",
    "ifengine.bench.gpu_check.registry",
    "ifengine.pipeline.cascade",
    "ifengine.runtime",
    "ifengine.bench.fullsize",
]


def ready() -> None:
    """The warm-up child: returns at once; starting it makes the fork server import ``PRELOAD``."""


def resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def run_in_child(target: str, config: str, out: str, log_path: str, paths: list[str]) -> None:
    """The child's entry point (a ``multiprocessing`` target): never raises, always leaves a record."""
    os.setsid()  # its own process group: the parent's kill at the deadline takes everything it started
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.path[:0] = [p for p in paths if p not in sys.path]  # the parent's, where the server's were older
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, force=True)
    os._exit(run_section(target, config, Path(out)))


def run_section(target: str, config: str, path: Path) -> int:
    cfg, last = CheckConfig.from_json(config), {}

    def save(partial: dict) -> None:
        last["result"] = partial
        write_json_atomic(path, {"status": "partial", "result": partial}, default=str)

    try:
        result = resolve(target)(cfg, save)
    except BaseException as err:  # noqa: BLE001 - every failure is this section's result, never a crash
        trace = traceback.format_exc()
        sys.stderr.write(trace)
        error = f"{type(err).__name__}: {err}"[:2000]
        write_json_atomic(path, {"status": "error", "error": error, "trace": trace, **last}, default=str)
        return 1
    write_json_atomic(path, {"status": "ok", "result": result}, default=str)
    return 0
