"""LoRA for the cascade's U-Nets: read diffusers/peft LoRA files, merge adapters, refit exported weights."""

from .adapters import LoraError, UNetAdapters, WeightUpdate
from .api import LoraMixin, lora_file
from .format import LoraFormatError, LoraLayer, parse

__all__ = [
    "LoraError",
    "LoraFormatError",
    "LoraLayer",
    "LoraMixin",
    "UNetAdapters",
    "WeightUpdate",
    "lora_file",
    "parse",
    "refit_artifact",
    "refit_onnx",
]


def __getattr__(name: str):
    # the ONNX refit needs the [export] extra (onnx); importing ifengine must not
    if name in ("refit_artifact", "refit_onnx"):
        from ..errors import require_extra

        require_extra(("onnx",), "export", "refitting exported graphs")
        from . import onnx_weights

        return getattr(onnx_weights, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
