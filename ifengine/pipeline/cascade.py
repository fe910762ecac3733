"""The user-facing cascade: prompt(s) -> T5 -> stage I -> stage II -> stage III."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Mapping, Sequence

import torch

from ..lora.api import LoraMixin
from ..text.clean import preprocess
from ..text.encoder import PromptEncoder
from . import aliases, edit, embeds, hub, limits, metadata
from ..stage import options, sizes
from ..runtime.fetch import fetch_checked
from ..runtime.options import DEFAULTS as RUNTIME_DEFAULTS, RuntimeOptions
from .images import convert
from .loader import load_parts, placement
from .many import ManyOutput, generate_many
from .source import ModelSource
from ..stage.noise import make_generator
from ..stage.options import Request, RequestError
from ..stage import stages
from ..stage.components import CascadeParts
from ..stage.seam import StageRunner
from ..stage.stages import IFStage, RunContext, X4Stage
from ..backends.traced.executor import attach_executor
from ..runtime.api import configure

log = logging.getLogger(__name__)
_GIVEN = object()  # a keyword left out (None has a meaning of its own)


@dataclass
class CascadeOutput:
    images: Any  # list of PIL images, NHWC float numpy array or NCHW tensor, in [0, 1]
    stages: list[torch.Tensor]  # each stage's output, NCHW in [-1, 1]
    seed: int | None = None
    nsfw_detected: list[bool] | None = None
    settings: dict = field(default_factory=dict)


class Cascade(LoraMixin):
    """DeepFloyd IF on our own modules. Any stage may be absent; the run stops at the last one present.
    LoRA: ``load_lora_weights``/``set_adapters``/``fuse_lora`` (ifengine/lora)."""

    def __init__(
        self,
        *,
        text: PromptEncoder | None,
        stage1: IFStage | None,
        stage2: IFStage | None = None,
        stage3: X4Stage | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        safety=None,
        defaults: options.RunDefaults = options.RunDefaults(),  # noqa: B008 - frozen, safe to share
        executor: str = "auto",
        sources: Mapping[int, str] | None = None,
        runtime=None,
    ):
        """``sources``: what each stage was loaded from (stage -> name), recorded in image metadata.
        ``runtime``: the GPU runtime that runs the stage loops (see ``set_runtime``); None: plain loops."""
        self.text, self.stage1, self.stage2, self.stage3 = text, stage1, stage2, stage3
        self.device, self.dtype, self.safety = torch.device(device), dtype, safety
        self.defaults = defaults
        self.sources: dict[int, str] = dict(sources or {})
        self.runtime = runtime
        for encoder in self.encoders():
            # their finite checks travel with the images (runtime/fetch.py): encoding never waits
            encoder.defer_checks = True
        self.set_executor(executor)

    def encoders(self) -> list[PromptEncoder]:
        """The text encoders (T5, and stage III's CLIP) that are loaded."""
        return [e for e in (self.text, getattr(self.stage3, "text", None)) if e is not None]

    def set_executor(self, executor: str) -> Cascade:
        """How denoising steps run: "eager" (module calls), "traced" (one frozen TorchScript graph per step,
        text-only work hoisted out of the loop; see backends/traced/executor.py) or "auto" (traced where measured
        equal and faster: CPU runs of 20+ steps). Stages run by another backend are left as they are."""

        for stage in (self.stage1, self.stage2, self.stage3):
            attach_executor(stage, executor)
        return self

    @classmethod
    def from_pretrained(
        cls,
        stage1: str | Path | None = None,
        stage2: str | Path | None = None,
        stage3: str | Path | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        variant: str | None = None,
        text_dtype: torch.dtype | None = None,
        safety: bool = True,
        vram_budget: int | str | None = None,
        cuda_graphs: bool | None = None,
        compile: bool = False,
        channels_last: bool = False,
        weights: str = "auto",
        throughput: bool = False,
        max_batch: int = 1,
        max_size: tuple[int | None, int | None] | None = None,
        torch_dtype: torch.dtype | None = None,
        text_encoder: str | None = "auto",
        runtime: RuntimeOptions | None = None,
        safety_checker=_GIVEN,
        **hub_arguments,
    ) -> Cascade:
        """Load checkpoints given as local folders in the Hub layout or as Hub ids.

        On a CUDA device the GPU runtime is set up too (CUDA graphs unless ``cuda_graphs=False``);
        ``vram_budget`` ("8GiB", ...) loads on the host first and lets the planner place every weight.
        ``weights``: "native" (``dtype``), "int8" (weight-only U-Nets), or "auto": int8 only for U-Nets
        the budget would otherwise stream every step. ``throughput=True`` builds the runtime for
        ``generate_many`` with overlapped stages (every U-Net then stays resident). ``max_batch``: the most
        images one call (or one ``generate_many`` batch) makes, and ``max_size`` its largest stage I
        (height, width); buffers and the memory plan are sized for them. ``runtime``: a ``RuntimeOptions``
        with all of these (and the rest of the runtime's switches); the keywords above override it.

        diffusers spellings: ``torch_dtype`` is ``dtype`` (float32 when neither is given);
        ``text_encoder=None`` loads no T5 (calls then take ``prompt_embeds=``, see ``encode_prompt``);
        ``safety_checker=None`` is ``safety=False``; ``revision``, ``token``, ``cache_dir``,
        ``local_files_only``, ``force_download`` and ``proxies`` go to ``huggingface_hub`` for Hub ids,
        ``use_safetensors`` and ``device_map`` (a device name) are checked (see ``pipeline/hub.py``).
        """
        dtype = aliases.load_dtype(dtype, torch_dtype, torch.float32)
        if safety_checker is None:
            safety = False
        elif safety_checker is not _GIVEN:
            raise ValueError("safety_checker takes None (no checker); leave it out to load the checkpoint's own")
        load = hub.LoadArguments.of(dict(hub_arguments))
        device = load.device or device
        stage1, stage2, stage3 = (
            None if s is None else hub.local_path(s, variant, load) if load.hub else s for s in (stage1, stage2, stage3)
        )
        if text_encoder not in ("auto", None):
            raise ValueError(f"text_encoder takes None (load no T5) or 'auto', got {text_encoder!r}")
        if stage1 is None and stage2 is None and stage3 is None:
            raise ValueError("give at least one checkpoint (stage1=, stage2=, stage3=)")
        if text_dtype is not None:
            limits.check_dtype(text_dtype, "text_dtype")
        if variant is not None and not isinstance(variant, str):
            raise TypeError(f"variant must be a string such as 'fp16' or None, got {variant!r}")
        source = ModelSource(stage1=stage1, stage2=stage2, stage3=stage3, variant=variant)
        runtime = RuntimeOptions.of(  # checked before anything loads
            runtime,
            vram_budget=vram_budget,
            cuda_graphs=cuda_graphs,
            compile=compile,
            channels_last=channels_last,
            weights=weights,
            throughput=throughput,
            max_batch=max_batch,
            max_size=max_size,
        )
        return open_cascade(
            source,
            device=device,
            dtype=dtype,
            safety=safety,
            text_encoder=text_encoder,
            text_dtype=text_dtype,
            runtime=runtime,
        )

    @classmethod
    def from_parts(cls, parts: CascadeParts) -> Cascade:
        """A cascade over loaded parts (``pipeline.loader``)."""
        return cls(
            text=parts.text,
            stage1=parts.stage1,
            stage2=parts.stage2,
            stage3=parts.stage3,
            device=parts.device,
            dtype=parts.dtype,
            safety=parts.safety,
            defaults=parts.defaults,
            sources=dict(parts.sources),
        )

    def use_runtime(self, options: RuntimeOptions | None = None, **keywords) -> Cascade:
        """Run stages through the lean runtime (ifengine/runtime): static buffers, one pinned upload per
        stage, CUDA graphs per step shape, and with ``vram_budget`` the memory planner's placement.
        ``options`` or its fields as keywords (``vram_budget=``, ``cuda_graphs=``, ...): see RuntimeOptions."""

        configure(self, options, **keywords)
        return self

    def set_runtime(self, runtime) -> Cascade:
        """Route the stage loops through ``runtime`` (``configure`` attaches the one it builds); None
        returns to the plain torch loops."""
        self.runtime = runtime
        return self

    @property
    def runner(self) -> StageRunner:
        """What runs the stage loops: the runtime when configured, else the plain torch loops."""
        return self.runtime if self.runtime is not None else stages.EAGER

    @classmethod
    def from_artifacts(cls, artifacts: str | Path, backend: str = "onnxruntime", providers=None, **kwargs) -> Cascade:
        """Run from exported graphs (``ifengine export``) on ONNX Runtime; ``providers``: "cpu" (default),
        "cuda", "tensorrt" (onnxruntime-gpu's execution providers) or ORT provider names. Other keyword
        arguments: precision (default: what was exported), use_step_graphs, verify (see
        backends/onnxruntime/load.py) and ``runtime`` (False: the plain stage loops, not the GPU runner)."""
        if backend != "onnxruntime":
            raise ValueError(f"unknown backend {backend!r}; from_artifacts supports 'onnxruntime'")
        graph_runtime = kwargs.pop("runtime", True)  # False: the plain stage loops
        source = ModelSource(artifacts=str(artifacts))
        return open_cascade(source, device="cpu", providers=providers, graph_runtime=graph_runtime, **kwargs)

    @classmethod
    def from_engines(
        cls, engines: str | Path, artifacts: str | Path | None = None, *, device: int | str | None = None, **kwargs
    ) -> Cascade:
        """Run on engines built by ``ifengine build`` (TensorRT engines or Inductor packages, verified
        against the engine cache first) on ``device`` (a CUDA index, a device name, or None: the GPU when
        one is visible, else the CPU for CPU-compiled packages); components without an engine come from
        ``stage1=``/``stage2=``/``stage3=`` checkpoints (torch) or, failing that, from the graphs under
        ``artifacts`` (ONNX Runtime). See backends/tensorrt/load.py for the other keyword arguments."""
        checkpoints = {n: kwargs.pop(n, None) for n in ("stage1", "stage2", "stage3")}
        source = ModelSource(
            engines=str(engines),
            artifacts=None if artifacts is None else str(artifacts),
            variant=kwargs.pop("variant", None),
            **checkpoints,
        )
        return open_cascade(source, device=f"cuda:{device}" if isinstance(device, int) else device, **kwargs)

    @property
    def loaded_stages(self) -> tuple[int, ...]:
        return tuple(n for n, s in ((1, self.stage1), (2, self.stage2), (3, self.stage3)) if s is not None)

    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        generator=None,
        seed: int | None = None,
        steps=None,
        guidance=None,
        noise_level=None,
        timesteps=(None, None, None),
        last_stage: int | None = None,
        output_type: str = "pil",
        clean_caption: bool = True,
        progress: bool = True,
        num_inference_steps=None,
        guidance_scale=None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        cross_attention_kwargs=None,
    ) -> CascadeOutput:
        """Text to image. ``steps``/``guidance``/``noise_level`` take one value for every stage or one per
        stage; None means the cascade's defaults ((100, 50, 75), (7, 4, 9), (250, 20) for real weights).
        diffusers' ``num_inference_steps``/``guidance_scale`` are aliases of ``steps``/``guidance``;
        ``prompt_embeds``/``negative_prompt_embeds`` (from ``encode_prompt``) replace the text;
        ``cross_attention_kwargs={"scale": s}`` scales the LoRA adapters for this call (see ifengine/lora)."""
        steps, guidance = aliases.call_settings(steps, num_inference_steps, guidance, guidance_scale)
        self.require_stage1("text-to-image")
        prompt, negative_prompt, given = embeds.prepare(
            self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds
        )
        request = self.make_request(
            prompt,
            negative_prompt=negative_prompt,
            height=height,
            width=width,
            num_images_per_prompt=num_images_per_prompt,
            steps=steps,
            guidance=guidance,
            noise_level=noise_level,
            timesteps=timesteps,
            last_stage=last_stage,
            output_type=output_type,
        )
        request = embeds.attach(self, request, given)
        generator, seed = make_generator(generator, seed)
        ctx = RunContext(self.device, self.dtype, generator, progress)
        with self.lora_call_scale(cross_attention_kwargs):  # restored after finish's host sync
            return self.finish(request, self._run(request, ctx, clean_caption), seed)

    def generate_many(
        self, prompts: Sequence[str] | None = None, *, batch_size: int = 1, seed: int | None = None, **kwargs
    ) -> ManyOutput:
        """One image per prompt, in batches of ``batch_size``; reports images per second. With a throughput
        runtime (``from_pretrained(..., throughput=True)`` on a GPU) stage I of the next batch overlaps
        stages II/III of the current one. Batch k uses ``seed + k``. ``prompt_embeds=`` (from
        ``encode_prompt``) instead of prompts: one image per row, batches one after another. Other keyword
        arguments: negative_prompt, height, width, steps, guidance, noise_level, clean_caption, output_type."""
        return generate_many(self, prompts, batch_size=batch_size, seed=seed, **kwargs)

    def img2img(self, image, prompt: str | Sequence[str] | None = None, strength=0.7, **kwargs) -> CascadeOutput:
        """Zero-shot image to image: the source is noised part way (``strength``; a pair sets stage I and
        II) and denoised with ``prompt``; other keyword arguments as ``__call__``."""
        return edit.run(self, "img2img", image, prompt, strength=strength, **kwargs)

    def inpaint(
        self, image, mask=None, prompt: str | Sequence[str] | None = None, strength=1.0, *, mask_image=None, **kwargs
    ) -> CascadeOutput:
        """Repaint where ``mask`` (diffusers' ``mask_image=``) is white; pixels outside it stay the source's."""
        mask = aliases.merge("mask", mask, "mask_image", mask_image)
        return edit.run(self, "inpaint", image, prompt, mask=mask, strength=strength, **kwargs)

    def style_transfer(
        self,
        image,
        style_prompt: str | Sequence[str] | None = None,
        positive_prompt=None,
        mixer=None,
        strength=None,
        **kwargs,
    ) -> CascadeOutput:
        """Restyle ``image`` with ``style_prompt`` through stages I-II(-III), keeping its layout; an
        optional ``positive_prompt`` is mixed into the guidance with weight ``mixer`` (default 0.5)."""
        return edit.run(
            self,
            "style",
            image,
            style_prompt,
            positive_prompt=positive_prompt,
            mixer=mixer,
            strength=strength,
            **kwargs,
        )

    def encode_prompt(
        self,
        prompts,
        negative_prompts=None,
        clean_caption: bool = True,
        *,
        negative_prompt=None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
    ) -> embeds.PromptEmbeds:
        """T5 embeddings of ``prompts`` and ``negative_prompts`` (default ""), and stage III's CLIP ones
        when it is loaded, for ``prompt_embeds=`` on any call; unpacks to ``(prompt_embeds,
        negative_prompt_embeds)`` as diffusers' ``encode_prompt``. One row per prompt unless
        ``num_images_per_prompt`` repeats them. diffusers' ``negative_prompt=`` is ``negative_prompts``;
        unlike diffusers' ``encode_prompt`` (False) captions are cleaned by default here, as in every call."""
        negative_prompts = aliases.merge("negative_prompts", negative_prompts, "negative_prompt", negative_prompt)
        return embeds.encode_prompt(
            self,
            prompts,
            negative_prompts,
            clean_caption,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=do_classifier_free_guidance,
        )

    def make_request(
        self,
        prompt,
        *,
        negative_prompt=None,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        steps=None,
        guidance=None,
        noise_level=None,
        timesteps=(None, None, None),
        last_stage: int | None = None,
        output_type: str = "pil",
    ) -> Request:
        """Validate everything a run needs before any work starts. Settings are keywords with ``__call__``'s
        defaults (eleven positional values were easy to pass in the wrong order)."""
        if self.stage1 is None:
            raise RequestError("text-to-image needs a stage I checkpoint (stage1=)")
        last = self.resolve_last_stage(last_stage)
        prompts = options.as_prompts(prompt)
        default = self.stage1.unet.config.sample_size
        req = Request(
            prompts=prompts,
            negatives=options.negatives_for(prompts, negative_prompt),
            height=default if height is None else height,
            width=default if width is None else width,
            num_images_per_prompt=options.check_images_per_prompt(num_images_per_prompt),
            last_stage=last,
            output_type=options.check_output_type(output_type),
            stages=options.stage_options(steps, guidance, timesteps, noise_level, self.defaults),
        )
        sizes.check_size(req.height, req.width, self.size_multiple(last))
        options.check_timesteps(req.stages, last)
        limits.check(self, req)  # a request that cannot fit is refused before any allocation
        return req

    def require_stage1(self, what: str) -> None:
        """Refuse a chain that starts at stage I on a cascade without it, saying what runs a later stage alone."""
        if self.stage1 is None:
            alone = {2: "IFSuperResolutionPipeline", 3: "StableDiffusionUpscalePipeline"}
            views = [alone[n] for n in self.loaded_stages if n in alone]
            hint = (
                f"; to run a loaded stage alone on an image use ifengine.{views[0]}.from_cascade(pipe)" if views else ""
            )
            raise RequestError(f"{what} needs a stage I checkpoint (stage1=){hint}")

    def set_limits(self, *, memory=None, max_pixels: int | None = None, max_batch: int | None = None) -> Cascade:
        """Refuse later requests above ``max_pixels`` (output pixels per image) or ``max_batch`` (images per
        call), or whose estimate exceeds ``memory`` ("8GiB"; default: the device's free memory)."""
        return limits.set_limits(self, memory=memory, max_pixels=max_pixels, max_batch=max_batch)

    def resolve_last_stage(self, last_stage: int | None) -> int:
        loaded = self.loaded_stages
        if last_stage is None:
            return max(n for n in loaded if set(range(1, n + 1)) <= set(loaded))
        if last_stage not in (1, 2, 3):
            raise RequestError(f"last_stage must be 1, 2 or 3, got {last_stage!r}")
        missing = [n for n in range(1, last_stage + 1) if n not in loaded]
        if missing:
            raise RequestError(f"last_stage={last_stage} needs stage {missing[0]}, which was not loaded")
        return last_stage

    def size_multiple(self, last_stage: int) -> int:
        stages = {1: self.stage1, 2: self.stage2, 3: self.stage3}
        return sizes.size_multiple({n: stages[n].unet.config.downsample_factor for n in range(1, last_stage + 1)})

    def encode(self, request: Request, clean_caption: bool) -> torch.Tensor:
        """T5 embeddings for the run's batch, [negatives; prompts] when any IF stage uses guidance."""
        if request.embeds is not None:
            return embeds.t5_pair(self, request, clean_caption)
        n = request.num_images_per_prompt
        pos = self.text.encode(preprocess(list(request.prompts), clean_caption)).repeat_interleave(n, 0)
        neg = self.text.encode(preprocess(list(request.negatives), clean_caption)).repeat_interleave(n, 0)
        self._encode_stage3_prompts(request)
        return pos, neg

    def _encode_stage3_prompts(self, request: Request) -> None:
        """CLIP-encode stage III's prompts now, before stage I is queued: stage III then finds them in the
        embedding cache, so no encoder work (and no wait for it) sits between the queued stages."""
        if request.last_stage < 3:
            return
        negatives = list(request.negatives) if request.stages[2].cfg else []
        self.stage3.text.encode(list(dict.fromkeys(list(request.prompts) + negatives)))

    def _run(self, req: Request, ctx: RunContext, clean_caption: bool) -> list[torch.Tensor]:
        pos, neg = self.encode(req, clean_caption)
        branches = lambda opts: torch.cat([neg, pos]) if opts.cfg else pos  # noqa: E731
        o1, o2, o3 = req.stages
        run = self.runner
        outs = [run.run_if_stage(1, self.stage1, o1, branches(o1), (req.batch, 3, *req.size(1)), ctx)]
        if req.last_stage >= 2:
            outs.append(
                run.run_if_stage(2, self.stage2, o2, branches(o2), (req.batch, 3, *req.size(2)), ctx, image=outs[-1])
            )
        if req.last_stage >= 3:
            stage3, prompts, negatives = embeds.x4_inputs(self, req)
            outs.append(run.run_x4_stage(stage3, o3, prompts, negatives, outs[-1], ctx))
        return outs

    def finish(self, req: Request, outs: list[torch.Tensor], seed: int | None) -> CascadeOutput:
        """Bring the stage outputs to pinned host memory with their NaN flags: the run's one host sync."""
        outs = fetch_checked(outs, self.encoders())
        images, nsfw = self.to_images(outs[-1], req.last_stage, req.output_type)
        settings = {
            "prompt": list(req.prompts),
            "negative_prompt": list(req.negatives),
            "seed": seed,
            "height": req.height,
            "width": req.width,
            "last_stage": req.last_stage,
            "num_images_per_prompt": req.num_images_per_prompt,
            "stages": [vars(s) for s in req.stages[: req.last_stage]],
            **metadata.run_facts(self, req.last_stage),
        }
        return CascadeOutput(images=images, stages=outs, seed=seed, nsfw_detected=nsfw, settings=settings)

    def to_images(self, final: torch.Tensor, last_stage: int, output_type: str) -> tuple[Any, list[bool] | None]:
        """A last stage's output (on the host, [-1, 1]) as ``output_type``; PIL images pass the safety
        checker and get the watermark when the cascade has them. Returns (images, nsfw flags or None)."""
        if output_type == "pil" and self.safety is not None:
            return self.safety(final, watermark_size=self.watermark_size(last_stage))
        return convert(final, output_type), None

    def watermark_size(self, last_stage: int) -> int | None:
        """IF pipelines scale the logo by their U-Net's sample size; the x4 pipeline by the image itself."""
        return None if last_stage == 3 else (self.stage1, self.stage2)[last_stage - 1].unet.config.sample_size


