"""The lean GPU runtime behind one call: ``configure(cascade, vram_budget=..., cuda_graphs=...)``.

The returned ``Runtime`` offers ``run_if_stage`` / ``run_x4_stage`` with the exact signatures and results
of ``ifengine.stage.stages`` (graph-backed, static buffers, one upload per stage), ``ensure`` for the
planner's weight moves, and ``fetch_no_sync`` for the single end-of-call synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable

import logging

import torch

from ..backends.torch.settings import TorchBackendOptions, UNetBackend
from ..memory.offload import WeightPlacer
from ..memory.plan_inputs import cascade_modules
from ..memory.planner import UNETS, MemoryPlan, PlanOptions
from ..memory.sizes import GiB, format_size
from ..memory.weight_precision import apply_int8, choose_weights
from ..memory.workload import Workload
from .buffers import HostFetch, fetch_no_sync
from .gpu_runner import DecodeSettings, GraphRunner
from .graphs import GraphCache, check_graph_device
from .options import RuntimeOptions

log = logging.getLogger(__name__)


class Runtime:
    """Graph-backed stage runners plus (with a budget) the weight placement that serves them."""

    def __init__(
        self,
        cascade,
        options: RuntimeOptions,
        runner: GraphRunner,
        backend: UNetBackend,
        plan: MemoryPlan | None = None,
        placer: WeightPlacer | None = None,
    ):
        self.cascade, self.options, self.runner, self.backend = cascade, options, runner, backend
        self.plan, self.placer = plan, placer
        self._warned: set[tuple] = set()
        self._streams: tuple | None = None

    def stream_pair(self, make: Callable[[], object]) -> tuple:
        """Throughput mode's (front, back) streams, made once per runtime: a new stream per call would
        miss the caching allocator's per-stream pools (a cudaMalloc inside the timed loop, reserved
        memory growing call after call)."""
        if self._streams is None:
            self._streams = (make(), make())
        return self._streams

    def run_if_stage(self, stage_no: int, stage, opts, embeds, shape, ctx, **kwargs) -> torch.Tensor:
        """``stage.stages.run_if_stage``'s signature and result."""
        self._check_planned(stage_no, shape[0], shape[-2:])
        return self.runner.run_if_stage(stage_no, stage, opts, embeds, shape, ctx, **kwargs)

    def run_x4_stage(self, stage, opts, prompts, negatives, image, ctx) -> torch.Tensor:
        """``stage.stages.run_x4_stage``'s signature and result."""
        self._check_planned(3, image.shape[0], image.shape[-2:])
        return self.runner.run_x4_stage(stage, opts, prompts, negatives, image, ctx)

    def _check_planned(self, stage_no: int, batch: int, size) -> None:
        """Calls bigger than the planned workload run, but their peak may pass the budget: say so once."""
        if self.plan is None:
            return
        work = self.plan.workload
        h, w = work.size(min(stage_no, 2))
        key = (stage_no, batch, tuple(size))
        if (batch <= work.batch and size[0] * size[1] <= h * w) or key in self._warned:
            return
        self._warned.add(key)
        log.warning(
            "stage %d: batch %d at %dx%d is bigger than the memory plan's batch %d at %dx%d, so the "
            "peak may pass the %s budget; plan for such calls with max_batch= / max_size=",
            stage_no,
            batch,
            size[0],
            size[1],
            work.batch,
            h,
            w,
            format_size(self.plan.budget_bytes),
        )

    def ensure(self, component: str) -> None:
        """Bring an offloaded component in ("t5", "unet1", ...); T5 also does this itself on first use."""
        if self.placer is not None:
            self.placer.ensure(component)

    @staticmethod
    def fetch_no_sync(outputs: list[torch.Tensor]) -> HostFetch:
        """Results to pinned host memory; ``.wait()`` on the result is the call's one host sync."""
        return fetch_no_sync(outputs)

    def close(self) -> None:
        for cache in {id(c): c for c in self.runner.graphs.values()}.values():
            cache.clear()
        if self.placer is not None:
            self.placer.remove_hooks()
        if getattr(self.cascade, "runtime", None) is self:
            # cascade.runtime <-> runtime.cascade is a reference cycle: only the cyclic collector would
            # free the pair (and every device buffer they hold); detaching lets plain refcounting do it
            self.cascade.set_runtime(None)


