"""diffusers' LoRA methods on the cascade: load_lora_weights, set_adapters, fuse_lora, unfuse_lora, ...

One difference from diffusers, by design (see adapters.py): adapters are merged into the U-Net weights as
soon as they are loaded or re-weighted, never run as extra layers. The images are the ones diffusers makes
before and after ``fuse_lora`` (they agree there too); ``fuse_lora(lora_scale)`` scales the merged LoRA as
diffusers' does, and ``unfuse_lora()`` goes back to the state right after loading (scale 1), as diffusers'
unfused layers are. ``disable_lora()``/``unload_lora_weights()`` give the base weights back.
"""

from __future__ import annotations

import logging
from pathlib import Path
from collections.abc import Mapping, Sequence

import torch

from .adapters import LoraError, UNetAdapters, WeightUpdate
from .format import WEIGHT_NAME, parse, read_file

log = logging.getLogger(__name__)
STAGES = (1, 2, 3)


def lora_file(source: str | Path, weight_name: str | None = None) -> Path:
    """A .safetensors file, a folder holding one (``weight_name`` or diffusers' default), or a Hub id."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        found = path / (weight_name or WEIGHT_NAME)
        if found.is_file():
            return found
        files = sorted(path.glob("*.safetensors"))
        if weight_name is None and len(files) == 1:
            return files[0]
        raise LoraError(f"{path} holds no {weight_name or WEIGHT_NAME}; pass weight_name= (found: {files or 'none'})")
    text = str(source)
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise LoraError(f"{text!r} is neither a LoRA file or folder nor a Hub id like 'user/my-if-lora'")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(text, weight_name or WEIGHT_NAME))


class LoraMixin:
    """The LoRA methods of ``Cascade``; per-stage state lives in ``self._lora`` (stage -> UNetAdapters)."""

    def load_lora_weights(
        self,
        source: str | Path | Mapping[str, torch.Tensor],
        stage: int = 1,
        adapter_name: str | None = None,
        scale: float = 1.0,
        weight_name: str | None = None,
    ) -> str:
        """Load a LoRA (file, folder, Hub id, or a state dict) into stage ``stage``'s U-Net as adapter
        ``adapter_name`` (default ``default_<n>``) with weight ``scale``; returns the adapter's name."""
        if isinstance(source, Mapping):
            state, metadata = dict(source), None
        else:
            state, metadata = read_file(lora_file(source, weight_name))
        layers = parse(state, metadata)
        adapters = self._adapters(stage, create=True)
        name = adapter_name or f"default_{sum(len(a.adapters) for a in self._lora.values())}"
        source_name = "" if isinstance(source, Mapping) else str(source)
        adapters.add(name, layers, _weight(scale, "scale"), source_name)  # checks the fit before changing anything
        self._lora[stage] = adapters
        self._lora_changed(stage)
        log.info("stage %d: LoRA adapter %r from %s (%d layers)", stage, name, _label(source), len(state) // 2)
        return name

    def set_adapters(
        self, adapter_names: str | Sequence[str], adapter_weights: float | Sequence[float] | None = None, stage=None
    ) -> None:
        """Make exactly these adapters active, with these weights (default 1 each), on every stage that
        has them (or on ``stage`` only)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        weights = _weights(adapter_weights, len(names))
        stages = self._lora_stages(stage, names)
        for n in stages:
            adapters = self._lora[n]
            pairs = [(a, w) for a, w in zip(names, weights, strict=True) if a in adapters.adapters]
            adapters.set_active([a for a, _ in pairs], [w for _, w in pairs])
            self._lora_changed(n)

    def fuse_lora(self, lora_scale: float = 1.0, stage: int | None = None) -> None:
        """Merge the active adapters at ``lora_scale`` (they already are merged at 1; see module doc)."""
        self._each_lora(stage, lambda a: setattr(a, "lora_scale", _weight(lora_scale, "lora_scale")))

    def unfuse_lora(self, stage: int | None = None) -> None:
        """Back to the loaded adapters at scale 1, as diffusers' unfused layers compute."""
        self._each_lora(stage, lambda a: setattr(a, "lora_scale", 1.0))

    def disable_lora(self, stage: int | None = None) -> None:
        self._each_lora(stage, lambda a: setattr(a, "enabled", False))

    def enable_lora(self, stage: int | None = None) -> None:
        self._each_lora(stage, lambda a: setattr(a, "enabled", True))

    def unload_lora_weights(self, stage: int | None = None) -> None:
        """Base weights back and every adapter forgotten."""
        for n in [stage] if stage is not None else list(self._lora):
            if n in self._lora:
                self._lora.pop(n).remove()
                self._lora_changed(n)

    def get_active_adapters(self, stage: int = 1) -> list[str]:
        adapters = self._lora.get(stage)
        return [] if adapters is None or not adapters.enabled else list(adapters.active)

    def get_list_adapters(self) -> dict[int, list[str]]:
        return {n: list(a.adapters) for n, a in self._lora.items()}

    def lora_updates(self, stage: int) -> list[WeightUpdate]:
        """Each weight LoRA changed on ``stage``: base and current values (to refit graphs and engines)."""
        adapters = self._lora.get(stage)
        return [] if adapters is None else adapters.updates()

    # -- internals

    @property
    def _lora(self) -> dict[int, UNetAdapters]:
        if "_lora_state" not in self.__dict__:
            self._lora_state = {}
        return self._lora_state

    def _adapters(self, stage: int, create: bool = False) -> UNetAdapters:
        if stage not in STAGES:
            raise LoraError(f"stage must be 1, 2 or 3, got {stage!r}")
        unet = getattr({1: self.stage1, 2: self.stage2, 3: self.stage3}[stage], "unet", None)
        if not isinstance(unet, torch.nn.Module):
            raise LoraError(f"stage {stage} has no torch U-Net loaded (LoRA needs from_pretrained's torch stages)")
        if getattr(self, "runtime", None) is not None and getattr(self.runtime, "placer", None) is not None:
            raise LoraError(
                "LoRA rewrites U-Net weights in place, and this cascade's memory planner (vram_budget=) keeps "
                "its own copies of them: load LoRA on a cascade without vram_budget"
            )
        if stage not in self._lora:
            if not create:
                raise LoraError(f"stage {stage} has no LoRA loaded")
            return UNetAdapters(unet, f"stage {stage}")  # registered once an adapter is in
        return self._lora[stage]

    def _lora_stages(self, stage, names: list[str]) -> list[int]:
        if stage is not None:
            self._adapters(stage)
            return [stage]
        stages = [n for n, a in self._lora.items() if any(x in a.adapters for x in names)]
        unknown = [x for x in names if not any(x in a.adapters for a in self._lora.values())]
        if unknown or not stages:
            raise LoraError(
                f"no adapter named {unknown[0] if unknown else names!r}; loaded: {self.get_list_adapters()}"
            )
        return stages

    def _each_lora(self, stage, change) -> None:
        for n in [stage] if stage is not None else list(self._lora):
            adapters = self._adapters(n)
            change(adapters)
            adapters.apply()
            self._lora_changed(n)

    def _lora_changed(self, stage: int) -> None:
        """Weights moved in place: tell the stage's step (seam point 4), which forgets any frozen copy."""
        {1: self.stage1, 2: self.stage2, 3: self.stage3}[stage].step_fn.weights_changed()


def _weight(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LoraError(f"{name} must be a number, got {value!r}")
    return float(value)


def _weights(weights, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    if isinstance(weights, (int, float)):
        return [_weight(weights, "adapter_weights")] * count
    weights = [_weight(w, "adapter_weights") for w in weights]
    if len(weights) != count:
        raise LoraError(f"got {len(weights)} adapter_weights for {count} adapter_names; give one per adapter")
    return weights


def _label(source) -> str:
    return "a state dict" if isinstance(source, Mapping) else str(source)
