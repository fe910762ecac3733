"""The LoRA adapters of one U-Net, merged into its weights.

Why merged and not peft layers: peft wraps each adapted Linear/Conv2d in a LoRA module that adds the
low-rank path in the forward. Our U-Nets must stay plain modules (traced step graphs, ONNX/TensorRT export,
CUDA-graph capture all read ordinary weights), and a merged weight costs nothing per step. So the weight of
every adapted module is always ``base + lora_scale * sum(weight_i * delta_i)`` over the active adapters,
written in place (the parameter keeps its storage, so captured CUDA graphs see the new values); the base
weights of the adapted modules are kept to recompute from, never accumulated into (no drift).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from .format import LoraLayer
from ..errors import IFEngineError

log = logging.getLogger(__name__)


class LoraError(IFEngineError, ValueError):
    """A LoRA that does not fit this U-Net, or an adapter name that is not loaded."""


@dataclass(frozen=True)
class WeightUpdate:
    """One adapted weight before and after: what exported graphs and engines refit by."""

    name: str  # the parameter name, e.g. down_blocks.1.attentions.0.to_q.weight
    base: torch.Tensor
    weight: torch.Tensor


class UNetAdapters:
    """Named adapters of one U-Net, their active weights and the global ``lora_scale``."""

    def __init__(self, unet: nn.Module, label: str):
        self.unet, self.label = unet, label
        self.adapters: dict[str, dict[str, LoraLayer]] = {}
        self.active: dict[str, float] = {}
        self.lora_scale = 1.0
        self.enabled = True
        self.base: dict[str, torch.Tensor] = {}  # module name -> its weight before any LoRA
        self.sources: dict[str, str] = {}  # adapter name -> where it was read from (for image metadata)

    def add(self, name: str, layers: dict[str, LoraLayer], weight: float, source: str = "") -> None:
        if name in self.adapters:
            raise LoraError(f"{self.label} already has an adapter named {name!r}; pick another adapter_name")
        check_fits(self.unet, layers, self.label)
        self.adapters[name] = layers
        self.active[name] = float(weight)
        self.sources[name] = source
        for module in layers:
            if module not in self.base:
                self.base[module] = self.unet.get_submodule(module).weight.detach().clone()
        self.apply()

    def set_active(self, names: list[str], weights: list[float]) -> None:
        missing = [n for n in names if n not in self.adapters]
        if missing:
            raise LoraError(f"{self.label} has no adapter {missing[0]!r}; loaded: {sorted(self.adapters) or 'none'}")
        self.active = {n: float(w) for n, w in zip(names, weights, strict=True)}
        self.apply()

    def remove(self) -> None:
        """Base weights back; every adapter forgotten."""
        self.adapters.clear()
        self.active.clear()
        self.sources.clear()
        self.apply()
        self.base.clear()

    @torch.no_grad()
    def apply(self) -> None:
        for module, base in self.base.items():
            weight = base.float()
            if self.enabled:
                for name, w in self.active.items():
                    layer = self.adapters[name].get(module)
                    if layer is not None and w != 0:
                        weight = weight + (self.lora_scale * w) * layer.delta().to(weight.device)
            self.unet.get_submodule(module).weight.copy_(weight.to(base.dtype))
        log.debug("%s: adapters %s at lora_scale %s", self.label, self.active, self.lora_scale)

    def updates(self) -> list[WeightUpdate]:
        return [
            WeightUpdate(f"{m}.weight", base, self.unet.get_submodule(m).weight.detach())
            for m, base in self.base.items()
        ]


def check_fits(unet: nn.Module, layers: dict[str, LoraLayer], label: str) -> None:
    """Every LoRA module names a Linear/Conv2d of the U-Net with matching shapes, or one error lists them."""
    missing, wrong = [], []
    for module, layer in sorted(layers.items()):
        try:
            target = unet.get_submodule(module)
        except AttributeError:
            missing.append(module)
            continue
        problem = _shape_problem(target, layer)
        if problem:
            wrong.append(f"{module}: {problem}")
    if missing:
        raise LoraError(
            f"{len(missing)} LoRA modules are not in the {label} U-Net: {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''} (is this LoRA for another stage or model?)"
        )
    if wrong:
        raise LoraError(f"LoRA does not fit the {label} U-Net: " + "; ".join(wrong[:5]))


def _shape_problem(target: nn.Module, layer: LoraLayer) -> str | None:
    down, up = tuple(layer.down.shape), tuple(layer.up.shape)
    if type(target) is nn.Linear:
        want_down, want_up = (layer.rank, target.in_features), (target.out_features, layer.rank)
    elif type(target) is nn.Conv2d:
        want_down = (layer.rank, target.in_channels, *target.kernel_size)
        want_up = (target.out_channels, layer.rank, 1, 1)
    else:
        return f"is a {type(target).__name__}; LoRA applies to Linear and Conv2d weights (native, not int8)"
    if down != want_down or up != want_up:
        return f"lora_A {down} / lora_B {up}, expected {want_down} / {want_up}"
    return None