def _check_concurrent(cascade) -> None:
    """Throughput mode runs stage I and stages II/III at once on two streams: refuse networks that must
    never run concurrently (the TensorRT engines of a cascade share one scratch allocation)."""
    parts = {"t5": getattr(cascade.text, "model", None)}
    for n, stage in ((1, cascade.stage1), (2, cascade.stage2), (3, cascade.stage3)):
        parts[f"stage {n}"] = getattr(stage, "unet", None)
    if cascade.stage3 is not None:
        parts.update(clip=cascade.stage3.text.model, vae_decoder=cascade.stage3.vae)
    serial = sorted(k for k, p in parts.items() if getattr(getattr(p, "network", None), "one_stream_only", False))
    if serial:
        raise ValueError(
            f"mode='throughput' runs stages concurrently, but {', '.join(serial)} run on TensorRT engines that "
            "share one scratch allocation; use mode='latency' with engines"
        )


def default_workload(cascade, batch: int = 1, size: tuple[int | None, int | None] | None = None) -> Workload:
    """The cascade's default call with ``batch`` images at stage I ``size`` (None parts: the default size)."""
    height, width = size or (None, None)
    if cascade.stage1 is None:
        return Workload(height=height or 64, width=width or 64, batch=batch)
    default = cascade.stage1.unet.config.sample_size
    steps, guidance = cascade.defaults.steps, cascade.defaults.guidance
    return Workload(
        height=height or default,
        width=width or default,
        batch=batch,
        steps=tuple(steps),
        cfg=tuple(g > 1 for g in guidance),
    )


def configure(
    cascade, options: RuntimeOptions | None = None, *, workload: Workload | None = None, **keywords
) -> Runtime:
    """Build the GPU runtime for ``cascade`` and attach it (``cascade.set_runtime``): its calls then run here.

    ``options`` (a ``RuntimeOptions``) or its fields as keywords (they override ``options``'s), e.g.
    ``vram_budget`` ("8GiB", "12GB" or bytes) makes the planner place every weight and moves them now:
    load the cascade on the CPU first so that nothing has to fit the device before planning.
    ``cuda_graphs`` defaults to on for CUDA cascades and off elsewhere. ``workload`` is the largest call
    the plan must hold (default: the cascade's default steps, ``max_batch`` images per call at stage I
    size ``max_size`` = (height, width), whose None parts mean the default size).
    ``weights``: "native" keeps the U-Nets' dtype, "int8" makes them weight-only int8, "auto" does so
    only for U-Nets the budget would otherwise stream every step (see weight_precision.py).
    """
    device = torch.device(cascade.device)
    options = RuntimeOptions.of(options, **keywords)
    options = options.for_device(device.type)
    if options.cuda_graphs:
        check_graph_device(device)
    if options.mode == "throughput":
        _check_concurrent(cascade)
    workload = workload or default_workload(cascade, options.max_batch, options.max_size)
    plan_options = options.plan_options()
    plan = _choose_int8(cascade, options, workload, plan_options)  # before layout changes and placement
    backend = UNetBackend(TorchBackendOptions(channels_last=options.channels_last, compile=options.compile))
    for unet in _unets(cascade):
        backend.prepare(unet)
    placer = _place(cascade, options, plan, device) if plan is not None else None
    caches = _graph_caches(device, options)
    decode = DecodeSettings(plan.vae_tile, plan.vae_overlap) if plan and plan.vae_tile else DecodeSettings()
    runner = GraphRunner(
        device,
        graphs=caches,
        ensure=placer.ensure if placer else _nothing,
        unet_for=backend.unet_for,
        decode=decode,
        release_graphs_after_stage=bool(plan and plan.graph_scope == "stage"),
    )
    _reserve(runner, cascade, workload)
    runtime = Runtime(cascade, options, runner, backend, plan, placer)
    # attached, because placed weights are only valid through the runtime's ensure(): a cascade left on
    # its plain loops would compute with whichever component last filled the swap area
    cascade.set_runtime(runtime)
    return runtime


