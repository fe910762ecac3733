"""What one generate call asks for, normalised and validated before any work starts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping, Sequence

from ..errors import IFEngineError
from ..facts import DEFAULT_GUIDANCE, DEFAULT_NOISE_LEVEL, DEFAULT_STEPS, MAX_NOISE_LEVEL, scale_of
from ..models.checkpoint import read_run_defaults
from ..validate import positive_int

OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass(frozen=True)
class RunDefaults:
    """Per-cascade defaults for arguments left as None (the demo cascade uses fewer steps)."""

    steps: tuple[int, int, int] = DEFAULT_STEPS
    guidance: tuple[float, float, float] = DEFAULT_GUIDANCE
    noise_level: tuple[int, int] = DEFAULT_NOISE_LEVEL


def run_defaults(entries: Mapping[int, Mapping[str, Any]], base: RunDefaults = RunDefaults()) -> RunDefaults:
    """The cascade's defaults from what each stage's source records (stage -> {"steps", "guidance",
    "noise_level"}: a checkpoint's ``read_run_defaults``, or an exported graph's / engine's manifest);
    what no source records keeps ``base``. Values are checked when a request uses them."""

    def pick(key: str, stage: int, fallback):
        return entries.get(stage, {}).get(key, fallback)

    return RunDefaults(
        steps=tuple(pick("steps", n, base.steps[n - 1]) for n in (1, 2, 3)),
        guidance=tuple(float(pick("guidance", n, base.guidance[n - 1])) for n in (1, 2, 3)),
        noise_level=tuple(pick("noise_level", n, base.noise_level[n - 2]) for n in (2, 3)),
    )


def checkpoint_defaults(roots: Mapping[int, Any], base: RunDefaults = RunDefaults()) -> RunDefaults:
    """``run_defaults`` of checkpoint folders (stage -> folder), from what each records."""
    return run_defaults({n: read_run_defaults(root) for n, root in roots.items()}, base)


def stage_record(defaults: RunDefaults, stage: int) -> dict[str, Any]:
    """One stage's share of ``defaults`` as a manifest records it (the inverse of ``run_defaults``)."""
    record = {"steps": defaults.steps[stage - 1], "guidance": defaults.guidance[stage - 1]}
    if stage > 1:
        record["noise_level"] = defaults.noise_level[stage - 2]
    return record


class RequestError(IFEngineError, ValueError):
    """A generate request that cannot run; the message says what is accepted."""


@dataclass(frozen=True)
class StageOptions:
    """Settings of one stage: steps or an explicit/named timestep list, guidance, noise level."""

    steps: int
    guidance: float
    timesteps: tuple[int, ...] | str | None = None
    noise_level: int | None = None

    @property
    def cfg(self) -> bool:
        return self.guidance > 1.0


@dataclass(frozen=True)
class Request:
    prompts: tuple[str, ...]
    negatives: tuple[str, ...]
    height: int
    width: int
    num_images_per_prompt: int
    last_stage: int
    output_type: str
    stages: tuple[StageOptions, StageOptions, StageOptions]
    embeds: Any = field(default=None, compare=False)  # pipeline.embeds.Given: the caller's prompt embeddings

    @property
    def batch(self) -> int:
        return len(self.prompts) * self.num_images_per_prompt

    def size(self, stage: int) -> tuple[int, int]:
        """Output (height, width) of a stage: stage I's size times 4 per super-resolution stage."""
        return self.height * scale_of(stage), self.width * scale_of(stage)


def per_stage(value: Any, default: tuple, name: str) -> tuple:
    """A scalar applies to every stage; a sequence gives stages in order (missing ones keep defaults)."""
    if value is None:
        return default
    if isinstance(value, (str, int, float)) or value is None:
        return (value,) * len(default)
    try:
        value = tuple(value)
    except TypeError:
        raise RequestError(f"{name} takes one value or one per stage, got {value!r}") from None
    if len(value) > len(default):
        raise RequestError(f"{name} takes at most {len(default)} values (one per stage), got {len(value)}")
    # strict=False: fewer values than stages is allowed (checked above: never more); the rest keep defaults
    return tuple(v if v is not None else d for v, d in zip(value, default, strict=False)) + default[len(value) :]


def as_prompts(prompt: str | Sequence[str], name: str = "prompt") -> tuple[str, ...]:
    if isinstance(prompt, str):
        return (prompt,)
    if isinstance(prompt, Sequence) and prompt and all(isinstance(p, str) for p in prompt):
        return tuple(prompt)
    raise RequestError(f"{name} must be a string or a non-empty list of strings, got {prompt!r}")


def negatives_for(
    prompts: tuple[str, ...], negative: str | Sequence[str] | None, name: str = "negative_prompt"
) -> tuple[str, ...]:
    if negative is None:
        return ("",) * len(prompts)
    if isinstance(negative, str):
        return (negative,) * len(prompts)
    negatives = as_prompts(negative, name)
    if len(negatives) != len(prompts):
        raise RequestError(
            f"{name} has {len(negatives)} entries but prompt has {len(prompts)}; give one {name}, or one per prompt"
        )
    return negatives


def stage_options(
    steps, guidance, timesteps, noise_level, defaults: RunDefaults = RunDefaults()
) -> tuple[StageOptions, ...]:
    steps = per_stage(steps, defaults.steps, "steps")
    guidance = per_stage(guidance, defaults.guidance, "guidance")
    timesteps = (
        per_stage(timesteps, (None, None, None), "timesteps")
        if not _is_int_list(timesteps)
        else (tuple(timesteps), None, None)
    )
    levels = (None,) + per_stage(noise_level, defaults.noise_level, "noise_level")
    out = []
    for i in range(3):
        out.append(
            StageOptions(
                steps=_steps(steps[i], i + 1),
                guidance=_guidance(guidance[i], i + 1),
                timesteps=_timesteps(timesteps[i]),
                noise_level=_level(levels[i], i + 1),
            )
        )
    return tuple(out)


def _is_int_list(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, int) for v in value)


