"""The HTTP request/response schema (OpenAI Images API plus IF's own settings) and its validation.

Pydantic checks types and unknown fields; ``to_job`` checks everything that depends on the loaded
cascade (sizes its U-Nets accept, stages it has) through the same option checks ``Cascade`` uses, and
every refusal is an ``ApiError`` naming the field.
"""

from __future__ import annotations

import base64
import io
import random
import time
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from ..stage import options, sizes
from ..facts import scale_of
from ..stage.options import Request, RequestError
from .config import Limits
from .models import ModelInfo
from .work import Job
from ..errors import IFEngineError
from ..pipeline.save import png_info

RESPONSE_FORMATS = ("b64_json",)
QUALITIES = ("auto", "standard", "hd", "low", "medium", "high")
STYLES = ("vivid", "natural")
PROMPT_FIELDS = ("prompt", "negative_prompt", "positive_prompt")  # capped at Limits.max_prompt_chars
EDIT_MODES = ("img2img", "inpaint", "style")
PerStage = int | list[int | None] | None
PerStageFloat = float | list[float | None] | None


@dataclass
class ApiError(IFEngineError):
    """A request the server will not run: answered as JSON ``{"error": {...}}`` with this status."""

    status: int
    message: str
    param: str | None = None
    kind: str = "invalid_request_error"
    headers: dict | None = None
    code: str | None = None  # OpenAI's machine-readable code: a string or null, never the HTTP status

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class GenerationRequest(BaseModel):
    """POST /v1/images/generations (OpenAI's fields first, then IF's)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="the text prompt")
    n: int = Field(1, description="images to make for the prompt")
    size: str | None = Field(None, description="final image size WIDTHxHEIGHT, e.g. '256x256' (demo) or '1024x1024'")
    response_format: str = Field("b64_json", description="only 'b64_json' (PNG, base64) is served")
    model: str | None = Field(None, description="the served model's name, or a LoRA adapter listed by /v1/models")
    user: str | None = Field(None, description="accepted for OpenAI clients; ignored")
    quality: str | None = Field(None, description=f"accepted for OpenAI clients ({', '.join(QUALITIES)}); ignored")
    style: str | None = Field(None, description=f"accepted for OpenAI clients ({', '.join(STYLES)}); ignored")
    negative_prompt: str | None = None
    seed: int | None = Field(None, description="random seed; the same seed gives the same image (default: fresh)")
    steps: PerStage = Field(None, description="steps, one value or one per stage")
    guidance: PerStageFloat = Field(None, description="guidance, one value or one per stage")
    noise_level: PerStage = Field(None, description="noise level of stages II and III")
    last_stage: int | None = Field(None, description="stop after this stage (1, 2 or 3)")
    clean_caption: bool = True


class ImageData(BaseModel):
    b64_json: str
    seed: int
    settings: dict
    nsfw: bool | None = None  # the safety checker flagged this image (it is then black); None: no checker ran


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


def _fail(param: str, err: Exception | str) -> ApiError:
    return ApiError(400, f"{param}: {err}", param)


def check_text(fields: dict, limits: Limits) -> None:
    """Every text field: capped in length (prompts at ``max_prompt_chars``, the rest at ``max_text_chars``)
    and valid Unicode (a lone surrogate is valid JSON but no encoder or PNG can carry it)."""
    for name, value in fields.items():
        if not isinstance(value, str):
            continue
        cap = limits.max_prompt_chars if name in PROMPT_FIELDS else limits.max_text_chars
        if len(value) > cap:
            raise _fail(name, f"is {len(value)} characters; at most {cap} are accepted")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise _fail(name, f"is not valid Unicode (a lone surrogate at character {err.start})") from None
    for name, allowed in (("quality", QUALITIES), ("style", STYLES)):
        if fields.get(name) is not None and fields[name] not in allowed:
            raise _fail(name, f"must be one of {allowed}, got {fields[name]!r}")


def check_common(prompt: str, n: int, response_format: str, steps, limits: Limits) -> None:
    if not prompt.strip():
        raise _fail("prompt", "must not be empty")
    if not 1 <= n <= limits.max_images:
        raise _fail("n", f"must be between 1 and {limits.max_images}, got {n}")
    if response_format not in RESPONSE_FORMATS:
        raise _fail("response_format", f"{response_format!r} is not served; use one of {RESPONSE_FORMATS}")
    values = steps if isinstance(steps, list) else [steps]
    if any(isinstance(v, int) and v > limits.max_steps for v in values):
        raise _fail("steps", f"at most {limits.max_steps} steps per stage are served, got {steps}")


def check_seed(seed: int | None) -> int:
    if seed is None:
        return random.SystemRandom().randrange(2**63)
    if not 0 <= seed < 2**63:
        raise _fail("seed", f"must be a whole number in [0, 2**63), got {seed}")
    return seed


def last_stage(info: ModelInfo, value: int | None) -> int:
    if value is None:
        return max(n for n in info.stages if set(range(1, n + 1)) <= set(info.stages))
    if value not in (1, 2, 3) or not set(range(1, value + 1)) <= set(info.stages):
        raise _fail("last_stage", f"must be one of the loaded stages {info.stages} (from 1 up), got {value}")
    return value


def stage_one_size(size: str | None, last: int, info: ModelInfo, limits: Limits) -> tuple[int, int]:
    """'WxH' (the final size) -> stage I's (height, width); None or 'auto': the cascade's own size."""
    if size is None or size == "auto":
        return info.sample_size, info.sample_size
    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise _fail("size", f"must look like '1024x1024' (WIDTHxHEIGHT), got {size!r}") from None
    scale = scale_of(last)
    if w < 1 or h < 1 or w % scale or h % scale:
        raise _fail(
            "size", f"{size} is not stage I's size times {scale} (last stage {last}); e.g. '{64 * scale}x{64 * scale}'"
        )
    h1, w1 = h // scale, w // scale
    if max(h1, w1) > limits.max_side:
        raise _fail("size", f"{size} needs a stage I side of {max(h1, w1)} px; at most {limits.max_side} are served")
    multiple = size_multiple(info, last)
    try:
        sizes.check_size(h1, w1, multiple)
    except RequestError as err:
        raise _fail("size", f"{size}: {err}") from None
    return h1, w1


def size_multiple(info: ModelInfo, last: int) -> int:
    return sizes.size_multiple({n: f for n, f in info.downsample.items() if n <= last})


def stage_settings(steps, guidance, noise_level, defaults) -> tuple[options.StageOptions, ...]:
    """Each field on its own first, so the error names the field that is wrong."""
    for name, kwargs in (
        ("steps", dict(steps=steps)),
        ("guidance", dict(guidance=guidance)),
        ("noise_level", dict(noise_level=noise_level)),
    ):
        try:
            options.stage_options(
                kwargs.get("steps"), kwargs.get("guidance"), None, kwargs.get("noise_level"), defaults
            )
        except RequestError as err:
            raise _fail(name, err) from None
    return options.stage_options(steps, guidance, None, noise_level, defaults)


def to_job(body: GenerationRequest, info: ModelInfo, limits: Limits) -> Job:
    check_text(body.model_dump(), limits)
    check_common(body.prompt, body.n, body.response_format, body.steps, limits)
    last = last_stage(info, body.last_stage)
    height, width = stage_one_size(body.size, last, info, limits)
    request = Request(
        prompts=(body.prompt,),
        negatives=(body.negative_prompt or "",),
        height=height,
        width=width,
        num_images_per_prompt=body.n,
        last_stage=last,
        output_type="pil",
        stages=stage_settings(body.steps, body.guidance, body.noise_level, info.defaults),
    )
    return Job(request=request, seed=check_seed(body.seed), clean_caption=body.clean_caption)


def job_settings(job: Job) -> dict:
    """The settings a PNG and a response carry (the keys of ``CascadeOutput.settings``)."""
    r = job.request
    return {
        "prompt": list(r.prompts),
        "negative_prompt": list(r.negatives),
        "seed": job.seed,
        "height": r.height,
        "width": r.width,
        "last_stage": r.last_stage,
        "num_images_per_prompt": r.num_images_per_prompt,
        "stages": [vars(s) for s in r.stages[: r.last_stage]],
    }


# zlib level 1, not PIL's 6: a 1024x1024 PNG encodes in ~0.1 s instead of ~0.34 s for ~15% more bytes,
# and the encode runs in the ingress, on every response's path (benchmarks/RESULTS.md, serving overhead)
PNG_LEVEL = 1


def png_b64(images, settings: dict) -> list[str]:
    """PIL images -> base64 PNGs carrying the settings as ``ifengine generate``'s files do."""

    out = []
    for i, img in enumerate(images):
        buf = io.BytesIO()
        img.save(buf, format="PNG", pnginfo=png_info(settings, i), compress_level=PNG_LEVEL)
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def response(images, seed: int, settings: dict) -> dict:
    data = [{"b64_json": b, "seed": seed, "settings": settings} for b in png_b64(images, settings)]
    return {"created": int(time.time()), "data": data}
