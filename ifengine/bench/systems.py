"""The systems a cascade benchmark compares, each run as T5 -> I -> II -> III with every stage timed.

Both sides run the same chain the model card runs: the prompt pair is encoded once, stage I from noise,
stage II from stage I's image, stage III (CLIP encode, x4 U-Net steps, VAE decode) from stage II's image.
Every stage is a timed region of one run (CUDA events on the GPU), and "total" spans the whole chain.
Watermarking and safety checking are off on both sides: they are not the engine's work. ifengine's
prompt-embedding cache is cleared before every run, so each run pays for its text encoding as a first
request does (a repeated prompt would cost nothing there).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import torch

from .timing import Clock
from ..pipeline.cascade import open_cascade
from ..runtime import configure
from ..pipeline.source import ModelSource
from ..facts import DEFAULT_STEPS
from ..models.t5_precision import device_has_bf16, t5_dtype
from ..stage import stages as eager_stages
from ..stage.noise import make_generator
from ..stage.options import stage_options
from ..stage.stages import RunContext

log = logging.getLogger(__name__)
STAGES = ("T5", "I", "II", "III")
PROMPT = "a photograph of an astronaut riding a horse on the moon"


@dataclass(frozen=True)
class RunSpec:
    """One cascade run: batch, stage I size, steps/guidance per stage, noise levels of II and III."""

    batch: int = 1
    size: int = 64
    steps: tuple[int, int, int] = DEFAULT_STEPS
    guidance: tuple[float, float, float] = (7.0, 4.0, 9.0)
    noise_level: tuple[int, int] = (250, 20)
    prompt: str = PROMPT


@dataclass
class System:
    """A loaded system: ``run(spec, clock)`` runs the chain once, timing regions on ``clock``."""

    name: str
    run: Callable[[RunSpec, Clock], None]
    close: Callable[[], None] = lambda: None


# ifengine-graphs plans with weights="auto" (int8 U-Nets only where a budget would stream them);
# -native never quantises (streams instead), -int8 quantises every U-Net
_RUNTIME_WEIGHTS = {"ifengine-graphs": "auto", "ifengine-graphs-native": "native", "ifengine-graphs-int8": "int8"}
SYSTEMS = (
    "ifengine-eager",
    "ifengine-traced",
    "ifengine-auto",
    *_RUNTIME_WEIGHTS,
    "ifengine-onnxruntime",
    "ifengine-inductor",
    "diffusers-eager",
    "diffusers-compile",
    "diffusers-offload",
)
_OWN_LOADS = (
    *_RUNTIME_WEIGHTS,
    "ifengine-onnxruntime",
    "ifengine-inductor",
)  # systems that need their own copy of the weights


def load_systems(
    names: list[str],
    paths: dict[str, Path],
    device: torch.device,
    dtype: torch.dtype,
    artifacts: Path | None = None,
    vram_budget: int | None = None,
    engines: Path | None = None,
) -> dict[str, System]:
    """Load each named system once; systems of one family share their weights.

    ``vram_budget`` (bytes) is handed to the systems that plan for one (ifengine's GPU runtime);
    ``engines`` is the `ifengine build --compiler inductor` folder the ifengine-inductor system runs.
    """
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}")
    out: dict[str, System] = {}
    ours = [n for n in names if n.startswith("ifengine-") and n not in _OWN_LOADS]
    if ours:
        out.update(_ifengine_family(ours, paths, device, dtype))
    for name in (n for n in names if n in _RUNTIME_WEIGHTS):
        out[name] = _ifengine_runtime(name, paths, device, dtype, vram_budget)
    if "ifengine-onnxruntime" in names:
        out["ifengine-onnxruntime"] = _ifengine_artifacts(artifacts, device, dtype)
    if "ifengine-inductor" in names:
        out["ifengine-inductor"] = _ifengine_inductor(engines, paths, device, dtype)
    theirs = [n for n in names if n.startswith("diffusers-")]
    if theirs:
        out.update(_diffusers_family(theirs, paths, device, dtype))
    return {n: out[n] for n in names}


# ---- ifengine -------------------------------------------------------------------------------------


def _ifengine_family(names: list[str], paths, device, dtype) -> dict[str, System]:
    pipe = open_cascade(_checkpoints(paths), device=device, dtype=dtype, safety=False)
    systems = {}
    for name in names:
        pipe.set_executor(name[len("ifengine-") :])
        # keep each executor's own step objects: switching back must not throw away traced graphs
        step_fns = [s.step_fn for s in (pipe.stage1, pipe.stage2, pipe.stage3)]
        systems[name] = System(name, _ifengine_runner(pipe, step_fns))
    return systems


def _ifengine_runtime(name: str, paths, device: torch.device, dtype, vram_budget: int | None) -> System:
    """ifengine's GPU runtime (static buffers, CUDA graphs, memory planner) behind the same chain."""

    # under a budget the planner places the weights: load them on the host, nothing has to fit first
    where = "cpu" if vram_budget is not None else device
    pipe = open_cascade(
        _checkpoints(paths),
        device=where,
        dtype=dtype,
        safety=False,
        text_dtype=t5_dtype(dtype, device_has_bf16(device)),
    )
    pipe.set_executor("eager").device = device  # the runtime captures the plain step itself
    runtime = configure(
        pipe, vram_budget=vram_budget, cuda_graphs=device.type == "cuda", weights=_RUNTIME_WEIGHTS[name]
    )
    return System(name, _ifengine_runner(pipe, None, runtime), close=runtime.close)


def _ifengine_artifacts(artifacts: Path | None, device, dtype) -> System:
    if artifacts is None:
        raise ValueError("ifengine-onnxruntime needs --artifacts DIR (the output of `ifengine export`)")
    # the loader picks the graphs of dtype's precision and the device's providers
    pipe = open_cascade(ModelSource(artifacts=str(artifacts)), device=device, dtype=dtype)
    return System("ifengine-onnxruntime", _ifengine_runner(pipe, None))


def _checkpoints(paths) -> ModelSource:
    """The benchmark checkpoints (written with fp16 weight files) as a model source."""
    return ModelSource(
        stage1=str(paths["stage1"]), stage2=str(paths["stage2"]), stage3=str(paths["stage3"]), variant="fp16"
    )


def _ifengine_inductor(engines: Path | None, paths, device, dtype) -> System:
    """The compiled packages of `ifengine build --compiler inductor` (built from these checkpoints), the
    text encoders and anything not compiled on torch; the runtime captures whole steps on a GPU."""
    if engines is None:
        raise ValueError(
            "ifengine-inductor needs --engines DIR: build it first with `ifengine build RECIPE --compiler "
            "inductor --stage1 ... --stage2 ... --stage3 ... --out DIR` from the benchmark's checkpoints"
        )
    source = dataclasses.replace(_checkpoints(paths), engines=str(engines))
    pipe = open_cascade(source, device=device, dtype=dtype)
    return System("ifengine-inductor", _ifengine_runner(pipe, None, pipe.runner))


def _ifengine_runner(pipe, step_fns, runner=None) -> Callable[[RunSpec, Clock], None]:
    """The chain through ``runner``'s run_if_stage/run_x4_stage (default: the pipeline's eager loops)."""

    runner = runner or eager_stages
    run_if_stage, run_x4_stage = runner.run_if_stage, runner.run_x4_stage
    stages = (pipe.stage1, pipe.stage2, pipe.stage3)

    def run(spec: RunSpec, clock: Clock) -> None:
        if step_fns is not None:
            for stage, fn in zip(stages, step_fns, strict=True):
                stage.step_fn = fn
        o1, o2, o3 = stage_options(spec.steps, spec.guidance, None, spec.noise_level)
        ctx = RunContext(pipe.device, pipe.dtype, make_generator(None, 0)[0], progress=False)
        prompts, negatives = [spec.prompt] * spec.batch, [""] * spec.batch
        h = w = spec.size
        for encoder in (pipe.text, pipe.stage3.text):
            clear = getattr(encoder, "clear_cache", None)
            if clear is not None:
                clear()  # every run pays for its text encoding, as a first request would
        with clock.region("total"):
            with clock.region("T5"):
                # [negatives; prompts]: one prompt, batch images of it (num_images_per_prompt)
                embeds = pipe.text.encode(["", spec.prompt]).repeat_interleave(spec.batch, 0)
            with clock.region("I"):
                x = run_if_stage(1, pipe.stage1, o1, embeds, (spec.batch, 3, h, w), ctx)
            with clock.region("II"):
                x = run_if_stage(2, pipe.stage2, o2, embeds, (spec.batch, 3, 4 * h, 4 * w), ctx, image=x)
            with clock.region("III"):
                run_x4_stage(pipe.stage3, o3, prompts, negatives, x, ctx)

    return run


# ---- diffusers ------------------------------------------------------------------------------------


def _diffusers_family(names: list[str], paths, device, dtype) -> dict[str, System]:
    systems = {}
    resident = [n for n in names if n != "diffusers-offload"]
    if resident:
        pipes = _diffusers_pipes(paths, dtype)
        for p in pipes:
            p.to(device)
        eager = [p.unet for p in pipes]
        for name in resident:
            # diffusers' torch 2.0 benchmark configuration: the U-Nets compiled, everything else eager
            unets = (
                [torch.compile(u, mode="reduce-overhead", fullgraph=True) for u in eager]
                if name == "diffusers-compile"
                else eager
            )
            systems[name] = System(name, _diffusers_runner(pipes, unets, device))
    if "diffusers-offload" in names:
        pipes = _diffusers_pipes(paths, dtype)  # its own copy: offload hooks change how modules move
        for p in pipes:
            p.enable_model_cpu_offload(device=device)
        systems["diffusers-offload"] = System(
            "diffusers-offload", _diffusers_runner(pipes, [p.unet for p in pipes], device)
        )
    return systems


def _diffusers_pipes(paths, dtype) -> tuple:
    from diffusers import IFPipeline, IFSuperResolutionPipeline, StableDiffusionUpscalePipeline

    none = dict(safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    kw = dict(dtype=dtype, variant="fp16")
    pipes = (
        IFPipeline.from_pretrained(paths["stage1"], **none, **kw),
        IFSuperResolutionPipeline.from_pretrained(paths["stage2"], text_encoder=None, **none, **kw),
        StableDiffusionUpscalePipeline.from_pretrained(paths["stage3"], **kw),
    )
    for p in pipes:
        p.set_progress_bar_config(disable=True)
    return pipes


def _diffusers_runner(pipes, unets, device) -> Callable[[RunSpec, Clock], None]:
    d1, d2, d3 = pipes

    def run(spec: RunSpec, clock: Clock) -> None:
        for p, u in zip(pipes, unets, strict=True):
            p.unet = u
        g = torch.Generator(device="cpu").manual_seed(0)
        prompts, h = [spec.prompt] * spec.batch, spec.size
        (s1, s2, s3), (l2, l3) = spec.steps, spec.noise_level
        with clock.region("total"):
            with clock.region("T5"):
                pe, ne = d1.encode_prompt(
                    spec.prompt,
                    do_classifier_free_guidance=True,
                    device=device,
                    num_images_per_prompt=spec.batch,
                    clean_caption=False,
                )
            with clock.region("I"):
                x = d1(
                    prompt_embeds=pe,
                    negative_prompt_embeds=ne,
                    height=h,
                    width=h,
                    num_inference_steps=s1,
                    guidance_scale=spec.guidance[0],
                    generator=g,
                    output_type="pt",
                ).images
            with clock.region("II"):
                x = d2(
                    image=x,
                    prompt_embeds=pe,
                    negative_prompt_embeds=ne,
                    height=4 * h,
                    width=4 * h,
                    num_inference_steps=s2,
                    guidance_scale=spec.guidance[1],
                    noise_level=l2,
                    generator=g,
                    output_type="pt",
                ).images
            with clock.region("III"):
                d3(
                    prompt=prompts,
                    image=x,
                    num_inference_steps=s3,
                    guidance_scale=spec.guidance[2],
                    noise_level=l3,
                    generator=g,
                    output_type="pt",
                )

    return run
