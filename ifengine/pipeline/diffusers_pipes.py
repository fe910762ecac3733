"""diffusers' per-stage IF pipelines as thin views over one loaded ``Cascade``.

``IFPipeline``, ``IFImg2ImgPipeline``, ``IFInpaintingPipeline`` (stage I), ``IFSuperResolutionPipeline``,
``IFImg2ImgSuperResolutionPipeline``, ``IFInpaintingSuperResolutionPipeline`` (stage II) and
``StableDiffusionUpscalePipeline`` (stage III) take diffusers' ``from_pretrained`` and ``__call__``
arguments with diffusers' defaults, output ranges and ``return_dict``. A view holds no weights of its
own: ``from_cascade(cascade)`` views an existing cascade (same modules, runtime, engines and LoRA state),
``from_pretrained`` loads a one-stage cascade. ``ifengine.DiffusionPipeline.from_pretrained`` picks the
view a checkpoint's ``model_index.json`` names. The calls shared by all views live in ``StagePipeline``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from pathlib import Path
from typing import Any

import torch

from ..lora.api import LoraMixin
from ..schedule.ddpm import DDPMConfig
from ..stage.noise import make_generator
from ..stage.options import RequestError
from ..stage.stages import RunContext
from ..runtime.fetch import fetch_checked
from . import edit, embeds, idioms, stage_io, stage_run
from .cascade import Cascade
from .hub import HUB_ARGUMENTS, LoadArguments, local_path
from .safety import Safety

_UNSET = object()  # a keyword left out (None means "no such component", as in diffusers)


class SchedulerView:
    """A stage's scheduler as diffusers scripts touch it: ``.config`` and ``type(s).from_config(config,
    **overrides)``; assigning one to ``pipe.scheduler`` sets the stage's schedule (e.g. DreamBooth's
    ``variance_type="fixed_small"``)."""

    def __init__(self, config):
        self.schedule = config

    @property
    def config(self) -> dict:
        return {"_ifengine_class": type(self.schedule), **dataclasses.asdict(self.schedule)}

    @classmethod
    def from_config(cls, config: dict, **overrides) -> SchedulerView:
        kind = config.get("_ifengine_class", DDPMConfig)
        names = {f.name for f in dataclasses.fields(kind)}
        values = {k: v for k, v in {**config, **overrides}.items() if k in names}
        return cls(kind(**values))


class StagePipeline:
    """What every per-stage view shares: loading, components, placement calls, prompt encoding."""

    stage_no = 1
    _callback_sample = "intermediate_images"

    def __init__(self, cascade):
        self.cascade = cascade
        self.progress = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__:
            cls.__call__ = _with_lora_call_scale(cls.__dict__["__call__"])

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def from_cascade(cls, cascade):
        """A view of ``cascade``'s stage (no copy: the same modules, runtime and LoRA state)."""
        if (cascade.stage1, cascade.stage2, cascade.stage3)[cls.stage_no - 1] is None:
            raise RequestError(f"{cls.__name__} needs stage {cls.stage_no}, which this cascade has not loaded")
        return cls(cascade)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, torch_dtype=None, variant=None, text_encoder=_UNSET,
                        safety_checker=_UNSET, watermarker=_UNSET, feature_extractor=_UNSET, **kwargs):  # fmt: skip
        """diffusers' loading call: a Hub id (downloaded with ``revision``/``token``/``cache_dir``/...) or a
        local folder; ``torch_dtype`` (default float32), ``variant``, ``text_encoder=None`` (no T5: calls
        take ``prompt_embeds=``), ``safety_checker=None``, ``device_map="cuda"``. The weights load on the
        CPU unless ``device_map`` names a device, as diffusers does; ``.to("cuda")`` moves them."""
        args = LoadArguments.of(kwargs)
        path = local_path(pretrained_model_name_or_path, variant, args)
        if text_encoder is _UNSET:  # diffusers loads T5 when the folder ships one
            text_encoder = "auto" if (path / "text_encoder").is_dir() else None
        elif text_encoder is not None:
            raise RequestError("text_encoder takes None (load no T5); leave it out to load the folder's own")
        cascade = Cascade.from_pretrained(
            **{f"stage{cls.stage_no}": path},
            device=args.device or "cpu",
            torch_dtype=torch_dtype,
            variant=variant,
            text_encoder=text_encoder,
            safety=safety_checker is _UNSET,
        )
        checker = safety_checker if isinstance(safety_checker, Safety) else cascade.safety
        if checker is not None:  # stage I's checker handed on (the x4 docs example); watermarker=None: no logo
            cascade.safety = Safety(
                checker.heads, checker.processor, None if watermarker is None else checker.watermark
            )
        return cls(cascade)

    # -- components ----------------------------------------------------------------------------------
    @property
    def stage(self):
        return (self.cascade.stage1, self.cascade.stage2, self.cascade.stage3)[self.stage_no - 1]

    @property
    def unet(self):
        return self.stage.unet

    @property
    def scheduler(self) -> SchedulerView:
        return SchedulerView(self.stage.scheduler)

    @scheduler.setter
    def scheduler(self, view: SchedulerView) -> None:
        self.stage.scheduler = view.schedule if isinstance(view, SchedulerView) else view

    @property
    def text_encoder(self):
        return getattr(self.cascade.text, "model", None)

    @property
    def tokenizer(self):
        return getattr(self.cascade.text, "tokenizer", None)

    @property
    def safety_checker(self):
        return self.cascade.safety

    @property
    def feature_extractor(self):
        return getattr(self.cascade.safety, "processor", None)

    @property
    def watermarker(self):
        return getattr(self.cascade.safety, "watermark", None)

    @property
    def components(self) -> dict[str, Any]:
        names = ("text_encoder", "tokenizer", "unet", "scheduler", "safety_checker", "feature_extractor", "watermarker")
        return {n: getattr(self, n) for n in names}

    @property
    def device(self) -> torch.device:
        return self.cascade.device

    @property
    def dtype(self) -> torch.dtype:
        return self.cascade.dtype

    # -- placement and housekeeping ---------------------------------------------------------------------
    def to(self, device=None, dtype=None):
        idioms.move(self.cascade, device, dtype)
        return self

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device=None, vram_budget=None):
        idioms.offload(self.cascade, vram_budget, device if gpu_id is None else f"cuda:{gpu_id}")
        return self

    def enable_sequential_cpu_offload(self, gpu_id: int | None = None, device=None, vram_budget=None):
        idioms.offload(self.cascade, vram_budget, device if gpu_id is None else f"cuda:{gpu_id}", sequential=True)
        return self

    def set_progress_bar_config(self, disable: bool = False, **_tqdm_options) -> None:
        """Only ``disable`` is read (the stage loops draw their own bars)."""
        self.progress = not disable

    def __getattr__(self, name: str):
        # LoRA calls act on the cascade's one LoRA state, shared with every other view of it
        if not name.startswith("_") and hasattr(LoraMixin, name):
            return getattr(self.cascade, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- prompts -----------------------------------------------------------------------------------------
    def encode_prompt(self, prompt, do_classifier_free_guidance: bool = True, num_images_per_prompt: int = 1,
                      device=None, negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None,
                      clean_caption: bool = False):  # fmt: skip
        """diffusers' ``encode_prompt`` (its defaults: ``clean_caption=False``); returns a ``PromptEmbeds``
        that unpacks to ``(prompt_embeds, negative_prompt_embeds)``."""
        return embeds.encode_prompt(
            self.cascade,
            prompt,
            negative_prompt,
            clean_caption,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=do_classifier_free_guidance,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
        )

    # -- shared by the calls ------------------------------------------------------------------------------
    def _hooks(self, call: dict) -> dict:
        _refuse_unsupported(call, self.stage_no)
        return dict(
            on_step_end=call["callback_on_step_end"],
            tensor_inputs=call["callback_on_step_end_tensor_inputs"],
            callback=call["callback"],
            callback_steps=call["callback_steps"],
        )

    def _output(self, final, call: dict):
        images, nsfw = stage_io.if_output(self.cascade, final, self.stage_no, call["output_type"])
        out = stage_io.IFPipelineOutput(images, nsfw, None)
        return out if call["return_dict"] else out.to_tuple()


def _with_lora_call_scale(call):
    """``call`` under diffusers' per-call LoRA scale (``cross_attention_kwargs={"scale": s}``), applied to
    the cascade's shared LoRA state and restored after the call's own host sync (its outputs are fetched
    inside it). ``functools.wraps`` keeps diffusers' signature visible to ``inspect``."""
    signature = inspect.signature(call)

    @functools.wraps(call)
    def scaled(self, *args, **kwargs):
        given = signature.bind(self, *args, **kwargs).arguments.get("cross_attention_kwargs")
        with self.cascade.lora_call_scale(given):
            return call(self, *args, **kwargs)

    return scaled


def _refuse_unsupported(call: dict, stage_no: int) -> None:
    if stage_no == 3 and call.get("eta"):
        raise RequestError(f"eta={call['eta']!r}: the x4 upscaler runs deterministic DDIM here (eta=0 only)")
    if call.get("latents") is not None or call.get("clip_skip") is not None:
        raise RequestError("latents= and clip_skip= are not supported by ifengine's x4 upscaler")
    stage_io.check_output_type(call["output_type"])


def _call_args(frame_locals: dict) -> dict:
    return {k: v for k, v in frame_locals.items() if k not in ("self", "__class__")}


class IFPipeline(StagePipeline):
    """Stage I text-to-image (64 px), with diffusers' arguments and defaults."""

    stage_no = 1

    def __call__(self, prompt=None, num_inference_steps: int = 100, timesteps=None, guidance_scale: float = 7.0,
                 negative_prompt=None, num_images_per_prompt: int = 1, height=None, width=None, eta: float = 0.0,
                 generator=None, prompt_embeds=None, negative_prompt_embeds=None, output_type: str = "pil",
                 return_dict: bool = True, callback=None, callback_steps: int = 1, clean_caption: bool = True,
                 cross_attention_kwargs=None, *, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=None):  # fmt: skip
        call = _call_args(locals())
        hooks, c = self._hooks(call), self.cascade
        if c.stage1 is None:
            raise RequestError("IFPipeline needs a stage I checkpoint")
        text, negative, given = embeds.prepare(c, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        request = c.make_request(
            text, negative_prompt=negative, height=height, width=width, num_images_per_prompt=num_images_per_prompt,
            steps=(num_inference_steps,), guidance=(guidance_scale,), timesteps=(timesteps, None, None),
            last_stage=1, output_type="pt",
        )  # fmt: skip
        request = embeds.attach(c, request, given)
        steps = stage_run.if_steps(c.stage1, request.stages[0])
        generator, _ = make_generator(generator, None)
        on_step = stage_io.step_hook(self, steps, {}, **hooks)
        outs = c._run(request, RunContext(c.device, c.dtype, generator, self.progress, on_step), clean_caption)
        return self._output(fetch_checked(outs, c.encoders())[0], call)


class _EditPipeline(StagePipeline):
    stage_no = 1
    mode = "img2img"

    def _edit(self, call: dict, mask=None):
        hooks, c = self._hooks(call), self.cascade
        opts = stage_run.stage_options(
            1, call["num_inference_steps"], call["guidance_scale"], None, call["timesteps"], c.defaults
        )
        on_step = stage_io.step_hook(self, stage_run.if_steps(c.stage1, opts, call["strength"]), {}, **hooks)
        generator, _ = make_generator(call["generator"], None)
        result = edit.run(
            c, self.mode, call["image"], call["prompt"], mask=mask, strength=call["strength"],
            negative_prompt=call["negative_prompt"], num_images_per_prompt=call["num_images_per_prompt"],
            generator=generator, steps=(opts.steps,), guidance=(opts.guidance,), timesteps=(opts.timesteps, None, None),
            last_stage=1, output_type="pt", clean_caption=call["clean_caption"], progress=self.progress,
            prompt_embeds=call["prompt_embeds"], negative_prompt_embeds=call["negative_prompt_embeds"], on_step=on_step,
        )  # fmt: skip
        return self._output(result.stages[0], call)


class IFImg2ImgPipeline(_EditPipeline):
    """Stage I image-to-image: ``image`` noised part way (``strength``) and denoised with the prompt."""

    mode = "img2img"

    def __call__(self, prompt=None, image=None, strength: float = 0.7, num_inference_steps: int = 80,
                 timesteps=None, guidance_scale: float = 10.0, negative_prompt=None, num_images_per_prompt: int = 1,
                 eta: float = 0.0, generator=None, prompt_embeds=None, negative_prompt_embeds=None,
                 output_type: str = "pil", return_dict: bool = True, callback=None, callback_steps: int = 1,
                 clean_caption: bool = True, cross_attention_kwargs=None, *, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=None):  # fmt: skip
        return self._edit(_call_args(locals()))


class IFInpaintingPipeline(_EditPipeline):
    """Stage I inpainting: repaint where ``mask_image`` is white."""

    mode = "inpaint"

    def __call__(self, prompt=None, image=None, mask_image=None, strength: float = 1.0,
                 num_inference_steps: int = 50, timesteps=None, guidance_scale: float = 7.0, negative_prompt=None,
                 num_images_per_prompt: int = 1, eta: float = 0.0, generator=None, prompt_embeds=None,
                 negative_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True, callback=None,
                 callback_steps: int = 1, clean_caption: bool = True, cross_attention_kwargs=None, *,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=None):  # fmt: skip
        if mask_image is None:
            raise RequestError("mask_image= is required (white = repaint)")
        return self._edit(_call_args(locals()), mask=mask_image)


class _SRPipeline(StagePipeline):
    stage_no = 2

    def _sr(self, call: dict, original_image=None, mask_image=None):
        hooks, c = self._hooks(call), self.cascade
        opts = stage_run.stage_options(
            2, call["num_inference_steps"], call["guidance_scale"], call["noise_level"], call["timesteps"], c.defaults
        )
        text = stage_run.if_text(
            c, call["prompt"], call["negative_prompt"], call["prompt_embeds"], call["negative_prompt_embeds"],
            call["num_images_per_prompt"], opts.cfg, call["clean_caption"],
        )  # fmt: skip
        start, size = None, None
        if original_image is not None:
            start, size = stage_run.sr_start(self, original_image, mask_image, call["strength"], len(text.prompts))
        sample = c.stage2.unet.config.sample_size
        size = size or (call.get("height") or sample, call.get("width") or sample)
        final = stage_run.run_sr(self, text, opts, call["image"], size, call["generator"], hooks, start)
        return self._output(final, call)


class IFSuperResolutionPipeline(_SRPipeline):
    """Stage II alone: upscale ``image`` (a 64 px image: stage I's output or the user's own) to 256 px."""

    def __call__(self, prompt=None, height=None, width=None, image=None, num_inference_steps: int = 50,
                 timesteps=None, guidance_scale: float = 4.0, negative_prompt=None, num_images_per_prompt: int = 1,
                 eta: float = 0.0, generator=None, prompt_embeds=None, negative_prompt_embeds=None,
                 output_type: str = "pil", return_dict: bool = True, callback=None, callback_steps: int = 1,
                 cross_attention_kwargs=None, noise_level: int = 250, clean_caption: bool = True, *,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=None):  # fmt: skip
        return self._sr(_call_args(locals()))


class IFImg2ImgSuperResolutionPipeline(_SRPipeline):
    """Stage II image-to-image: ``original_image`` redone at 256 px, conditioned on the 64 px ``image``."""

    def __call__(self, image, original_image=None, strength: float = 0.8, prompt=None,
                 num_inference_steps: int = 50, timesteps=None, guidance_scale: float = 4.0, negative_prompt=None,
                 num_images_per_prompt: int = 1, eta: float = 0.0, generator=None, prompt_embeds=None,
                 negative_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True, callback=None,
                 callback_steps: int = 1, cross_attention_kwargs=None, noise_level: int = 250,
                 clean_caption: bool = True, *, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=None):  # fmt: skip
        if original_image is None:
            raise RequestError("original_image= is required: the full-resolution source of the edit")
        return self._sr(_call_args(locals()), original_image)


class IFInpaintingSuperResolutionPipeline(_SRPipeline):
    """Stage II inpainting: repaint ``original_image`` at 256 px where ``mask_image`` is white."""

    def __call__(self, image, original_image=None, mask_image=None, strength: float = 0.8, prompt=None,
                 num_inference_steps: int = 100, timesteps=None, guidance_scale: float = 4.0, negative_prompt=None,
                 num_images_per_prompt: int = 1, eta: float = 0.0, generator=None, prompt_embeds=None,
                 negative_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True, callback=None,
                 callback_steps: int = 1, cross_attention_kwargs=None, noise_level: int = 0,
                 clean_caption: bool = True, *, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=None):  # fmt: skip
        if original_image is None or mask_image is None:
            raise RequestError("original_image= and mask_image= are required for super-resolution inpainting")
        return self._sr(_call_args(locals()), original_image, mask_image)


class StableDiffusionUpscalePipeline(StagePipeline):
    """Stage III alone: the x4 upscaler on ``image`` with its own CLIP prompt (no T5)."""

    stage_no = 3

    @property
    def vae(self):
        return self.stage.vae

    @property
    def text_encoder(self):
        return getattr(self.stage.text, "model", None)

    @property
    def tokenizer(self):
        return getattr(self.stage.text, "tokenizer", None)

    @property
    def low_res_scheduler(self) -> SchedulerView:
        return SchedulerView(self.stage.low_res)

    @property
    def components(self) -> dict[str, Any]:
        return {**super().components, "vae": self.vae, "low_res_scheduler": self.low_res_scheduler}

    def encode_prompt(self, *args, **kwargs):
        raise RequestError("the x4 upscaler encodes its prompt with CLIP inside the call: pass prompt= text")

    def __call__(self, prompt=None, image=None, num_inference_steps: int = 75, guidance_scale: float = 9.0,
                 noise_level: int = 20, negative_prompt=None, num_images_per_prompt: int = 1, eta: float = 0.0,
                 generator=None, latents=None, prompt_embeds=None, negative_prompt_embeds=None,
                 output_type: str = "pil", return_dict: bool = True, callback=None, callback_steps: int = 1,
                 cross_attention_kwargs=None, clip_skip=None, *, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=None):  # fmt: skip
        call = _call_args(locals())
        hooks, c = self._hooks(call), self.cascade
        opts = stage_run.stage_options(3, num_inference_steps, guidance_scale, noise_level, None, c.defaults)
        text = stage_run.x4_text(c, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                 num_images_per_prompt)  # fmt: skip
        final, lat = stage_run.run_x4(self, text, opts, image, generator, hooks)
        images, nsfw = stage_io.x4_output(c, final, lat, output_type)
        out = stage_io.UpscalePipelineOutput(images, nsfw)
        return out if return_dict else out.to_tuple()


VIEWS = {
    cls.__name__: cls
    for cls in (
        IFPipeline,
        IFImg2ImgPipeline,
        IFInpaintingPipeline,
        IFSuperResolutionPipeline,
        IFImg2ImgSuperResolutionPipeline,
        IFInpaintingSuperResolutionPipeline,
        StableDiffusionUpscalePipeline,
    )
}


class DiffusionPipeline:
    """``DiffusionPipeline.from_pretrained(path_or_id, ...)``: the view its ``model_index.json`` names."""

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path, **kwargs) -> StagePipeline:
        hub = tuple((k, kwargs.pop(k)) for k in HUB_ARGUMENTS if kwargs.get(k) is not None)
        path = local_path(pretrained_model_name_or_path, kwargs.get("variant"), LoadArguments(hub))
        index = Path(path) / "model_index.json"
        if not index.is_file():
            raise RequestError(f"{pretrained_model_name_or_path}: no model_index.json, so no pipeline class to load")
        name = json.loads(index.read_text()).get("_class_name")
        if name not in VIEWS:
            raise RequestError(f"{pretrained_model_name_or_path} is a {name!r}; ifengine loads {', '.join(VIEWS)}")
        return VIEWS[name].from_pretrained(path, **kwargs)
