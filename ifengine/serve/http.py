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
import math
import time
from collections import Counter
from typing import Annotated

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from ..pipeline.images import convert
from ..pipeline.inputs import target_size
from . import api
from .api import ApiError, GenerationRequest, ImagesResponse
from .config import ServeConfig
from .budget import Budget
from .guards import install_guards
from .models import ModelInfo, checkpoint_paths, lora_names
from .edit_jobs import EditForm, edit_job, edit_settings, edit_shape
from .uploads import read_image, read_mask
from .work import Carry, start

log = logging.getLogger(__name__)
_UNAVAILABLE = (
    RayActorError,
    ActorDiedError,
    ActorUnavailableError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
EDIT_FIELDS = frozenset(
    [
        "image",
        "mask",
        "prompt",
        "mode",
        "n",
        "size",
        "quality",
        "model",
        "user",
        "response_format",
        "seed",
        "steps",
        "guidance",
        "strength",
        "negative_prompt",
        "last_stage",
        "positive_prompt",
        "mixer",
    ]
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
            self.created = int(time.time())
            self.budget = _budget(config)
            self._ready = (0.0, None)  # (when, the deployments not ready)

        @app.get("/health")
        async def health(self):
            """Ready: 200 only when every deployment of the application has its replicas running."""
            waiting = await self._not_ready()
            if waiting:
                body = ApiError(503, f"not ready: {', '.join(waiting)}", None, "server_busy").body()
                retry = str(config.limits.retry_after_s)
                return JSONResponse({**body, "status": "starting"}, status_code=503, headers={"Retry-After": retry})
            return {"status": "ok", "layout": config.layout}

        @app.get("/ready")
        async def ready(self):
            return await self.health()

        async def _not_ready(self) -> list[str]:
            when, waiting = self._ready
            if waiting is None or time.monotonic() - when > 1.0:  # the controller is asked at most once a second
                waiting = await asyncio.to_thread(_deployments_not_ready)
                self._ready = (time.monotonic(), waiting)
            return waiting

        def _model(self) -> dict:
            return {
                "id": config.model_name,
                "object": "model",
                "created": self.created,
                "owned_by": "ifengine",
                "stages": self.info.stages,
            }

        @app.get("/v1/models")
        async def models(self) -> dict:
            loras = [{**self._model(), "id": n, "lora": True} for n in self._loras()]
            return {"object": "list", "data": [self._model(), *loras]}

        @app.get("/v1/models/{model_id}")
        async def model(self, model_id: str) -> dict:
            if model_id == config.model_name:
                return self._model()
            if model_id in self._loras():
                return {**self._model(), "id": model_id, "lora": True}
            known = ", ".join([config.model_name, *self._loras()])
            message = f"model: no model {model_id[:100]!r}; available: {known}"
            raise ApiError(404, message, "model", code="model_not_found")

        @app.get("/v1/stats")
        async def stats(self) -> dict:
            """Images per stage call, as the stages actually ran them (this ingress replica's requests)."""
            return {"batch_sizes": {k: dict(sorted(v.items())) for k, v in self.batches.items()}}

        @app.post("/v1/images/generations", response_model=ImagesResponse)
        async def generations(self, body: GenerationRequest) -> dict:
            job = dataclasses.replace(api.to_job(body, self.info, config.limits), lora=self._lora_of(body.model))
            r = job.request
            await self._check_budget(r.batch, r.height, r.width, r.last_stage, r.stages, "size")
            return await self._answer(job)

        async def _answer(self, job, extra: dict | None = None) -> dict:
            """Walk ``job`` through the deployments; its images with settings (and ``extra`` ones) and nsfw flags."""
            carry = await self._bounded(self._cascade(start(job)))
            if carry.error:
                raise ApiError(500, carry.error, None, "server_error")  # the guards add Retry-After
            for stage, size in carry.batched.items():
                self.batches.setdefault(stage, Counter())[size] += 1
            settings = {
                **api.job_settings(job),
                **(extra or {}),
                "batched": carry.batched,
                "model": job.lora or config.model_name,
            }
            images = carry.images if carry.images is not None else convert(carry.image, "pil")
            return _with_nsfw(api.response(images, job.seed, settings), carry.nsfw)

        @app.post("/v1/images/edits", response_model=ImagesResponse)
        async def edits(
            self,
            request: Request,
            image: Annotated[UploadFile, File(description="the source image (PNG/JPEG)")],
            prompt: Annotated[str, Form()],
            mask: Annotated[
                UploadFile | None, File(description="OpenAI's mask: transparent = edit (or greyscale: white = edit)")
            ] = None,
            mode: Annotated[str | None, Form(description="img2img, inpaint or style (mask given: inpaint)")] = None,
            n: Annotated[int, Form()] = 1,
            size: Annotated[str | None, Form(description="'auto' or the size the source gives")] = None,
            quality: Annotated[str | None, Form(description="accepted for OpenAI clients; ignored")] = None,
            model: Annotated[str | None, Form(description="the served model or a LoRA from /v1/models")] = None,
            user: Annotated[str | None, Form(description="accepted for OpenAI clients; ignored")] = None,
            response_format: Annotated[str, Form()] = "b64_json",
            seed: Annotated[int | None, Form()] = None,
            steps: Annotated[int | None, Form()] = None,
            guidance: Annotated[float | None, Form()] = None,
            strength: Annotated[float | None, Form()] = None,
            negative_prompt: Annotated[str | None, Form()] = None,
            last_stage: Annotated[int | None, Form()] = None,
            positive_prompt: Annotated[str | None, Form(description="style: mixed into the guidance")] = None,
            mixer: Annotated[float | None, Form(description="style: weight of positive_prompt")] = None,
        ) -> dict:
            limits = config.limits
            unknown = sorted(set((await request.form()).keys()) - EDIT_FIELDS)
            if unknown:
                raise ApiError(400, f"{unknown[0]}: unknown field; known: {sorted(EDIT_FIELDS)}", unknown[0][:64])
            texts = dict(prompt=prompt, negative_prompt=negative_prompt, positive_prompt=positive_prompt, size=size)
            api.check_text({**texts, "quality": quality, "model": model, "user": user, "mode": mode}, limits)
            api.check_common(prompt, n, response_format, steps, limits)
            source = read_image(await image.read(), "image", limits.max_image_pixels)
            mask_image = read_mask(await mask.read(), limits.max_image_pixels) if mask is not None else None
            mode = mode or ("inpaint" if mask_image is not None else "img2img")
            if mode not in api.EDIT_MODES:
                raise ApiError(400, f"mode: must be one of {api.EDIT_MODES}, got {mode!r}", "mode")
            if mode == "inpaint" and mask_image is None:
                raise ApiError(400, "mask: inpaint needs a mask image (transparent = edit)", "mask")
            last = api.last_stage(self.info, last_stage)
            self._edit_size(source, last, size)
            form = EditForm(
                mode, source, mask_image, prompt, n, steps, guidance, strength, negative_prompt, positive_prompt, mixer
            )
            # resizing a large upload is CPU work: off the event loop, which keeps taking requests
            job = await asyncio.to_thread(edit_job, self.info, form, last, api.check_seed(seed), self._lora_of(model))
            r = job.request
            await self._check_budget(r.batch, r.height, r.width, r.last_stage, r.stages, "image")
            return await self._answer(job, edit_settings(job))

        def _edit_size(self, source, last: int, size: str | None) -> None:
            """Refuse a source whose stage I side is over the limits, or a ``size`` other than the one it makes."""
            multiple = math.lcm(8, self.info.downsample[1])
            w1, h1 = target_size(source.width, source.height, self.info.sample_size, multiple)
            short, last_multiple = edit_shape(self.info, "img2img", last).resolutions[-1]
            w, h = target_size(source.width, source.height, short, last_multiple)  # the last IF stage's size
            x4 = 4 if last == 3 else 1  # stage III upscales stage II's image four times
            made = f"{w * x4}x{h * x4}"
            if max(h1, w1) > config.limits.max_side:
                message = (
                    f"a {source.width}x{source.height} source makes a {made} image (stage I side {max(h1, w1)} px); "
                    f"at most {config.limits.max_side} are served: send an image nearer to square"
                )
                raise ApiError(400, f"image: {message}", "image")
            if size not in (None, "auto", made):
                message = f"edits keep the source's shape at the cascade's size: this image makes {made}"
                raise ApiError(400, f"size: {size!r} cannot be served; {message}; send 'auto' or {made!r}", "size")

        async def _check_budget(self, batch, height, width, last, stages, param):
            if self.budget is None:
                return
            steps = tuple(s.steps for s in stages)
            multiple = api.size_multiple(self.info, last)
            await asyncio.to_thread(
                self.budget.check,
                batch=batch,
                height=height,
                width=width,
                last_stage=last,
                steps=steps,
                multiple=multiple,
                param=param,
            )

        async def _cascade(self, carry: Carry) -> Carry:
            last = carry.job.request.last_stage
            if config.layout == "single":  # the replica checked its own images (work.checked_cascade_batch)
                return await self._call(self._routed("single", carry).run, carry)
            for part in ("text", "stage1", "stage2", "stage3")[: last + 1]:
                carry = await self._call(self._routed(part, carry).run, carry)
                if carry.error:
                    return carry
            # the text deployment holds the safety checker
            return await self._call(self.handles["text"].check, carry, self.info.watermark_size(last))

        def _routed(self, part: str, carry: Carry):
            """The deployment's handle, routed by the request's LoRA (Ray Serve's multiplexed model id)
            where that deployment applies it."""
            handle = self.handles[part]
            if carry.job.lora is None or part not in ("single", "stage1"):
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
                message = f"model: no model {model[:100]!r}; available: {known}"
                raise ApiError(404, message, "model", code="model_not_found")
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


def _budget(config: ServeConfig) -> Budget | None:
    """The memory check of the ingress (None for exported graphs or engines: no torch modules to model)."""
    paths = checkpoint_paths(config.source)
    if 1 not in paths or config.source.uses_graphs:
        return None
    parts = (config.text, config.stage1, config.stage2, config.stage3, config.single)
    on_gpu = any(p.num_gpus > 0 for p in parts) or config.source.device == "cuda"
    dtype = _dtype(config.source.dtype, on_gpu)
    return Budget(paths, dtype, on_gpu, config.limits.request_memory)


def _dtype(name, on_gpu: bool):
    import torch

    if name is not None:
        return getattr(torch, str(name))
    return torch.float16 if on_gpu else torch.float32


def _deployments_not_ready() -> list[str]:
    """Deployments of this application whose replicas are not all running (per Ray Serve's controller)."""
    try:
        status = serve.status()
    except Exception as err:  # the controller itself unreachable: not ready, say why
        return [f"controller ({type(err).__name__})"]
    out = []
    for app_status in status.applications.values():
        for name, dep in app_status.deployments.items():
            if str(getattr(dep.status, "value", dep.status)) != "HEALTHY":
                out.append(f"{name} ({getattr(dep.status, 'value', dep.status)})")
    return out


def _with_nsfw(payload: dict, nsfw: list[bool] | None) -> dict:
    """The safety checker's verdict per image (None where no checker ran)."""
    for i, item in enumerate(payload["data"]):
        item["nsfw"] = None if nsfw is None else bool(nsfw[i])
    return payload


def _busy(message: str) -> ApiError:
    return ApiError(503, message, None, "server_busy", None)


__all__ = ["build_ingress", "make_app", "RequestValidationError", "Request", "JSONResponse"]
