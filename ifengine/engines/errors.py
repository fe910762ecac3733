"""Errors of the engine builder, the engine cache and the TensorRT runtime.

Every problem a user can fix is a ``ValueError`` (the CLI prints it as one line, exit status 2) and its
message names the command that fixes it. A missing TensorRT is an ``ImportError`` with install steps.
"""

from __future__ import annotations
from ..errors import IFEngineError

INSTALL_HINT = (
    "TensorRT is not installed. `ifengine build` and the TensorRT backend need TensorRT 10.1+ (10.x or 11.x), "
    "an NVIDIA GPU and its driver: install with `pip install 'ifengine[gpu]'` (or `pip install "
    "'tensorrt>=10.1,<12'`) on a machine that can reach NVIDIA's package host (pypi.nvidia.com), or use the "
    "TensorRT container (nvcr.io/nvidia/tensorrt). `ifengine build RECIPE --dry-run` shows the plan without it."
)


class TensorRTUnavailable(IFEngineError, ImportError):
    """TensorRT (or a GPU it can use) is missing; the message says how to install it."""

    def __init__(self, detail: str = ""):
        super().__init__(f"{INSTALL_HINT}{' (' + detail + ')' if detail else ''}")


class RecipeError(IFEngineError, ValueError):
    """A build recipe is malformed; the message names the file, the key and the bad value."""


class TensorRTError(IFEngineError, RuntimeError):
    """TensorRT refused to parse, build, load or run something; the message carries its own errors."""


class EngineCacheError(IFEngineError, ValueError):
    """An engine cannot be used; the message names the build command that makes a fresh one."""


class EngineMissing(EngineCacheError):
    """No engine was built for this component, GPU and TensorRT version."""


class EngineCorrupt(EngineCacheError):
    """The engine file or its manifest is damaged (checksum, size or JSON)."""


class EngineForeign(EngineCacheError):
    """The engine was built for another GPU or TensorRT version."""


class EngineStale(EngineCacheError):
    """The engine was built from a graph, precision or profile that is no longer the current one."""