def _steps(value, stage: int) -> int:
    return positive_int(value, f"stage {stage} steps", error=RequestError)


MAX_GUIDANCE = 1e4  # far above any useful scale (IF uses 4-9); larger ones overflow float16/32 into NaN


def _guidance(value, stage: int) -> float:
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if bad or not 0 <= value <= MAX_GUIDANCE:
        raise RequestError(
            f"stage {stage} guidance must be a finite number in [0, {MAX_GUIDANCE:g}] (1 or less disables "
            f"classifier-free guidance), got {value!r}"
        )
    return float(value)


def _timesteps(value):
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise RequestError(f"timesteps must be a list of ints or a named list (e.g. 'smart27'), got {value!r}")


def _level(value, stage: int) -> int | None:
    if stage == 1:
        return None
    top = MAX_NOISE_LEVEL[stage - 2]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < top + (stage == 3):
        raise RequestError(
            f"stage {stage} noise_level must be a whole number in [0, {top - (stage == 2)}], got {value!r}"
        )
    return value


def check_output_type(output_type: str) -> str:
    if output_type not in OUTPUT_TYPES:
        raise RequestError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    return output_type


def check_images_per_prompt(n) -> int:
    return positive_int(n, "num_images_per_prompt", error=RequestError)


def check_timesteps(stages: tuple[StageOptions, ...], last_stage: int = 3) -> None:
    """Named or explicit lists are for the DDPM stages (I, II); stage III's DDIM takes a step count, which
    matters only when stage III runs (``timesteps="fast27"`` on a stage-I-only run is stage I's list)."""
    # imported here: the CLI reads this module to parse flags, and schedule/ loads torch
    from ..schedule import named_timesteps, validate_timesteps

    for number, opts in enumerate(stages[:2], start=1):
        try:
            if isinstance(opts.timesteps, str):
                named_timesteps(opts.timesteps)
            elif opts.timesteps is not None:
                validate_timesteps(opts.timesteps)
        except ValueError as err:
            raise RequestError(f"stage {number} timesteps: {err}") from None
    if last_stage >= 3 and stages[2].timesteps is not None:
        raise RequestError("stage III (DDIM) takes a step count, not a timestep list; use steps=(..., ..., N)")


def timestep_list(opts: StageOptions) -> tuple[int, ...]:
    """The explicit or named timestep list of a stage (call only when ``opts.timesteps`` is set)."""
    from ..schedule import named_timesteps  # see check_timesteps

    return named_timesteps(opts.timesteps) if isinstance(opts.timesteps, str) else tuple(opts.timesteps)
