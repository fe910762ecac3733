"""diffusers' argument spellings, accepted as documented aliases of ifengine's own.

A diffusers IF script passes ``torch_dtype=`` to ``from_pretrained`` and ``num_inference_steps=`` /
``guidance_scale=`` to each pipeline call. ifengine's ``dtype=``, ``steps=`` and ``guidance=`` mean the
same (and also take one value per stage), so each diffusers name maps onto one ifengine name here, in one
place. ``negative_prompt``, ``generator`` (one generator, or a list of one per image), ``output_type``,
``height``/``width`` and ``num_images_per_prompt`` already have diffusers' names and meanings.

Giving both spellings of one setting is accepted only when they agree; otherwise it is a ValueError that
names both, so a script never silently runs with the value it did not mean.
"""

from __future__ import annotations

from typing import Any

from ..stage.options import RequestError

# diffusers name -> ifengine name (README "From diffusers" maps whole scripts)
CALL_ALIASES = {"num_inference_steps": "steps", "guidance_scale": "guidance"}
LOAD_ALIASES = {"torch_dtype": "dtype"}


class AliasConflict(RequestError):
    """Both spellings of one setting were given, with different values."""


def merge(name: str, value: Any, alias: str, alias_value: Any) -> Any:
    """The one value meant by ``name=value`` and its diffusers alias ``alias=alias_value`` (None = not given)."""
    if alias_value is None:
        return value
    if value is None or _same(value, alias_value):
        return alias_value if value is None else value
    raise AliasConflict(
        f"{name}={value!r} and {alias}={alias_value!r} disagree: {alias} is "
        f"diffusers' name for {name}; give one of them"
    )


def call_settings(steps, num_inference_steps, guidance, guidance_scale) -> tuple[Any, Any]:
    """(steps, guidance) of a call that may use diffusers' ``num_inference_steps`` / ``guidance_scale``."""
    return merge("steps", steps, "num_inference_steps", num_inference_steps), merge(
        "guidance", guidance, "guidance_scale", guidance_scale
    )


def load_dtype(dtype, torch_dtype, default):
    """``from_pretrained``'s dtype from ``dtype=`` or diffusers' ``torch_dtype=`` (None: ``default``)."""
    value = merge("dtype", dtype, "torch_dtype", torch_dtype)
    return default if value is None else value


def _same(a: Any, b: Any) -> bool:
    # 20 and (20,) and [20, 20, 20] are different requests for a per-stage setting; compare as given
    norm = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return norm(a) == norm(b)
