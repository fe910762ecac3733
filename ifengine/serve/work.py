"""The work of each deployment on a batch of requests, with no Ray in sight (so it is tested directly).

A request travels from deployment to deployment as a ``Carry``: its validated ``Request``, its T5
embeddings, the previous stage's images and the state of its own random generator. A stage groups the
requests it was handed by everything that must be equal to share a loop (stage settings and size), runs
each group through the cascade's own stage function once, and gives each request back its rows.

Noise: each request draws its rows from its own generator (``GeneratorGroups``), in the order a single
call draws them, and the generator's state after a stage travels on to the next. So a request batched with
others gets the image it would get alone with its seed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..runtime.fetch import fetch_checked
from ..stage.noise import GeneratorGroups
from ..stage.options import Request
from ..stage.stages import RunContext
from ..text.clean import preprocess

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    request: Request
    seed: int
    clean_caption: bool = True


@dataclass
class Carry:
    """One request between deployments (pickled by Ray: host tensors only)."""

    job: Job
    rng: torch.Tensor  # the request's generator state, as the next stage must continue it
    pos: torch.Tensor | None = None  # T5 embeddings of the prompts, one row per image
    neg: torch.Tensor | None = None
    image: torch.Tensor | None = None  # the last stage run's output, NCHW [-1, 1], host float32
    batched: dict[str, int] = field(default_factory=dict)  # deployment -> images run in the same call
    error: str | None = None  # set when this request's group failed; the ingress answers it


def start(job: Job) -> Carry:
    return Carry(job=job, rng=torch.Generator("cpu").manual_seed(job.seed).get_state())


def _generator(state: torch.Tensor) -> torch.Generator:
    g = torch.Generator("cpu")
    g.set_state(state)
    return g


def groups(carries: list[Carry], key: Callable[[Carry], object]) -> list[list[int]]:
    """Indices of the carries that may share one stage call, in arrival order."""
    out: dict[object, list[int]] = {}
    for i, c in enumerate(carries):
        out.setdefault(key(c), []).append(i)
    return list(out.values())


def _each_group(carries: list[Carry], key, run, label: str) -> list[Carry]:
    """``run(list_of_carries)`` per group; a failing group marks only its own requests."""
    result = list(carries)
    for idx in groups(carries, key):
        batch = [carries[i] for i in idx]
        try:
            done = run(batch)
        except (ValueError, FloatingPointError, RuntimeError) as err:
            log.warning("%s failed for a group of %d requests: %s", label, len(batch), err)
            done = [dataclasses.replace(c, error=f"{label}: {err}") for c in batch]
        for i, c in zip(idx, done, strict=True):
            result[i] = c
    return result


def encode_batch(cascade, carries: list[Carry]) -> list[Carry]:
    """T5 embeddings for every request of the batch in one encoder call per caption-cleaning setting."""

    def run(batch: list[Carry]) -> list[Carry]:
        clean = batch[0].job.clean_caption
        prompts = [p for c in batch for p in c.job.request.prompts]
        negatives = [p for c in batch for p in c.job.request.negatives]
        pos = cascade.text.encode(preprocess(prompts, clean))
        neg = cascade.text.encode(preprocess(negatives, clean))
        pos, neg = fetch_checked([pos, neg], cascade.encoders(), labels=["prompt", "negative_prompt"])
        out, row = [], 0
        for c in batch:
            k, n = len(c.job.request.prompts), c.job.request.num_images_per_prompt
            out.append(
                dataclasses.replace(
                    c,
                    pos=pos[row : row + k].repeat_interleave(n, 0),
                    neg=neg[row : row + k].repeat_interleave(n, 0),
                    batched={**c.batched, "text": len(prompts)},
                )
            )
            row += k
        return out

    return _each_group(carries, lambda c: c.job.clean_caption, run, "text encoder")


def stage_key(stage_no: int) -> Callable[[Carry], object]:
    return lambda c: (c.job.request.stages[stage_no - 1], c.job.request.size(stage_no))


def stage_batch(cascade, stage_no: int, carries: list[Carry]) -> list[Carry]:
    """Run stage ``stage_no`` once per group of compatible requests."""
    run = (lambda b: _x4_group(cascade, b)) if stage_no == 3 else (lambda b: _if_group(cascade, stage_no, b))
    return _each_group(carries, stage_key(stage_no), run, f"stage {stage_no}")


def _context(cascade, batch: list[Carry]) -> tuple[RunContext, list[torch.Generator]]:
    gens = [_generator(c.rng) for c in batch]
    rows = GeneratorGroups(tuple((g, c.job.request.batch) for g, c in zip(gens, batch, strict=True)))
    return RunContext(cascade.device, cascade.dtype, rows, progress=False), gens


def _if_group(cascade, stage_no: int, batch: list[Carry]) -> list[Carry]:
    req = batch[0].job.request
    opts = req.stages[stage_no - 1]
    ctx, gens = _context(cascade, batch)
    device = cascade.device
    pos = torch.cat([c.pos for c in batch]).to(device, cascade.dtype)
    neg = torch.cat([c.neg for c in batch]).to(device, cascade.dtype)
    embeds = torch.cat([neg, pos]) if opts.cfg else pos
    rows = pos.shape[0]
    image = torch.cat([c.image for c in batch]).to(device) if stage_no == 2 else None
    stage = cascade.stage1 if stage_no == 1 else cascade.stage2
    shape = (rows, 3, *req.size(stage_no))
    x = cascade.runner.run_if_stage(stage_no, stage, opts, embeds, shape, ctx, image=image)
    return _split(cascade, batch, x, gens, f"stage{stage_no}")


def _x4_group(cascade, batch: list[Carry]) -> list[Carry]:
    opts = batch[0].job.request.stages[2]
    ctx, gens = _context(cascade, batch)
    prompts, negatives = [], []
    for c in batch:
        r = c.job.request
        prompts += [p for p in r.prompts for _ in range(r.num_images_per_prompt)]
        negatives += [p for p in r.negatives for _ in range(r.num_images_per_prompt)]
    image = torch.cat([c.image for c in batch]).to(cascade.device)
    x = cascade.runner.run_x4_stage(cascade.stage3, opts, prompts, negatives, image, ctx)
    return _split(cascade, batch, x, gens, "stage3")


def _split(cascade, batch: list[Carry], x: torch.Tensor, gens, name: str) -> list[Carry]:
    """Each request's rows back on the host (the stage's one wait, with its NaN check)."""
    (host,) = fetch_checked([x], cascade.encoders(), labels=[name.replace("stage", "stage ")])
    out, row = [], 0
    for c, g in zip(batch, gens, strict=True):
        n = c.job.request.batch
        out.append(
            dataclasses.replace(
                c, image=host[row : row + n], rng=g.get_state(), batched={**c.batched, name: host.shape[0]}
            )
        )
        row += n
    return out


def cascade_batch(cascade, carries: list[Carry]) -> list[Carry]:
    """The whole cascade on a batch (``--layout single``): text, then each stage a request asks for."""
    carries = encode_batch(cascade, carries)
    for stage_no in (1, 2, 3):
        todo = [i for i, c in enumerate(carries) if c.error is None and c.job.request.last_stage >= stage_no]
        for i, c in zip(todo, stage_batch(cascade, stage_no, [carries[i] for i in todo]), strict=True):
            carries[i] = c
    return carries
