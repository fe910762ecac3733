"""The FastAPI ingress: OpenAI-style images routes over the stage deployments.

The ingress holds no model. It validates a request, walks it through the stage deployments with their
``DeploymentHandle``s (or the one whole-cascade deployment), and turns Ray's refusals into HTTP answers:
a full queue (``BackPressureError``) or a replica that died or is unavailable -> 503 with Retry-After;
a request unanswered within ``Limits.request_timeout_s`` -> 503 too, so nothing waits forever.
"""

# no `from __future__ import annotations`: Ray pickles the ingress class by value, and FastAPI must
# still see the real annotation types (string annotations would not resolve after unpickling)
import asyncio
import dataclasses
import logging
from collections import Counter
from typing import Annotated

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from ..pipeline.images import convert
from . import api
from .api import ApiError, GenerationRequest, ImagesResponse
from .config import ServeConfig
from .guards import install_guards
from .models import ModelInfo, lora_names
from .uploads import read_image
from .work import Carry, start

log = logging.getLogger(__name__)
_UNAVAILABLE = (
    RayActorError,
    ActorDiedError,
    ActorUnavailableError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)


def make_app(config: ServeConfig) -> FastAPI:
    app = FastAPI(
        title="ifengine",
        description="DeepFloyd IF on Ray Serve: OpenAI-style images API, one deployment per stage.",
        version="1",
    )
    install_guards(app, config)
    return app


