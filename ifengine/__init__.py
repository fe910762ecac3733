"""ifengine: a lean inference engine for the DeepFloyd IF text-to-image cascade.

The names below load on first use (``__getattr__``): ``import ifengine`` stays cheap and imports no torch
until a cascade is made, so the CLI's ``--help`` and tools that read configs or engine manifests start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Cascade": "ifengine.pipeline.cascade",
    "CascadeOutput": "ifengine.pipeline.cascade",
    "open_cascade": "ifengine.pipeline.cascade",
    "ModelSource": "ifengine.pipeline.source",
    "RequestError": "ifengine.stage.options",
    "IFEngineError": "ifengine.errors",
    "RuntimeOptions": "ifengine.runtime.options",
    "DiffusionPipeline": "ifengine.pipeline.diffusers_pipes",
    "IFPipeline": "ifengine.pipeline.diffusers_pipes",
    "IFImg2ImgPipeline": "ifengine.pipeline.diffusers_pipes",
    "IFInpaintingPipeline": "ifengine.pipeline.diffusers_pipes",
    "IFSuperResolutionPipeline": "ifengine.pipeline.diffusers_pipes",
    "IFImg2ImgSuperResolutionPipeline": "ifengine.pipeline.diffusers_pipes",
    "IFInpaintingSuperResolutionPipeline": "ifengine.pipeline.diffusers_pipes",
    "StableDiffusionUpscalePipeline": "ifengine.pipeline.diffusers_pipes",
    "PromptEmbeds": "ifengine.pipeline.embeds",
}
__all__ = [
    "DiffusionPipeline",
    "IFPipeline",
    "IFImg2ImgPipeline",
    "IFInpaintingPipeline",
    "IFSuperResolutionPipeline",
    "IFImg2ImgSuperResolutionPipeline",
    "IFInpaintingSuperResolutionPipeline",
    "StableDiffusionUpscalePipeline",
    "PromptEmbeds",
    "Cascade",
    "CascadeOutput",
    "IFEngineError",
    "ModelSource",
    "RequestError",
    "RuntimeOptions",
    "open_cascade",
    "__version__",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from .pipeline.cascade import Cascade, CascadeOutput, open_cascade
    from .errors import IFEngineError
    from .pipeline.source import ModelSource
    from .pipeline.embeds import PromptEmbeds
    from .pipeline.diffusers_pipes import (
        DiffusionPipeline,
        IFPipeline,
        IFImg2ImgPipeline,
        IFInpaintingPipeline,
        IFSuperResolutionPipeline,
        IFImg2ImgSuperResolutionPipeline,
        IFInpaintingSuperResolutionPipeline,
        StableDiffusionUpscalePipeline,
    )
    from .runtime.options import RuntimeOptions
    from .stage.options import RequestError


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ifengine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
