"""Stage loops over static buffers, one graph launch per step.

``GraphRunner.run_if_stage`` / ``run_x4_stage`` take the same arguments and return the same tensors as
``ifengine.stage.stages.run_if_stage`` / ``run_x4_stage``; the step they repeat is the very same
``if_step`` / ``x4_step``. What differs is where the data lives: per stage, the host packs noise, tables
and scalars into one pinned buffer and uploads it with one copy; the sample, the step counter and the
conditioning sit in a ``BufferArena``; the captured step gathers its noise and coefficients with the
device-side counter and advances the counter itself, so the host only calls ``replay()`` N times.

With ``cuda_graphs=False`` (and always on the CPU) the same step function runs eagerly through the same
buffers, which is how the CPU tests prove the buffer logic equals the reference loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..stage.cancel import raise_if_stopped
from ..stage.seam import Capture, Step, capture_of, check_step, weakest
from ..stage.options import StageOptions
from ..stage.stages import STAGE_LABELS, IFStage, RunContext, Start, X4Stage, after_step
from ..facts import UNET_OF
from ..schedule import add_noise
from ..memory.workload import stage_buffers
from .buffers import BufferArena, HostPack
from .graphs import GraphCache
from .stage_inputs import device_tables, if_stage_pack, static_choices, x4_stage_pack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeSettings:
    """How stage III decodes: whole latent (tile None) or tiles of ``tile`` latent pixels."""

    tile: int | None = None
    overlap: int = 16


def _no_op(component: str) -> None:
    return None


class GraphRunner:
    """Graph-backed replacements for the eager stage loops (one per runtime)."""

    def __init__(
        self,
        device: torch.device | str,
        *,
        graphs: dict[int, GraphCache],
        ensure: Callable[[str], None] = _no_op,
        unet_for: Callable = lambda unet: unet,
        decode: DecodeSettings = DecodeSettings(),
        release_graphs_after_stage: bool = False,
        observe: Callable[[int, torch.Tensor], None] | None = None,
    ):
        self.device = torch.device(device)
        self.observe = observe  # debugging: sees the sample after every step (costs nothing when None)
        self.graphs = graphs  # stage number -> cache; stages sharing a stream share a cache (and its pool)
        self.arenas = {n: BufferArena(self.device) for n in (1, 2, 3)}
        self.ensure, self.unet_for, self.decode = ensure, unet_for, decode
        self.release_graphs_after_stage = release_graphs_after_stage
        self._generations = {n: 0 for n in (1, 2, 3)}
        # per stage: the step capacity its per-step uploads are padded to (grows with the longest call),
        # so graphs are keyed by it and not by each call's step count or strength
        self.step_rows = {n: 0 for n in (1, 2, 3)}

    # -- stage I / II ----------------------------------------------------------------------------
    @torch.no_grad()
    def run_if_stage(
        self,
        stage_no: int,
        stage: IFStage,
        opts: StageOptions,
        embeds: torch.Tensor,
        shape: tuple[int, ...],
        ctx: RunContext,
        image: torch.Tensor | None = None,
        start: Start | None = None,
        mixer: float | None = None,
    ) -> torch.Tensor:
        """Same contract as ``stage.stages.run_if_stage`` (text-to-image, super-resolution, edits)."""
        self.ensure(UNET_OF[stage_no])
        shape = tuple(shape)
        rows = self.step_rows[stage_no]
        pack, tables = if_stage_pack(
            stage, opts, shape, ctx.generator, ctx.dtype, image is not None, start, mixer, rows
        )
        self.step_rows[stage_no] = max(rows, len(tables))
        arena = self.arenas[stage_no]
        views = self._upload(arena, pack)
        dev_tables = device_tables(tables, views)
        x = _put(arena, "x", views["init"] if start is None else _edit_start(dev_tables, views, start))
        index, cond = _zero_index(arena), _put(arena, "embeds", embeds)
        upscaled = None if image is None else _put(arena, "upscaled", _noised_upscale(image, views, shape))
        unet, step_fn = self.unet_for(stage.unet), capturable_step(stage)
        capture = weakest((step_fn.capture, capture_of(unet)))
        key = (
            "if",
            stage_no,
            id(unet),
            id(step_fn),
            opts.cfg,
            static_choices(tables),
            arena.generation,
            _layout(pack),
            _shapes(x, cond, upscaled),
        )

        def make_step():
            return _if_step_fn(step_fn, unet, dev_tables, views, x, index, cond, opts.cfg, upscaled)

        self._loop(stage_no, key, make_step, len(tables), ctx, x, capture)
        return x.clone()  # the arena is reused by the next run; the caller keeps its own copy

    # -- stage III ---------------------------------------------------------------------------------
    @torch.no_grad()
    def run_x4_stage(
        self,
        stage: X4Stage,
        opts: StageOptions,
        prompts: list[str],
        negatives: list[str],
        image: torch.Tensor,
        ctx: RunContext,
    ) -> torch.Tensor:
        """Same contract as ``stage.stages.run_x4_stage``."""
        # no ensure("clip"): Cascade.encode has CLIP-encoded these prompts before stage I (a cache hit here
        # needs no weights), and on a miss the placed encoder's own pre-hook moves it in
        embeds = stage.text.encode(prompts)
        if opts.cfg:
            embeds = torch.cat([stage.text.encode(negatives), embeds])
        self.ensure("x4_unet")
        b, _, h, w = image.shape
        latent_shape = (b, stage.unet.config.out_channels, h, w)
        rows = self.step_rows[3]
        pack, tables = x4_stage_pack(stage, opts, latent_shape, tuple(image.shape), ctx.generator, ctx.dtype, rows)
        self.step_rows[3] = max(rows, len(tables))
        arena = self.arenas[3]
        views = self._upload(arena, pack)
        latents, index, cond = _put(arena, "x", views["init"]), _zero_index(arena), _put(arena, "embeds", embeds)
        low_res = _put(arena, "low_res", _noised_low_res(image, views, ctx.dtype, opts.cfg))
        unet, step_fn = self.unet_for(stage.unet), capturable_step(stage)
        capture = weakest((step_fn.capture, capture_of(unet)))
        key = (
            "x4",
            id(unet),
            id(step_fn),
            opts.cfg,
            static_choices(tables),
            arena.generation,
            _layout(pack),
            _shapes(latents, cond, low_res),
        )
        dev_tables = device_tables(tables, views)

        def make_step():
            return _x4_step_fn(step_fn, unet, dev_tables, views, latents, index, cond, low_res, opts.cfg)

        self._loop(3, key, make_step, len(tables), ctx, latents, capture)
        self.ensure("vae_decoder")
        return self._decode(stage.vae, latents)

    def _decode(self, vae, latents: torch.Tensor) -> torch.Tensor:
        if self.decode.tile is None:
            return vae.decode(latents)
        return vae.decode_tiled(latents, self.decode.tile, self.decode.overlap)

    # -- shared ----------------------------------------------------------------------------------
    def _upload(self, arena: BufferArena, pack: HostPack) -> dict[str, torch.Tensor]:
        _, total = pack.layout()
        return pack.upload_no_sync(arena.view("upload", (total,), torch.uint8))

    def _loop(
        self, stage_no: int, key, make_step, steps: int, ctx: RunContext, state: torch.Tensor, capture: Capture
    ) -> None:
        """Advance ``steps`` steps; the host enqueues only (no read-back, no synchronisation). A step whose
        networks may never be captured (``Capture.NEVER``: ONNX Runtime) runs eagerly through the same buffers."""
        cache = self.graphs[stage_no]
        arena = self.arenas[stage_no]
        if arena.generation != self._generations[stage_no]:
            # a buffer moved: graphs recorded over its old address would read freed memory
            cache.clear()
            self._generations[stage_no] = arena.generation
        graph = cache.get(key, make_step, name=STAGE_LABELS[stage_no]) if capture is not Capture.NEVER else None
        step = graph.step_no_sync if graph is not None else make_step()
        for i in tqdm(range(steps), desc=STAGE_LABELS[stage_no], disable=not ctx.progress, leave=False):
            raise_if_stopped()  # a host-side check only: no read-back, the replays stay sync-free
            step()
            if self.observe is not None:
                self.observe(stage_no, state)
            # a step callback runs on the host between two replays, outside the captured graph
            after_step(ctx, stage_no, i, state, in_place=True)
        if self.release_graphs_after_stage:
            cache.clear()  # tight budgets: the graph's private memory must not outlive the stage

    def reserve(self, stage_no: int, name: str, nbytes: int) -> None:
        """Pre-size a buffer (e.g. for the largest batch) so later, smaller runs never reallocate."""
        self.arenas[stage_no].reserve(name, nbytes)

    def reserve_for(
        self, stage_no: int, *, batch: int, height: int, width: int, steps: int, text_dim: int, dtype: torch.dtype
    ) -> None:
        """Allocate stage ``stage_no``'s buffers once for the largest call expected (CFG with a mixer
        branch, editing inputs, ``steps`` steps), so every smaller call is a view and no graph goes stale."""
        self.step_rows[stage_no] = max(self.step_rows[stage_no], steps)
        sizes = stage_buffers(
            stage_no, batch=batch, height=height, width=width, steps=steps, text_dim=text_dim, itemsize=dtype.itemsize
        )
        for name, nbytes in sizes.items():  # the planner counts these same sizes (memory.workload)
            self.arenas[stage_no].reserve(name, nbytes)


def _put(arena: BufferArena, name: str, value: torch.Tensor) -> torch.Tensor:
    """Copy ``value`` into the arena buffer ``name`` (a device-side copy, enqueued) and return the view."""
    view = arena.view(name, tuple(value.shape), value.dtype)
    view.copy_(value)
    return view


def _zero_index(arena: BufferArena) -> torch.Tensor:
    index = arena.view("index", (), torch.long)
    index.zero_()  # the device-side step counter the captured step advances itself
    return index


def _shapes(*tensors: torch.Tensor | None) -> tuple:
    return tuple(None if t is None else (tuple(t.shape), t.dtype) for t in tensors)


def _layout(pack: HostPack) -> tuple:
    entries, _ = pack.layout()
    return tuple((e.name, e.shape, e.dtype) for e in entries)


def _noised_upscale(image: torch.Tensor, views: dict[str, torch.Tensor], shape) -> torch.Tensor:
    """Stage II's conditioning image: bilinear upscale, noised once at the noise level (as the eager loop)."""
    noise = views["image_noise"]
    upscaled = F.interpolate(image.to(noise.dtype), tuple(shape[-2:]), mode="bilinear", align_corners=True)
    return add_noise(views["noising_alphas"], upscaled, noise, views["level"][: shape[0]])


