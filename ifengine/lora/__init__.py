"""LoRA for the cascade's U-Nets: read diffusers/peft LoRA files, merge adapters, refit exported weights."""

from .adapters import LoraError, UNetAdapters, WeightUpdate
from .api import LoraMixin, lora_file
from .format import LoraFormatError, LoraLayer, parse
from .onnx_weights import refit_artifact, refit_onnx

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
