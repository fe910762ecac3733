"""The LoRA adapters of one U-Net, merged into its weights, with diffusers'/peft's state model.

Why merged and not peft layers: peft wraps each adapted Linear/Conv2d in a LoRA module that adds the
low-rank path in the forward. Our U-Nets must stay plain modules (traced step graphs, ONNX/TensorRT export,
CUDA-graph capture all read ordinary weights), and a merged weight costs nothing per step. So the weight of
every adapted module is recomputed from its kept base weight (never accumulated into: no drift) whenever
the state changes, and written in place (the parameter keeps its storage: captured CUDA graphs see it).

The state is the one diffusers' pipelines keep in peft's layers, so the same calls give the same weights:
- each adapter has a scale (peft's ``scaling`` over alpha/r): its ``set_adapters`` weight, multiplied by
  every ``fuse_lora(lora_scale)`` it was active for (peft's ``scale_layer``; ``unfuse_lora`` keeps it);
- the active set: the adapter loaded last (loading activates only it), or what ``set_adapters`` names;
- the fused adapters, each at the scale it had when ``fuse_lora`` merged it;
- a per-call scale (``cross_attention_kwargs={"scale": s}``), multiplying the active, unfused adapters.
Per module, as peft's layers compute: disabled -> base; a module holding a fused adapter -> base + the
fused deltas only (a merged peft layer skips its unmerged path); else base + call scale * the active ones.
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
    """Named adapters of one U-Net and their diffusers state (see the module doc)."""

    def __init__(self, unet: nn.Module, label: str):
        self.unet, self.label = unet, label
        self.adapters: dict[str, dict[str, LoraLayer]] = {}
        self.scales: dict[str, float] = {}  # adapter -> peft's scaling over alpha/r
        self.active: list[str] = []
        self.fused: dict[str, float] = {}  # adapter -> the scale fuse_lora merged it at
        self.call_scale = 1.0
        self.enabled = True
        self.base: dict[str, torch.Tensor] = {}  # module name -> its weight before any LoRA
        self.sources: dict[str, str] = {}  # adapter name -> where it was read from, as given (image metadata)
        self.files: dict[str, str] = {}  # adapter name -> its file's name ("" for a state dict)

    def add(self, name: str, layers: dict[str, LoraLayer], weight: float, source: str = "", file: str = "") -> None:
        if name in self.adapters:
            raise LoraError(f"{self.label} already has an adapter named {name!r}; pick another adapter_name")
        check_fits(self.unet, layers, self.label)
        self.adapters[name] = layers
        self.scales[name] = float(weight)
        self.active = [name]  # diffusers: the adapter loaded last is the only active one
        self.sources[name], self.files[name] = source, file
        for module in layers:
            if module not in self.base:
                self.base[module] = self.unet.get_submodule(module).weight.detach().clone()
        self.apply()

    def set_active(self, names: list[str], weights: list[float]) -> None:
        self._check_names(names)
        self.active = list(names)
        self.scales.update(zip(names, map(float, weights), strict=True))
        self.apply()

    def fuse(self, lora_scale: float, names: list[str] | None = None) -> None:
        """peft's order: the active adapters' scales are multiplied first, then ``names`` (default: the
        active ones) are merged at the scales they then have; already fused ones stay as they were."""
        if names is not None:
            self._check_names(names)
        for name in self.active:
            self.scales[name] *= lora_scale
        for name in self.active if names is None else names:
            self.fused.setdefault(name, self.scales[name])
        self.apply()

    def unfuse(self) -> None:
        """Merged adapters taken out again; their scales stay what fusing made them (diffusers' too)."""
        self.fused.clear()
        self.apply()

    def delete(self, names: list[str]) -> None:
        """Forget ``names``; a fused one stays in the weights (peft leaves merged weights merged). When no
        active adapter is left, the first remaining one by name becomes active, as peft does."""
        self._check_names(names)
        self._bake([n for n in names if n in self.fused])
        for name in names:
            for table in (self.adapters, self.scales, self.sources, self.files, self.fused):
                table.pop(name, None)
        was_active = bool(self.active)
        self.active = [n for n in self.active if n not in names]
        if was_active and not self.active and self.adapters:
            self.active = sorted(self.adapters)[:1]
        self.apply()

    def remove(self) -> None:
        """Every adapter forgotten; what ``fuse_lora`` merged stays in the weights (diffusers'
        ``unload_lora_weights`` keeps fused weights: fuse, unload, save is its way to bake a LoRA in)."""
        self._bake(list(self.fused) if self.enabled else [])
        self.adapters.clear()
        self.scales.clear()
        self.active.clear()
        self.sources.clear()
        self.files.clear()
        self.apply()
        self.base.clear()

    def weights(self) -> dict[str, float]:
        """The factor each adapter is applied with now (what image metadata records)."""
        if not self.enabled:
            return {}
        live = {n: self.call_scale * self.scales[n] for n in self.active if n not in self.fused}
        return {**dict(self.fused), **live}

    @torch.no_grad()
    def apply(self) -> None:
        for module, base in self.base.items():
            self.unet.get_submodule(module).weight.copy_(self._weight(module, base).to(base.dtype))
        log.debug("%s: active %s, scales %s, fused %s", self.label, self.active, self.scales, self.fused)

    def _weight(self, module: str, base: torch.Tensor) -> torch.Tensor:
        weight = base.float()
        for name, scale in self._terms(module):
            if scale != 0:
                weight = weight + scale * self.adapters[name][module].delta().to(weight.device)
        return weight

    def _terms(self, module: str) -> list[tuple[str, float]]:
        if not self.enabled:
            return []
        fused = [(n, s) for n, s in self.fused.items() if module in self.adapters[n]]
        if fused:
            return fused
        return [(n, self.call_scale * self.scales[n]) for n in self.active if module in self.adapters[n]]

    @torch.no_grad()
    def _bake(self, names: list[str]) -> None:
        """Make ``names``' fused deltas part of the base weights."""
        for module, base in self.base.items():
            for name in names:
                layer = self.adapters[name].get(module)
                if layer is not None:
                    base.copy_((base.float() + self.fused[name] * layer.delta().to(base.device)).to(base.dtype))
        for name in names:
            self.fused.pop(name)

    def _check_names(self, names: list[str]) -> None:
        missing = [n for n in names if n not in self.adapters]
        if missing:
            raise LoraError(f"{self.label} has no adapter {missing[0]!r}; loaded: {sorted(self.adapters) or 'none'}")

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
