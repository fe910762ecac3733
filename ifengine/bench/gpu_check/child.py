"""One section of the GPU check in its own process: ``python3 -m ifengine.bench.gpu_check.child``.

Arguments: the section's function as ``module:name``, the config as JSON, and the result file. The result file is rewritten
atomically each time the section saves a partial result and once at the end, so the parent finds the
last complete record whatever happens to this process.
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from pathlib import Path

from ...atomic import write_json_atomic
from .config import CheckConfig


def resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str]) -> int:
    target, config, out = argv
    logging.basicConfig(level=logging.WARNING)
    cfg, path = CheckConfig.from_json(config), Path(out)

    last: dict = {}

    def save(partial: dict) -> None:
        last["result"] = partial
        write_json_atomic(path, {"status": "partial", "result": partial}, default=str)

    try:
        result = resolve(target)(cfg, save)
    except BaseException as err:  # noqa: BLE001 - every failure is this section's result, never a crash
        trace = traceback.format_exc()
        error = f"{type(err).__name__}: {err}"[:2000]
        write_json_atomic(path, {"status": "error", "error": error, "trace": trace, **last}, default=str)
        return 1
    write_json_atomic(path, {"status": "ok", "result": result}, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
