"""What diffusers' per-stage pipelines take and give: input images, output ranges, step callbacks.

* IF super-resolution inputs are used as diffusers' ``preprocess_image`` reads them: a PIL image becomes
  [-1, 1] at its own size, tensors (the previous stage's ``output_type="pt"``) and arrays are taken as
  they are. The x4 upscaler takes PIL images and [0, 1] tensors, and [-1, 1] tensors as they are.
* Outputs: an IF stage's ``"pt"`` is NCHW in [-1, 1] (what ``diffusers.utils.pt_to_pil`` expects) and
  its ``"latent"`` the same pixel-space sample; the x4 upscaler's ``"pt"`` is [0, 1] and its
  ``"latent"`` the latents before the VAE. ``"np"`` is NHWC in [0, 1] for every stage.
* ``callback_on_step_end(pipe, i, t, callback_kwargs) -> dict`` and the older ``callback(i, t, sample)``
  every ``callback_steps`` steps become one ``stage.stages.StepCallback``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..stage.options import RequestError
from ..validate import positive_int
from .images import convert, to_unit

SAMPLE_NAMES = ("latents", "intermediate_images")  # the sample, by the names diffusers' pipelines use
TENSOR_INPUTS = SAMPLE_NAMES + ("prompt_embeds", "negative_prompt_embeds")
IF_OUTPUTS = ("pil", "np", "pt", "latent")


@dataclass
class IFPipelineOutput:
    """diffusers' ``IFPipelineOutput``: ``images`` and the safety checker's flags (None without one)."""

    images: Any
    nsfw_detected: list[bool] | None = None
    watermark_detected: list[bool] | None = None

    def to_tuple(self) -> tuple:
        return (self.images, self.nsfw_detected, self.watermark_detected)

    def __getitem__(self, i):
        return self.to_tuple()[i]


@dataclass
class UpscalePipelineOutput:
    """diffusers' ``StableDiffusionPipelineOutput`` of the x4 upscaler."""

    images: Any
    nsfw_content_detected: list[bool] | None = None

    def to_tuple(self) -> tuple:
        return (self.images, self.nsfw_content_detected)

    def __getitem__(self, i):
        return self.to_tuple()[i]


def check_output_type(output_type: str) -> str:
    if output_type not in IF_OUTPUTS:
        raise RequestError(f"output_type must be one of {IF_OUTPUTS}, got {output_type!r}")
    return output_type


def sr_image(image, batch: int, device, dtype) -> torch.Tensor:
    """An IF super-resolution input as NCHW [-1, 1] with ``batch`` rows (diffusers' preprocess_image)."""
    items = image if isinstance(image, list) else [image]
    if not items or image is None:
        raise RequestError("image= is required: the lower-resolution image(s) to upscale")
    if isinstance(items[0], Image.Image):
        x = torch.from_numpy(np.stack([np.asarray(i.convert("RGB"), np.float32) / 127.5 - 1 for i in items]))
        x = x.permute(0, 3, 1, 2)
    elif isinstance(items[0], np.ndarray):
        arr = np.stack(items)
        x = torch.from_numpy(arr[0] if arr.ndim == 5 else arr).permute(0, 3, 1, 2)
    elif isinstance(items[0], torch.Tensor):
        x = torch.cat([t if t.dim() == 4 else t[None] for t in items])
    else:
        raise RequestError(
            f"image must be a PIL image, numpy array or tensor (or a list), got {type(items[0]).__name__}"
        )
    return _rows(x, batch).to(device, dtype)


def x4_image(image, batch: int, device, dtype) -> torch.Tensor:
    """An x4 upscaler input as NCHW [-1, 1]: PIL and [0, 1] tensors normalised, [-1, 1] tensors kept."""
    items = image if isinstance(image, list) else [image]
    if not items or image is None:
        raise RequestError("image= is required: the image(s) to upscale")
    if isinstance(items[0], Image.Image):
        unit = [torch.from_numpy(np.asarray(i.convert("RGB"), np.float32) / 255).permute(2, 0, 1) for i in items]
        x = torch.stack(unit) * 2 - 1
    elif isinstance(items[0], (torch.Tensor, np.ndarray)):
        x = torch.cat([_nchw(t) for t in items])
        x = x if x.min() < 0 else x * 2 - 1
    else:
        raise RequestError(
            f"image must be a PIL image, numpy array or tensor (or a list), got {type(items[0]).__name__}"
        )
    return _rows(x, batch).to(device, dtype)


def _nchw(t) -> torch.Tensor:
    if isinstance(t, np.ndarray):  # HWC / NHWC as diffusers' image processor reads arrays
        t = torch.from_numpy(np.asarray(t, np.float32))
        t = (t[None] if t.dim() == 3 else t).permute(0, 3, 1, 2)
    return t.float() if t.dim() == 4 else t.float()[None]


def _rows(x: torch.Tensor, batch: int) -> torch.Tensor:
    if x.dim() != 4 or x.shape[1] != 3:
        raise RequestError(f"image must be RGB, NCHW or CHW (3 channels), got shape {tuple(x.shape)}")
    if x.shape[0] == batch:
        return x
    if batch % x.shape[0]:
        raise RequestError(f"got {x.shape[0]} image(s) for {batch} prompt row(s); give one image, or one per row")
    return x.repeat_interleave(batch // x.shape[0], 0)


def if_output(cascade, final: torch.Tensor, stage_no: int, output_type: str):
    """(images, nsfw flags) of an IF stage in diffusers' convention ("pt": [-1, 1])."""
    if output_type in ("pt", "latent"):
        return final, None
    return cascade.to_images(final, stage_no, output_type)


def x4_output(cascade, final: torch.Tensor, latents: torch.Tensor | None, output_type: str):
    """(images, nsfw flags) of the x4 upscaler in diffusers' convention ("pt": [0, 1])."""
    if output_type == "latent":
        return latents, None
    if output_type == "pt":
        return to_unit(final), None
    if output_type == "pil" and cascade.safety is not None:
        return cascade.safety(final, watermark_size=None)
    return convert(final, output_type), None


def step_hook(pipe, timesteps, embeds: dict, *, on_step_end=None, tensor_inputs=None, callback=None,
              callback_steps=1, keep: list | None = None):  # fmt: skip
    """One ``StepCallback`` for diffusers' callbacks (None when there is nothing to call). ``keep``
    receives the sample after the last step (the x4 upscaler's ``output_type="latent"``)."""
    names = tuple(tensor_inputs) if tensor_inputs is not None else ("latents",)
    unknown = [n for n in names if n not in TENSOR_INPUTS]
    if unknown:
        raise RequestError(f"callback_on_step_end_tensor_inputs takes names from {TENSOR_INPUTS}, got {unknown}")
    if callback is not None:
        positive_int(callback_steps, "callback_steps", error=RequestError)
    if on_step_end is None and callback is None and keep is None:
        return None
    last = len(timesteps) - 1

    def on_step(stage_no: int, i: int, x: torch.Tensor):
        t = torch.tensor(timesteps[i])
        if callback is not None and i % callback_steps == 0:
            callback(i, t, x)
        new = None
        if on_step_end is not None:
            given = {n: x if n in SAMPLE_NAMES else embeds.get(n) for n in names}
            returned = on_step_end(pipe, i, t, given) or {}
            new = next((returned[n] for n in SAMPLE_NAMES if returned.get(n) is not None and returned[n] is not x),
                       None)  # fmt: skip
        if keep is not None and i == last:
            keep.append((x if new is None else new).clone())
        return new

    return on_step