def build_ingress(config: ServeConfig):
    """The ingress deployment class, bound to an app whose guards (auth, limits) follow ``config``."""
    app = make_app(config)

    @serve.deployment
    @serve.ingress(app)
    class Ingress:
        def __init__(self, info: ModelInfo, **handles):
            self.config, self.info, self.handles = config, info, handles
            self.batches: dict[str, Counter] = {}

        @app.get("/health")
        async def health(self) -> dict:
            return {"status": "ok", "layout": config.layout}

        @app.get("/v1/models")
        async def models(self) -> dict:
            entry = {"id": config.model_name, "object": "model", "owned_by": "ifengine", "stages": self.info.stages}
            loras = [{"id": n, "object": "model", "owned_by": "ifengine", "lora": True} for n in self._loras()]
            return {"object": "list", "data": [entry, *loras]}

        @app.get("/v1/stats")
        async def stats(self) -> dict:
            """Images per stage call, as the stages actually ran them (this ingress replica's requests)."""
            return {"batch_sizes": {k: dict(sorted(v.items())) for k, v in self.batches.items()}}

        @app.post("/v1/images/generations", response_model=ImagesResponse)
        async def generations(self, body: GenerationRequest) -> dict:
            job = dataclasses.replace(api.to_job(body, self.info, config.limits), lora=self._lora_of(body.model))
            carry = await self._bounded(self._cascade(start(job)))
            if carry.error:
                raise ApiError(500, carry.error, None, "server_error")
            for stage, size in carry.batched.items():
                self.batches.setdefault(stage, Counter())[size] += 1
            settings = {**api.job_settings(job), "batched": carry.batched, "model": job.lora or config.model_name}
            images = carry.images if carry.images is not None else convert(carry.image, "pil")
            return _with_nsfw(api.response(images, job.seed, settings), carry.nsfw)

        @app.post("/v1/images/edits", response_model=ImagesResponse)
        async def edits(
            self,
            image: Annotated[UploadFile, File(description="the source image (PNG/JPEG)")],
            prompt: Annotated[str, Form()],
            mask: Annotated[UploadFile | None, File(description="inpainting mask, white = repaint")] = None,
            mode: Annotated[str, Form(description="img2img, inpaint or style")] = "img2img",
            n: Annotated[int, Form()] = 1,
            response_format: Annotated[str, Form()] = "b64_json",
            seed: Annotated[int | None, Form()] = None,
            steps: Annotated[int | None, Form()] = None,
            guidance: Annotated[float | None, Form()] = None,
            strength: Annotated[float | None, Form()] = None,
            negative_prompt: Annotated[str | None, Form()] = None,
            last_stage: Annotated[int | None, Form()] = None,
            positive_prompt: Annotated[str | None, Form(description="style: mixed into the guidance")] = None,
            mixer: Annotated[float | None, Form(description="style: weight of positive_prompt")] = None,
            model: Annotated[str | None, Form(description="the served model or a LoRA from /v1/models")] = None,
        ) -> dict:
            limits = config.limits
            api.check_common(prompt, n, response_format, steps, limits)
            if mode not in api.EDIT_MODES:
                raise ApiError(400, f"mode: must be one of {api.EDIT_MODES}, got {mode!r}", "mode")
            source = read_image(await image.read(), "image", limits.max_image_pixels)
            kwargs = dict(
                negative_prompt=negative_prompt,
                num_images_per_prompt=n,
                seed=api.check_seed(seed),
                steps=steps,
                guidance=guidance,
                last_stage=api.last_stage(self.info, last_stage),
            )
            extra = dict(strength=strength, positive_prompt=positive_prompt, mixer=mixer)
            kwargs.update({k: v for k, v in extra.items() if v is not None})
            if mode == "inpaint":
                if mask is None:
                    raise ApiError(400, "mask: inpaint needs a mask image (white = repaint)", "mask")
                kwargs["mask"] = read_image(await mask.read(), "mask", limits.max_image_pixels)
            lora = self._lora_of(model)
            worker = self.handles["edits"]
            if lora is not None:
                worker = worker.options(multiplexed_model_id=lora)
            result = await self._bounded(self._call(worker.edit, mode, source, prompt, kwargs))
            if isinstance(result, ValueError):
                raise ApiError(400, str(result), _param_of(str(result)))
            images, settings, nsfw = result
            settings = {**settings, "mode": mode, "model": lora or config.model_name}
            return _with_nsfw(api.response(images, kwargs["seed"], settings), nsfw)

        async def _cascade(self, carry: Carry) -> Carry:
            last = carry.job.request.last_stage
            if config.layout == "single":
                carry = await self._call(self._routed("single", carry).run, carry)
                checker = self.handles["single"]
            else:
                for part in ("text", "stage1", "stage2", "stage3")[: last + 1]:
                    carry = await self._call(self._routed(part, carry).run, carry)
                    if carry.error:
                        return carry
                checker = self.handles["text"]  # the text deployment holds the safety checker
            if carry.error:
                return carry
            return await self._call(checker.check, carry, self.info.watermark_size(last))

        def _routed(self, part: str, carry: Carry):
            """The deployment's handle, routed by the request's LoRA (Ray Serve's multiplexed model id)
            where that deployment applies it."""
            handle = self.handles[part]
            if carry.job.lora is None or part not in ("single", "stage1", "edits"):
                return handle
            return handle.options(multiplexed_model_id=carry.job.lora)

        def _loras(self) -> list[str]:
            return lora_names(config.lora_dir)

        def _lora_of(self, model: str | None) -> str | None:
            """The LoRA a request's ``model`` names: None for the base model; 404 for an unknown name."""
            if model is None or model == config.model_name:
                return None
            names = self._loras()
            if model not in names:
                known = ", ".join([config.model_name, *names])
                raise ApiError(404, f"model: no model {model!r}; available: {known}", "model", "not_found_error")
            return model

        async def _call(self, method, *args):
            try:
                return await method.remote(*args)
            except BackPressureError:
                raise _busy("the server is at capacity (a stage's queue is full); retry shortly") from None
            except _UNAVAILABLE as err:
                log.warning("a stage replica failed during a request: %s", type(err).__name__)
                raise _busy("a stage replica failed while running this request; it is being restarted") from None

        async def _bounded(self, work):
            try:
                return await asyncio.wait_for(work, timeout=config.limits.request_timeout_s)
            except asyncio.TimeoutError:
                raise _busy(f"no answer within {config.limits.request_timeout_s:g} s; retry shortly") from None

    return Ingress


def _with_nsfw(payload: dict, nsfw: list[bool] | None) -> dict:
    """The safety checker's verdict per image (None where no checker ran)."""
    for i, item in enumerate(payload["data"]):
        item["nsfw"] = None if nsfw is None else bool(nsfw[i])
    return payload


def _busy(message: str) -> ApiError:
    return ApiError(503, message, None, "server_busy", None)


def _param_of(message: str) -> str | None:
    """The field a cascade RequestError is about (its messages start with or name it)."""
    for name in (
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
    ):
        if name in message:
            return name
    return None


__all__ = ["build_ingress", "make_app", "RequestValidationError", "Request", "JSONResponse"]