def open_cascade(
    source: ModelSource | None = None,
    *,
    device=None,
    dtype=None,
    safety: bool = True,
    text_encoder: str | None = "auto",
    text_dtype: torch.dtype | None = None,
    runtime: RuntimeOptions | None = None,
    graph_runtime: bool = True,
    select: Callable[[CascadeParts], CascadeParts] | None = None,
    **options,
) -> Cascade:
    """The cascade ``source`` names (default: the tiny demo), on ``device`` in ``dtype`` (default: the
    source's, else cuda + float16 when a GPU is visible, cpu + float32 otherwise; graphs and engines:
    the precision they were exported or built in), with the GPU runtime where it applies.

    ``runtime`` (a ``RuntimeOptions``) or its fields as keywords (vram_budget, weights, throughput,
    max_batch, cuda_graphs, ...) set up the torch runtime for checkpoints; with graphs and engines only
    ``cuda_graphs`` applies. Other keywords go to the graph or engine loader (precision, providers,
    verify, use_step_graphs, ...); ``graph_runtime=False`` leaves exported graphs on the plain loops.
    ``select``: parts -> the parts to keep, applied before the runtime is set up (a serving replica keeps
    only its own stage, so buffers and plans are made for what it runs)."""
    source = source or ModelSource()
    asked = dtype or source.dtype  # graphs and engines run in their own precision unless one is asked for
    device, dtype = placement(device or source.device, asked)
    keywords = {k: options.pop(k) for k in (*RUNTIME_DEFAULTS, "throughput") if k in options}
    settings = RuntimeOptions.of(runtime, **keywords)  # bad values fail here, before anything loads
    if source.uses_graphs and dataclasses.replace(settings, cuda_graphs=None) != RuntimeOptions():
        raise TypeError(
            "the runtime options act on torch checkpoints only: graphs and engines fix precision and memory"
        )
    parts = load_parts(
        source,
        device,
        dtype if asked or not source.uses_graphs else None,
        safety=safety,
        text_encoder=text_encoder,
        text_dtype=text_dtype,
        host_first=settings.vram_budget is not None,  # the planner places every weight itself
        **options,
    )
    if select is not None:
        parts = select(parts)
    return attach_runtime(Cascade.from_parts(parts), source, settings, graph_runtime)


def attach_runtime(pipe: Cascade, source: ModelSource, settings: RuntimeOptions, graph_runtime: bool = True) -> Cascade:
    """``pipe`` with the runtime ``open_cascade`` gives a cascade of ``source``'s kind (serving replicas that
    keep only some of the parts attach it after dropping the rest)."""
    if source.kind == "artifacts":
        return pipe.use_runtime(cuda_graphs=False) if graph_runtime else pipe  # ORT calls are never capturable
    if source.kind == "engines":  # on a CPU (Inductor packages compiled for it) nothing is captured
        return pipe.use_runtime(cuda_graphs=settings.cuda_graphs is not False and pipe.device.type == "cuda")
    return pipe.use_runtime(settings) if settings.wanted_on(pipe.device.type) else pipe
