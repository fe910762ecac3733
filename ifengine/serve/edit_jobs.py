"""An edit request (POST /v1/images/edits) planned at the ingress, so it travels the stage deployments
as a generation does and is batched with other edits per stage.

The ingress holds no model: the plan (sources resized for each IF stage, masks, strengths) is made from
``ModelInfo``'s facts with the same ``pipeline.edit.plan_edit`` the library's editing modes use, so a
served edit and ``Cascade.img2img`` / ``inpaint`` / ``style_transfer`` check and resize alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..pipeline.edit import MODES, EditFields, EditShape, mode_defaults, plan_edit
from ..stage.options import RequestError
from .api import ApiError
from .models import ModelInfo
from .work import Job

# the fields a cascade RequestError may be about, most specific first (its messages name them)
_PARAMS = (
    "positive_prompt",
    "mixer",
    "strength",
    "mask",
    "image",
    "steps",
    "guidance",
    "noise_level",
    "last_stage",
    "prompt",
)


@dataclass(frozen=True)
class EditForm:
    """The validated form fields of an edit (uploads already decoded to PIL images)."""

    mode: str
    image: object
    mask: object
    prompt: str
    n: int = 1
    steps: int | None = None
    guidance: float | None = None
    strength: float | None = None
    negative_prompt: str | None = None
    positive_prompt: str | None = None
    mixer: float | None = None


def edit_shape(info: ModelInfo, mode: str, last: int) -> EditShape:
    """Each IF stage's (short side, size multiple) as the library's ``edit._resolutions`` reads them off
    the U-Nets, from the model facts."""
    used = [n for n in (1, 2) if n <= last]
    sample = info.sample_sizes or {1: info.sample_size}
    resolutions = tuple((sample[n], math.lcm(8, info.downsample[n])) for n in used)
    return EditShape(resolutions, mode_defaults(info.defaults, MODES[mode]))


def edit_job(info: ModelInfo, form: EditForm, last: int, seed: int, lora: str | None) -> Job:
    """The job of one edit, or an ``ApiError`` 400 naming the field that is wrong."""
    if form.mode == "style" and 2 not in info.stages:
        raise ApiError(400, "mode: style transfer needs stage II, which this server does not load", "mode")
    fields = EditFields(
        form.prompt, form.negative_prompt, form.n, form.steps, form.guidance, last_stage=last, output_type="pil"
    )
    try:
        plan = plan_edit(
            edit_shape(info, form.mode, last),
            form.mode,
            form.image,
            form.mask,
            fields,
            form.strength,
            form.positive_prompt,
            form.mixer,
        )
    except RequestError as err:
        raise ApiError(400, str(err), param_of(str(err))) from None
    return Job(request=plan.request, seed=seed, lora=lora, edit=plan)


def edit_settings(job: Job) -> dict:
    """What an edit's PNG and response add to a generation's settings (as ``edit.run`` reports them)."""
    plan = job.edit
    return {
        "mode": plan.mode,
        "strength": list(plan.strength[: min(2, plan.request.last_stage)]),
        "positive_prompt": list(plan.positives or []),
        "mixer": plan.mixer,
    }


def param_of(message: str) -> str | None:
    """The field a cascade RequestError is about (its messages start with or name it)."""
    return next((name for name in _PARAMS if name in message), None)
