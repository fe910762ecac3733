"""diffusers' LoRA methods on the cascade: load_lora_weights, set_adapters, fuse_lora, unfuse_lora, ...

The state each method changes is diffusers'/peft's (adapters.py): loading activates only the new adapter,
``fuse_lora(lora_scale)`` multiplies the active adapters' scales (``unfuse_lora`` keeps them, so the image
after unfusing is the fused one), ``set_adapters`` sets scales anew, ``unload_lora_weights`` keeps what was
fused, ``cross_attention_kwargs={"scale": s}`` scales one call. One difference by design: adapters are
merged into the U-Net weights as soon as the state changes, never run as extra layers (the images agree
with diffusers' unfused and fused ones alike). Cascade-wide calls act on every stage that has LoRA, or on
``stage=`` only; diffusers has one pipeline per stage.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Mapping, Sequence

import torch

from .adapters import LoraError, UNetAdapters, WeightUpdate
from .format import WEIGHT_NAME, LoraFormatError, parse, read_file

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
            layers = parse(dict(source), None)
        else:
            path = lora_file(source, weight_name)
            state, metadata = read_file(path)  # its errors name the file
            try:
                layers = parse(state, metadata)
            except LoraFormatError as err:
                raise LoraFormatError(f"{path}: {err}") from None  # the file is named, once
        adapters = self._adapters(stage, create=True)
        name = adapter_name or f"default_{sum(len(a.adapters) for a in self._lora.values())}"
        given, file = ("", "") if isinstance(source, Mapping) else (str(source), path.name)
        adapters.add(name, layers, _weight(scale, "scale"), given, file)  # checks the fit before changing anything
        self._lora[stage] = adapters
        self._lora_changed(stage)
        log.info("stage %d: LoRA adapter %r from %s (%d layers)", stage, name, _label(source), len(layers))
        return name

    def set_adapters(
        self, adapter_names: str | Sequence[str], adapter_weights: float | Sequence[float] | None = None, stage=None
    ) -> None:
        """Make exactly these adapters active, with these weights (default 1 each), on every stage that
        has them (or on ``stage`` only)."""
        names = _names(adapter_names, "adapter_names")
        weights = _weights(adapter_weights, len(names))
        for n in self._lora_stages(stage, names):
            adapters = self._lora[n]
            pairs = [(a, w) for a, w in zip(names, weights, strict=True) if a in adapters.adapters]
            adapters.set_active([a for a, _ in pairs], [w for _, w in pairs])
            self._lora_changed(n)

    def fuse_lora(
        self,
        components: Sequence[str] | float = ("unet", "text_encoder"),
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: str | Sequence[str] | None = None,
        stage: int | None = None,
    ) -> None:
        """Merge ``adapter_names`` (default: the active adapters) after multiplying the active adapters'
        scales by ``lora_scale``, as diffusers does. A number as first argument is ``lora_scale``
        (``fuse_lora(0.5)``). ``components``: only the U-Net takes LoRA here ("text_encoder" is accepted
        and has nothing to fuse). ``safe_fusing``: refuse weights that would not be finite."""
        if not isinstance(components, (str, list, tuple)):
            components, lora_scale = ("unet",), components
        if not _unet_component(components):
            return
        scale = _weight(lora_scale, "lora_scale")
        names = None if adapter_names is None else _names(adapter_names, "adapter_names")
        stages = self._lora_stages(stage, names) if names is not None else self._stages(stage)
        if safe_fusing:
            self._check_finite(stages, scale, names)
        for n in stages:
            adapters = self._lora[n]
            adapters.fuse(scale, None if names is None else [a for a in names if a in adapters.adapters])
            self._lora_changed(n)

    def unfuse_lora(self, components: Sequence[str] = ("unet", "text_encoder"), stage: int | None = None) -> None:
        """Take the fused adapters out of the weights again; their scales stay what ``fuse_lora`` made them
        (diffusers' unfused layers keep ``fuse_lora``'s scale too)."""
        if _unet_component(components):
            self._each_lora(stage, lambda a: a.fused.clear())

    def delete_adapters(self, adapter_names: str | Sequence[str], stage: int | None = None) -> None:
        """Forget these adapters (a fused one stays in the weights, as in peft); when none of the active
        ones is left, the first remaining adapter by name becomes active (peft's rule)."""
        names = _names(adapter_names, "adapter_names")
        for n in self._lora_stages(stage, names):
            adapters = self._lora[n]
            adapters.delete([a for a in names if a in adapters.adapters])
            if not adapters.adapters and not adapters.fused:
                adapters.remove()
                del self._lora[n]
            self._lora_changed(n)

    def disable_lora(self, stage: int | None = None) -> None:
        """Base weights until ``enable_lora``; fused adapters are taken out (peft's layers unmerge when they
        run disabled), the active ones come back on ``enable_lora``."""

        def disable(adapters: UNetAdapters) -> None:
            adapters.enabled = False
            adapters.fused.clear()

        self._each_lora(stage, disable)

    def enable_lora(self, stage: int | None = None) -> None:
        self._each_lora(stage, lambda a: setattr(a, "enabled", True))

    def unload_lora_weights(self, stage: int | None = None) -> None:
        """Every adapter forgotten; base weights back, except what ``fuse_lora`` merged, which stays (as in
        diffusers, where fuse_lora + unload_lora_weights bakes a LoRA in)."""
        for n in [stage] if stage is not None else list(self._lora):
            if n in self._lora:
                self._lora.pop(n).remove()
                self._lora_changed(n)

    @contextmanager
    def lora_call_scale(self, cross_attention_kwargs: Mapping | None):
        """diffusers' per-call LoRA scale: ``cross_attention_kwargs={"scale": s}`` multiplies the active,
        unfused adapters for the calls inside (the weights are restored on the way out, also on error)."""
        scale = _call_scale(cross_attention_kwargs)
        stages = list(self._lora) if scale != 1.0 else []
        for n in stages:
            self._lora[n].call_scale = scale
            self._lora[n].apply()
            self._lora_changed(n)
        try:
            yield
        finally:
            for n in stages:
                self._lora[n].call_scale = 1.0
                self._lora[n].apply()
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

    def _stages(self, stage) -> list[int]:
        if stage is not None:
            self._adapters(stage)
        return [stage] if stage is not None else list(self._lora)

    def _check_finite(self, stages: list[int], scale: float, names) -> None:
        """diffusers' safe_fusing: nothing is fused when a fused weight would hold inf or NaN."""
        if not math.isfinite(scale):
            raise LoraError(f"lora_scale must be finite, got {scale!r} (safe_fusing=True)")
        for n in stages:
            for name, layers in self._lora[n].adapters.items():
                finite = all(torch.isfinite(x.delta()).all() for x in layers.values())
                if (names is None or name in names) and not finite:
                    raise LoraError(f"stage {n}: adapter {name!r} has non-finite weights; not fused (safe_fusing=True)")

    def _each_lora(self, stage, change) -> None:
        for n in self._stages(stage):
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


def _names(names, what: str) -> list[str]:
    names = [names] if isinstance(names, str) else list(names)
    if not names or not all(isinstance(n, str) for n in names):
        raise LoraError(f"{what} takes an adapter name or a list of them, got {names!r}")
    return names


def _unet_component(components) -> bool:
    """Whether ``components`` (diffusers' names) include the U-Net; names other than these are refused."""
    components = [components] if isinstance(components, str) else list(components)
    unknown = [c for c in components if c not in ("unet", "text_encoder")]
    if unknown:
        raise LoraError(f"components takes 'unet' and 'text_encoder', got {unknown[0]!r}")
    return "unet" in components


def _call_scale(kwargs) -> float:
    if kwargs is None:
        return 1.0
    if not isinstance(kwargs, Mapping) or set(kwargs) - {"scale"}:
        raise LoraError(
            f"cross_attention_kwargs takes {{'scale': <LoRA scale>}} only (no attention processors), got {kwargs!r}"
        )
    return _weight(kwargs.get("scale", 1.0), "cross_attention_kwargs['scale']")


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
