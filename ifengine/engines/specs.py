"""The I/O spec of each component, for planning engines before (or without) exporting them.

The export manifest's spec is the truth for an exported graph; before export, the spec comes from the
same builders the exporter uses (``ifengine.export.spec``), fed with the checkpoint's own config when one
is given on the command line and with the recipe's model presets otherwise.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

from ..export import spec as io
from ..export.spec import ComponentSpec, DimRange, TensorSpec
from ..models.config import UNetConfig, VAEConfig
from ..models.presets import text_preset, unet_preset, vae_preset
from ..schedule.ddim import DDIMConfig
from ..schedule.ddpm import DDPMConfig
from .errors import RecipeError
from .recipe import ModelChoice

from ..facts import IF_UNETS, STAGE_OF
from ..schedule import presets


def planned_spec(component: str, models: ModelChoice, checkpoints: Mapping[int, Any] | None = None) -> ComponentSpec:
    """The spec a fresh export of ``component`` would declare (checkpoint config first, else preset)."""
    checkpoints = checkpoints or {}
    ckpt = checkpoints.get(STAGE_OF[component])
    sizes = _cascade_sizes(models, checkpoints)
    at = lambda stage: {"sizes": sizes[stage]} if stage in sizes else {}  # noqa: E731
    if component in IF_UNETS:
        stage = STAGE_OF[component]
        return io.if_unet_spec(_unet(ckpt, models, stage), stage, **at(stage))
    if component == "x4_unet":
        return io.x4_unet_spec(_unet(ckpt, models, 3), **at(3))
    if component == "vae_decoder":
        config = VAEConfig.from_dict(ckpt.config("vae")) if ckpt else vae_preset(models.vae)
        return io.vae_decoder_spec(config, **at(3))
    if component == "t5":
        return io.t5_spec(hidden=_text_width(ckpt, "d_model", models.t5))
    if component == "clip":
        return io.clip_spec(hidden=_text_width(ckpt, "hidden_size", models.clip))
    return _step_spec(component, ckpt, models, sizes)


def _step_spec(component: str, ckpt, models: ModelChoice, sizes: Mapping[int, DimRange]) -> ComponentSpec:
    stage = STAGE_OF[component]
    try:
        from ..export import step_spec  # the export extra may be absent
    except ModuleNotFoundError:
        step_spec = None
    if step_spec is None or stage not in sizes:
        raise RecipeError(
            f"component {component!r} has no I/O spec until it is exported: run `ifengine export` "
            f"for it first (or give --stage{stage} so `ifengine build` exports it)"
        )

    config = _unet(ckpt, models, stage)
    if stage == 3:
        return step_spec.x4_step_spec(config, _scheduler(ckpt, DDIMConfig, presets.X4_DDIM), sizes[3])
    default = presets.IF_STAGE1_DDPM if stage == 1 else presets.IF_STAGE2_DDPM
    return step_spec.if_step_spec(config, stage, _scheduler(ckpt, DDPMConfig, default), sizes[stage])


def _cascade_sizes(models: ModelChoice, checkpoints: Mapping[int, Any]) -> dict[int, DimRange]:
    """Height/width range per stage as the exporter derives it from the U-Nets' sample sizes."""
    try:
        from ..export.sizes import cascade_sizes  # the export extra may be absent
    except ModuleNotFoundError:  # an exporter without per-cascade ranges: the spec defaults apply
        return {}
    configs = {n: _unet(checkpoints.get(n), models, n) for n in (1, 2, 3)}
    return cascade_sizes(
        {n: c.sample_size for n, c in configs.items()}, {n: c.downsample_factor for n, c in configs.items()}
    )


def _unet(ckpt, models: ModelChoice, stage: int) -> UNetConfig:
    return UNetConfig.from_dict(ckpt.config("unet")) if ckpt else unet_preset(getattr(models, f"stage{stage}"))


def _scheduler(ckpt, cls, default):
    return cls.from_dict(ckpt.config("scheduler", "scheduler_config.json")) if ckpt else default


def _text_width(ckpt, key: str, preset: str) -> int:
    if ckpt is not None and ckpt.has("text_encoder"):
        return int(ckpt.config("text_encoder")[key])
    return text_preset(preset).hidden_size


def spec_to_dict(spec: ComponentSpec) -> dict[str, Any]:
    """JSON form of a spec (the exporter's own ``to_dict`` when it has one)."""
    if hasattr(spec, "to_dict"):
        return spec.to_dict()
    tensors = lambda ts: [{"name": t.name, "dtype": t.dtype, "dims": list(t.dims)} for t in ts]  # noqa: E731
    return {
        "name": spec.name,
        "inputs": tensors(spec.inputs),
        "outputs": tensors(spec.outputs),
        "ranges": {
            k: {"min": r.min, "opt": r.opt, "max": r.max, "multiple": r.multiple} for k, r in spec.ranges.items()
        },
    }


def spec_from_dict(raw: Mapping[str, Any]) -> ComponentSpec:
    """Inverse of :func:`spec_to_dict`; accepts the spec dict an export manifest records."""
    try:
        if hasattr(ComponentSpec, "from_dict"):
            return ComponentSpec.from_dict(raw)
        tensors = lambda key: tuple(TensorSpec(t["name"], t["dtype"], tuple(t["dims"])) for t in raw[key])  # noqa: E731
        ranges = {k: DimRange(r["min"], r["opt"], r["max"], r.get("multiple", 1)) for k, r in raw["ranges"].items()}
        return ComponentSpec(name=raw["name"], inputs=tensors("inputs"), outputs=tensors("outputs"), ranges=ranges)
    except (KeyError, TypeError, IndexError) as err:
        raise ValueError(f"malformed I/O spec in a manifest: missing or bad {err}") from None


def derived_dims(spec: ComponentSpec) -> dict[str, tuple[str, int]]:
    """dim -> (base dim, factor) the spec declares (older specs declare none)."""
    return dict(getattr(spec, "derived", {}) or {})
