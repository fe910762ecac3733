"""Throughput mode: many prompts, stage I of the next batch overlapping stages II/III of the current one.

Two CUDA streams: the *front* stream runs stage I, the *back* stream stages II and III. The host
enqueues stage I of batch k on the front, then stages II/III of batch k-1 on the back (waiting on an
event recorded after that batch's stage I), and never waits in between; the device runs both streams
at once. All prompts are encoded before the loop (T5 and CLIP fill their embedding caches), so no encoder work
sits between the stages of the pipeline; their finite checks come back with the images.

Each batch has its own generator (seed + k), so batch k's images equal a plain cascade call with that
seed. On a CPU the same code runs the batches one after another (no streams), which is what the CPU
tests compare. Requires ``configure(..., mode="throughput")`` on a GPU: graphs of the two streams run
concurrently and must not share a memory pool.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..runtime.fetch import fetch_checked
from ..stage.stages import RunContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThroughputResult:
    outputs: list[list[torch.Tensor]]  # per batch, each stage's output on the host (float32, [-1, 1])
    images: int
    seconds: float  # from the first enqueue to the results on the host

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class _Batch:
    request: object
    ctx: RunContext
    embeds: tuple[torch.Tensor, torch.Tensor]
    outs: list[torch.Tensor]
    ready: object = None  # event recorded on the front stream after this batch's stage I


def run_throughput(
    cascade,
    runtime,
    prompts: Sequence[str],
    *,
    batch_size: int = 1,
    seed: int = 0,
    negative_prompt: str | None = None,
    height: int | None = None,
    width: int | None = None,
    steps=None,
    guidance=None,
    noise_level=None,
    clean_caption: bool = True,
    overlap: bool | None = None,
    check_finite: bool = True,
) -> ThroughputResult:
    """Generate one image per prompt in batches of ``batch_size``; report images per second.

    ``overlap`` None (the default) overlaps the stages exactly when the runtime was built for it
    (``mode="throughput"`` on a GPU); True insists (an error on a latency runtime), False never overlaps.
    """
    device = torch.device(cascade.device)
    use_streams = overlap_streams(overlap, device.type, runtime.options.mode)
    batches = [
        _prepare(
            cascade,
            list(prompts[i : i + batch_size]),
            seed + k,
            negative_prompt,
            height,
            width,
            steps,
            guidance,
            noise_level,
            clean_caption,
        )
        for k, i in enumerate(range(0, len(prompts), batch_size))
    ]
    front, back = _streams(runtime, device, use_streams)
    _sync(device)  # timing starts with an idle device; not part of any generate call
    started = time.perf_counter()
    for k in range(len(batches) + 1):
        if k < len(batches):
            with _on(front):
                _stage1(cascade, runtime, batches[k])
                batches[k].ready = _record(front)
        if k > 0:
            with _on(back):
                _wait(back, batches[k - 1])
                _stages23(cascade, runtime, batches[k - 1])
    outputs = _fetch(cascade, batches, front, back, check_finite)
    seconds = time.perf_counter() - started
    images = sum(b.request.batch for b in batches)
    log.info("throughput: %d images in %.2f s (%.3f images/s)", images, seconds, images / max(seconds, 1e-9))
    return ThroughputResult(outputs, images, seconds)


def overlap_streams(overlap: bool | None, device_type: str, mode: str) -> bool:
    """Whether to run stage I and stages II/III on two streams (see ``run_throughput``'s ``overlap``)."""
    if device_type != "cuda":
        return False  # a CPU has no streams: the batches run one after another, which is what tests compare
    if overlap is None:
        return mode == "throughput"
    if overlap and mode != "throughput":
        # graphs of a latency runtime share one pool; captured concurrently on two streams they would collide
        raise ValueError("overlapping stages needs a runtime built with configure(..., mode='throughput')")
    return overlap


def _prepare(cascade, prompts, seed, negative, height, width, steps, guidance, noise_level, clean) -> _Batch:
    req = cascade.make_request(
        prompts,
        negative_prompt=negative,
        height=height,
        width=width,
        steps=steps,
        guidance=guidance,
        noise_level=noise_level,
        output_type="pt",
    )
    ctx = RunContext(cascade.device, cascade.dtype, torch.Generator().manual_seed(seed), False)
    embeds = cascade.encode(req, clean)  # T5, and CLIP for stage III (its cache is warm from here on)
    return _Batch(req, ctx, embeds, [])


def _embeds(batch: _Batch, opts) -> torch.Tensor:
    pos, neg = batch.embeds
    return torch.cat([neg, pos]) if opts.cfg else pos


def _stage1(cascade, runtime, batch: _Batch) -> None:
    req, o1 = batch.request, batch.request.stages[0]
    batch.outs.append(
        runtime.run_if_stage(1, cascade.stage1, o1, _embeds(batch, o1), (req.batch, 3, *req.size(1)), batch.ctx)
    )


def _stages23(cascade, runtime, batch: _Batch) -> None:
    req, (_, o2, o3) = batch.request, batch.request.stages
    if req.last_stage >= 2:
        batch.outs.append(
            runtime.run_if_stage(
                2, cascade.stage2, o2, _embeds(batch, o2), (req.batch, 3, *req.size(2)), batch.ctx, image=batch.outs[-1]
            )
        )
    if req.last_stage >= 3:
        batch.outs.append(
            runtime.run_x4_stage(cascade.stage3, o3, list(req.prompts), list(req.negatives), batch.outs[-1], batch.ctx)
        )


def _streams(runtime, device: torch.device, use: bool):
    if not use:
        return None, None
    current = torch.cuda.current_stream(device)
    front, back = runtime.stream_pair(lambda: torch.cuda.Stream(device))  # the same two on every call
    front.wait_stream(current)  # the embeddings were computed on the current stream
    back.wait_stream(current)
    return front, back


def _on(stream):
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def _record(stream):
    if stream is None:
        return None
    event = torch.cuda.Event()
    event.record(stream)
    return event


def _wait(back, batch: _Batch) -> None:
    if back is None:
        return
    back.wait_event(batch.ready)
    for tensor in batch.outs:  # made on the front stream, read on the back: keep the allocator honest
        tensor.record_stream(back)


def _fetch(cascade, batches: list[_Batch], front, back, check_finite: bool) -> list[list[torch.Tensor]]:
    if front is not None:
        current = torch.cuda.current_stream()
        current.wait_stream(front)
        current.wait_stream(back)
    flat = [t for b in batches for t in b.outs]
    labels = [f"batch {k} stage {n}" for k, b in enumerate(batches) for n in range(1, len(b.outs) + 1)]
    host = fetch_checked(flat, cascade.encoders(), check_finite, labels)  # the one host synchronisation
    out, i = [], 0
    for b in batches:
        out.append(host[i : i + len(b.outs)])
        i += len(b.outs)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
