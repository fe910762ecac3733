"""Weight-only int8 for the U-Nets: Linear and Conv2d weights as int8 with one scale per output channel.

Why: under an 8 GiB budget IF-I-XL's 8.0 GiB of fp16 weights cannot stay on the device, and streaming
the part that does not fit re-reads ~2 GiB over PCIe every step. In int8 they take 4.0 GiB and stay.
Activations keep the cascade's dtype: each layer dequantises its weight just before its matmul or
convolution (a transient the size of that one layer's weight), so the numerics are those of the fp16 net
with every weight rounded to 255 symmetric levels of its output channel.

Why not torchao: its int8 weight-only config quantises ``nn.Linear`` only, and Conv2d holds 73% of
IF-I-XL's parameters (72% of IF-II-L's). Its tensor subclasses also could not be packed into the byte
buffers the offloader moves weights with; these modules keep plain tensors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)
QMAX = 127  # symmetric: -127..127, so that negating a weight never overflows
SKIP_NAMES = ("conv_in", "conv_out")  # the layers that touch pixels directly stay in full precision
MIN_NUMEL = 1024  # below this a layer saves too little to be worth its rounding


def quantize_per_channel(weight: torch.Tensor, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, scale per output channel) with ``weight ~= q * scale`` broadcast over dim 0."""
    flat = weight.detach().float().reshape(weight.shape[0], -1)
    # an all-zero channel gets scale 1 (any positive value reproduces zeros exactly)
    amax = flat.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    q = torch.round(flat / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q.reshape(weight.shape), scale.to(scale_dtype)


def _frozen(t: torch.Tensor) -> nn.Parameter:
    # Parameters (not buffers) so that .to(), the offloader and the planner treat them as weights
    return nn.Parameter(t, requires_grad=False)


class _Int8Weight(nn.Module):
    """Holds ``qweight`` (int8, the float layer's shape) and ``scale`` (one per output channel)."""

    def _set_weight(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        q, scale = quantize_per_channel(weight, weight.dtype)
        self.qweight = _frozen(q)
        self.scale = _frozen(scale)
        self.bias = None if bias is None else _frozen(bias.detach())

    def dequantized(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.qweight.dim() - 1)
        # ONE elementwise kernel: type promotion (int8 x float -> float) casts each int8 on the fly, so the
        # pass reads 1 byte and writes one float per weight (3 bytes in fp16) where a cast then an
        # in-place scale read and wrote the float weight twice (~7-9 bytes). The output follows qweight's
        # memory format (channels-last stays channels-last), and the product is rounded once, exactly as
        # before: bit-identical (tests/test_runtime_review.py).
        return torch.mul(self.qweight, self.scale.view(shape))


class Int8Linear(_Int8Weight):
    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self._set_weight(layer.weight, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


class Int8Conv2d(_Int8Weight):
    def __init__(self, layer: nn.Conv2d):
        super().__init__()
        if layer.padding_mode != "zeros":
            raise ValueError(f"int8 Conv2d supports padding_mode 'zeros' only, got {layer.padding_mode!r}")
        self.stride, self.padding = layer.stride, layer.padding
        self.dilation, self.groups = layer.dilation, layer.groups
        self._set_weight(layer.weight, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dequantized(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{tuple(self.qweight.shape)}, stride={self.stride}, padding={self.padding}, int8 weights"


_REPLACEMENTS = {nn.Linear: Int8Linear, nn.Conv2d: Int8Conv2d}


@dataclass(frozen=True)
class QuantizeReport:
    layers: int  # layers replaced
    bytes_before: int
    bytes_after: int


def quantize_module(
    module: nn.Module, *, skip: tuple[str, ...] = SKIP_NAMES, min_numel: int = MIN_NUMEL, progress: str | None = None
) -> QuantizeReport:
    """Replace every big-enough Linear/Conv2d of ``module`` in place by its int8 weight-only twin.

    Works on meta modules too (the planner sizes int8 components that way). Layers whose own name is in
    ``skip`` or whose weight has fewer than ``min_numel`` elements keep their precision. ``progress``
    names a progress bar (a full-size U-Net takes seconds to a minute on a CPU).
    """
    todo = [
        (parent, name, child)
        for _, parent in module.named_modules()
        for name, child in parent.named_children()
        if type(child) in _REPLACEMENTS and name not in skip and child.weight.numel() >= min_numel
    ]
    before = after = 0
    for parent, name, child in tqdm(todo, desc=progress, disable=progress is None, leave=False):
        new = _REPLACEMENTS[type(child)](child)
        before += _bytes(child)
        after += _bytes(new)
        setattr(parent, name, new)
    layers = len(todo)
    if layers == 0:
        log.warning(
            "quantize_module: no Linear or Conv2d layer of %s was big enough to quantise", type(module).__name__
        )
    return QuantizeReport(layers, before, after)


def is_quantized(module: nn.Module) -> bool:
    return any(isinstance(m, _Int8Weight) for m in module.modules())


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a module computes in: its first floating-point parameter's (int8 weights are not)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    raise ValueError(f"{type(module).__name__} has no floating-point parameter")


def largest_dequantized_bytes(module: nn.Module) -> int:
    """The biggest transient a forward creates by dequantising one layer (0 when nothing is int8)."""
    sizes = [m.qweight.numel() * m.scale.element_size() for m in module.modules() if isinstance(m, _Int8Weight)]
    return max(sizes, default=0)


def _bytes(layer: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in layer.parameters())