def _reserve(runner: GraphRunner, cascade, workload: Workload) -> None:
    """Buffers at the workload's size now: later calls up to it are views (graphs never go stale)."""
    stages = (cascade.stage1, cascade.stage2, cascade.stage3)
    for n, stage in enumerate(stages, start=1):
        if stage is None:
            continue
        config = stage.unet.config
        height, width = workload.size(min(n, 2))
        runner.reserve_for(
            n,
            batch=workload.batch,
            height=height,
            width=width,
            steps=workload.steps[n - 1],
            text_dim=config.encoder_hid_dim or config.cross_attention_dim[0],
            dtype=cascade.dtype,
        )


def _nothing(component: str) -> None:
    return None


def _unets(cascade):
    return [s.unet for s in (cascade.stage1, cascade.stage2, cascade.stage3) if s is not None]


def _graph_caches(device: torch.device, options: RuntimeOptions) -> dict[int, GraphCache]:
    make = lambda: GraphCache(device, enabled=options.cuda_graphs, warmup_steps=options.warmup_steps)  # noqa: E731
    if options.mode == "throughput":
        front, back = make(), make()  # the two streams run concurrently: their graphs must not share a pool
        return {1: front, 2: back, 3: back}
    shared = make()  # one stream: stages never overlap, so one pool serves all of them
    return {1: shared, 2: shared, 3: shared}


def _choose_int8(cascade, options: RuntimeOptions, workload: Workload, plan_options: PlanOptions) -> MemoryPlan | None:
    """Quantise the U-Nets the weights option picks; returns the memory plan when there is a budget."""
    modules = cascade_modules(cascade)
    if options.vram_budget is None:
        apply_int8(modules, tuple(n for n in UNETS if n in modules) if options.weights == "int8" else ())
        return None
    choice = choose_weights(modules, workload, options.vram_budget, plan_options, options.weights)
    # the plan was made on int8 meta twins: the quantised modules have the same unit paths and sizes
    # (the placer checks each unit against it)
    apply_int8(modules, choice.int8)
    return choice.plan


def _place(cascade, options: RuntimeOptions, plan: MemoryPlan, device: torch.device) -> WeightPlacer:
    modules = cascade_modules(cascade)
    streamed = [p.name for p in plan.placements if p.name in UNETS and p.streamed_units]
    if options.compile and streamed:
        raise ValueError(
            f"compile=True cannot be combined with weight streaming of {streamed}, which this "
            "budget needs; use compile=False or a larger vram_budget"
        )
    if options.limit_allocator:
        _limit_allocator(allocator_limit_bytes(options.vram_budget, plan.options), device)
    log.info("memory plan for %.2f GiB: %s", options.vram_budget / GiB, plan.modes())
    return WeightPlacer(plan, modules, device).apply()


def allocator_limit_bytes(budget: int, plan_options: PlanOptions) -> int:
    """What torch's allocator may hold under ``budget``: the budget less the CUDA context reserve, which
    (context, cuBLAS/cuDNN handles, kernels) is device memory the allocator neither sees nor limits."""
    limit = budget - plan_options.context_reserve_bytes
    if limit <= 0:
        raise ValueError(
            f"vram_budget {format_size(budget)} leaves nothing after the CUDA context reserve of "
            f"{format_size(plan_options.context_reserve_bytes)} (PlanOptions.context_reserve_bytes)"
        )
    return limit


def _limit_allocator(budget: int, device: torch.device) -> None:
    """Make the caching allocator refuse to hold more than ``budget`` (raises OutOfMemoryError beyond)."""
    if device.type != "cuda":
        raise ValueError("limit_allocator needs a CUDA device")
    total = torch.cuda.get_device_properties(device).total_memory
    if budget > total:
        raise ValueError(f"vram_budget {budget / GiB:.2f} GiB exceeds the device's {total / GiB:.2f} GiB")
    torch.cuda.set_per_process_memory_fraction(budget / total, device)
