"""Which graph each (component, precision) pair exports, and the fp16 rules that keep it finite.

- fp32: the torch module as loaded.
- fp16 / bf16: the module cast to that dtype before tracing, so every weight and activation in the graph
  is typed in it (what a strongly typed TensorRT build needs). Two exceptions, both numerical: T5's FFN
  output projection ``wo`` stays fp32 in fp16 graphs (T5 v1.1 activations pass 65504 there; the residual
  stream after it is fp32 too), and the x4 VAE decoder, whose config sets ``force_upcast``, computes in
  fp32 when fp16 is asked for (as diffusers and our torch backend do). bf16 graphs are opset 22: earlier
  opsets do not allow bf16 Conv, pooling or instance norm.
- int8: the fp32 graph with explicit symmetric Q/DQ (``quantize.py``): static, per-channel weights and
  calibrated activations for U-Nets and step graphs; weight-only for T5.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..dtypes import dtype_name, torch_dtype
from ..facts import INT8_COMPONENTS, INT8_WEIGHT_ONLY, PRECISIONS
from .sources import ComponentSource

log = logging.getLogger(__name__)

DEFAULT_OPSET = 19
BF16_OPSET = 22


@dataclass(frozen=True)
class Variant:
    """How one precision of one component is exported."""

    precision: str
    weights: torch.dtype  # dtype the module is loaded in and traced with
    io_dtype: str  # what the spec's "model" dtype becomes in this graph
    opset: int
    quantize: str | None = None  # "static" (Q/DQ on weights and activations) or "weight_only"
    note: str = ""


def supports(component: str, precision: str) -> bool:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return precision != "int8" or component in INT8_COMPONENTS


def variant(source: ComponentSource, precision: str, opset: int = DEFAULT_OPSET) -> Variant:
    if not supports(source.name, precision):
        raise ValueError(f"{source.name} has no {precision} export (int8 covers the U-Nets, step graphs and T5)")
    weights = torch_dtype(precision)
    note = ""
    if source.name == "vae_decoder" and precision == "fp16" and source.config["vae"].get("force_upcast", True):
        weights, note = torch.float32, "force_upcast: the x4 VAE decoder overflows in fp16, so it computes in fp32"
    if source.name == "t5" and precision == "fp16":
        note = "T5 FFN output projections (wo) and the residual stream after them stay fp32 (fp16 overflow)"
    quantize = None
    if precision == "int8":
        quantize = "weight_only" if source.name in INT8_WEIGHT_ONLY else "static"
    return Variant(
        precision, weights, dtype_name(weights), BF16_OPSET if precision == "bf16" else opset, quantize, note
    )


def keep_t5_ffn_output_fp32(model: nn.Module) -> int:
    """Put every T5 FFN ``wo`` in fp32; transformers' T5 then casts its input up and the residual add
    promotes to fp32. Returns how many layers were changed."""
    count = 0
    for module in model.modules():
        wo = getattr(module, "wo", None)
        if isinstance(wo, nn.Linear):
            wo.float()
            count += 1
    log.debug("kept %d T5 FFN output projections in fp32", count)
    return count