def _noised_low_res(image: torch.Tensor, views: dict[str, torch.Tensor], dtype: torch.dtype, cfg: bool):
    level = views["level"][: image.shape[0]]
    low_res = add_noise(views["low_res_alphas"], image.to(dtype), views["image_noise"], level)
    return torch.cat([low_res, low_res]) if cfg else low_res


def _edit_start(tables, views: dict[str, torch.Tensor], start: Start) -> torch.Tensor:
    """img2img / inpainting start: the source noised to the first kept step (clean outside the mask)."""
    source, noise, mask = views["source"], views["init"], views.get("mask")
    noised = add_noise(tables, source, noise, tables.timesteps[:1].expand(source.shape[0]))
    return noised if mask is None else (1 - mask) * source + mask * noised


def capturable_step(stage) -> Step:
    """The step the runner repeats: the stage's own, or the eager step it replays through a host-side
    executor (seam point 5: a captured graph replays kernels without running Python, so the traced
    executor's cached prologue, keyed by tensor identity, would replay stale values)."""
    step = check_step(stage.step_fn)
    return step.eager_equivalent or step


def _if_step_fn(step_fn, unet, tables, views, x, index, cond, cfg: bool, upscaled):
    noise_steps, guidance, level = views["steps"], views["guidance"], views.get("level")
    mask, mixer = views.get("mask"), views.get("mixer")

    def step() -> None:
        # gathered with the device-side counter: the graph reads step i's noise without the host
        noise = noise_steps.index_select(0, index.reshape(1)).squeeze(0)
        out = step_fn(
            unet,
            tables,
            index,
            x,
            cond,
            noise,
            guidance,
            cfg,
            upscaled=upscaled,
            noise_level=level,
            mask=mask,
            mixer=mixer,
        )
        x.copy_(out)
        index.add_(1)

    return step


def _x4_step_fn(step_fn, unet, tables, views, latents, index, cond, low_res, cfg: bool):
    guidance, level = views["guidance"], views["level"]

    def step() -> None:
        out = step_fn(unet, tables, index, latents, low_res, cond, level, guidance, cfg)
        latents.copy_(out)
        index.add_(1)

    return step
