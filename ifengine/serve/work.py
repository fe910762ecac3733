"""The work of each deployment on a batch of requests, with no Ray in sight (so it is tested directly).

A request travels from deployment to deployment as a ``Carry``: its validated ``Request``, its T5 and
CLIP embeddings (host tensors: encoded once, in the text deployment), the previous stage's images and the
state of its own random generator. A stage groups the requests it was handed by everything that must be
equal to share a loop (stage settings, size, LoRA), pads each group up to the next batch size the runtime
captures graphs for, runs it through the cascade's runner once, and gives each request back its rows.

Edits (img2img, inpainting, style transfer) travel the same way: the ingress plans them
(``pipeline.edit.plan_edit``: sources resized for each IF stage, masks, strengths), the carry takes the
plan along, and a stage batches edits that share their start (strength, mask or not, style mixing) with
each other, as it batches generations.

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

from ..pipeline.edit import EditPlan
from ..pipeline.embeds import FixedText
from ..pipeline.images import convert
from ..runtime.fetch import fetch_checked
from ..stage.noise import GeneratorGroups
from ..stage.options import Request
from ..stage.stages import RunContext, Start
from ..text.clean import preprocess

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    request: Request
    seed: int
    clean_caption: bool = True
    lora: str | None = None  # the LoRA adapter (a file of the configured folder) stage I runs with
    edit: EditPlan | None = None  # an image edit: its sources, masks and strengths (None: text to image)


@dataclass
class Carry:
    """One request between deployments (pickled by Ray: host tensors only)."""

    job: Job
    rng: torch.Tensor  # the request's generator state, as the next stage must continue it
    pos: torch.Tensor | None = None  # T5 embeddings of the prompts, one row per image
    neg: torch.Tensor | None = None
    positive: torch.Tensor | None = None  # T5 rows of a style transfer's positive prompts
    clip_pos: torch.Tensor | None = None  # stage III's CLIP embeddings, one row per image (split layout)
    clip_neg: torch.Tensor | None = None
    image: torch.Tensor | None = None  # the last stage run's output, NCHW [-1, 1], host float32
    batched: dict[str, int] = field(default_factory=dict)  # deployment -> images run in the same call
    error: str | None = None  # set when this request's group failed; the ingress answers it
    images: list | None = None  # the final PIL images after the safety checker and watermark
    nsfw: list[bool] | None = None  # the safety checker's verdict per image (None: no checker ran)


class _NoClip:
    """Stage III's text encoder in a stage III replica: CLIP lives in the text deployment, and the
    embeddings come with each request (a replica holds only the x4 U-Net and the VAE)."""

    model = None  # nothing for the memory planner to place

    def encode(self, prompts: list[str]) -> torch.Tensor:
        raise RuntimeError("stage III replicas hold no CLIP encoder: the text deployment encodes the prompts")

    def take_checks(self) -> list:
        return []


NO_CLIP = _NoClip()


def captured_sizes(cfg, graphs: bool) -> tuple[int, ...]:
    """The batch sizes a stage call is padded up to: the deployment's ``batch_sizes``, else on a CUDA-graph
    runtime the powers of two up to ``max_batch_size`` (one captured graph each), else none."""
    if cfg.batch_sizes is not None:
        return tuple(cfg.batch_sizes)
    if not graphs:
        return ()
    sizes = {1 << k for k in range(cfg.max_batch_size.bit_length()) if 1 << k <= cfg.max_batch_size}
    return tuple(sorted(sizes | {cfg.max_batch_size}))


def uses_graphs(cascade) -> bool:
    """Whether the cascade's runner captures CUDA graphs (so each new batch size costs a capture)."""
    options = getattr(cascade.runtime, "options", None)
    return bool(options is not None and options.cuda_graphs)


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


def encode_batch(cascade, carries: list[Carry], clip=None) -> list[Carry]:
    """T5 (and with ``clip`` stage III's CLIP) embeddings for every request of the batch, in one encoder
    call per caption-cleaning setting; they travel on as host tensors."""

    def run(batch: list[Carry]) -> list[Carry]:
        clean = batch[0].job.clean_caption
        prompts = [p for c in batch for p in c.job.request.prompts]
        negatives = [p for c in batch for p in c.job.request.negatives]
        out = [cascade.text.encode(preprocess(prompts, clean)), cascade.text.encode(preprocess(negatives, clean))]
        encoders, labels = cascade.encoders(), ["prompt", "negative_prompt"]
        if clip is not None:  # CLIP reads the raw prompts, as stage III of a whole cascade does
            out += [clip.encode(prompts), clip.encode(negatives)]
            encoders, labels = [*encoders, clip], [*labels, "prompt (CLIP)", "negative_prompt (CLIP)"]
        positives = [p for c in batch for p in _positives(c)]
        if positives:  # style transfers' positive prompts, one call for the batch
            out.append(cascade.text.encode(preprocess(positives, clean)))
            encoders, labels = [*encoders, cascade.text], [*labels, "positive_prompt"]
        host = fetch_checked(out, encoders, labels=labels)
        positive = host.pop() if positives else None
        rows = _prompt_rows(batch)
        carries = [_with_rows(c, host, r) for c, r in zip(batch, rows, strict=True)]
        return _with_positives(carries, positive) if positive is not None else carries

    return _each_group(carries, lambda c: c.job.clean_caption, run, "text encoder")


def _positives(c: Carry) -> tuple[str, ...]:
    return c.job.edit.positives if c.job.edit is not None and c.job.edit.positives else ()


def _with_positives(batch: list[Carry], positive: torch.Tensor) -> list[Carry]:
    out, row = [], 0
    for c in batch:
        k = len(_positives(c))
        rows = positive[row : row + k].repeat_interleave(c.job.request.num_images_per_prompt, 0) if k else None
        out.append(dataclasses.replace(c, positive=rows))
        row += k
    return out


def _prompt_rows(batch: list[Carry]) -> list[slice]:
    out, row = [], 0
    for c in batch:
        k = len(c.job.request.prompts)
        out.append(slice(row, row + k))
        row += k
    return out


def _with_rows(c: Carry, host: list[torch.Tensor], rows: slice) -> Carry:
    n = c.job.request.num_images_per_prompt
    per_image = [t[rows].repeat_interleave(n, 0) for t in host]
    pos, neg, *clip = per_image
    clip_pos, clip_neg = clip if clip else (None, None)
    return dataclasses.replace(
        c, pos=pos, neg=neg, clip_pos=clip_pos, clip_neg=clip_neg, batched={**c.batched, "text": host[0].shape[0]}
    )


def stage_key(stage_no: int) -> Callable[[Carry], object]:
    """What requests must share to run in one stage call: settings, output size, LoRA (stage I), the
    input image's shape (stages II, III) and an edit's start."""
    lora = (lambda c: c.job.lora) if stage_no == 1 else (lambda c: None)
    shape = (lambda c: None) if stage_no == 1 else (lambda c: tuple(c.image.shape[1:]))
    return lambda c: (
        c.job.request.stages[stage_no - 1],
        _out_size(c, stage_no),
        lora(c),
        shape(c),
        _edit_key(c, stage_no),
    )


def _edit_key(c: Carry, stage_no: int) -> object:
    """An edit's start at an IF stage: requests share a call only with the same strength, mask or not,
    and style mixing (stage III upscales edits and generations alike)."""
    edit = c.job.edit
    if edit is None or stage_no == 3:
        return None
    return (edit.strength[stage_no - 1], edit.masks[stage_no - 1] is not None, edit.mixer)


def _out_size(c: Carry, stage_no: int) -> tuple[int, int]:
    """An IF stage's output size: the request's, or for an edit the source's at that stage (the two can
    differ by rounding: each stage rounds the source's long side to its own multiple)."""
    edit = c.job.edit
    if edit is None or stage_no == 3:
        return c.job.request.size(stage_no)
    return tuple(edit.sources[stage_no - 1].shape[-2:])


def stage_batch(cascade, stage_no: int, carries: list[Carry], sizes: tuple[int, ...] = ()) -> list[Carry]:
    """Run stage ``stage_no`` once per group of compatible requests, each group padded up to the next of
    ``sizes`` (the batch sizes the runtime captures) so that no new size costs a graph capture."""
    group = (lambda b: _x4_group(cascade, b)) if stage_no == 3 else (lambda b: _if_group(cascade, stage_no, b))

    def run(batch: list[Carry]) -> list[Carry]:
        padded = pad(batch, sizes)
        return group(padded)[: len(batch)]

    return _each_group(carries, stage_key(stage_no), run, f"stage {stage_no}")


def pad(batch: list[Carry], sizes: tuple[int, ...]) -> list[Carry]:
    """``batch`` plus one filler request whose rows bring it up to the smallest of ``sizes`` that holds it
    (none past the largest). The filler copies the last request's inputs and a copy of its generator, so
    no real request's noise changes; its rows are dropped after the stage."""
    rows = sum(c.job.request.batch for c in batch)
    target = next((s for s in sorted(sizes) if s >= rows), rows)
    if target == rows:
        return batch
    last, k = batch[-1], target - rows
    request = dataclasses.replace(
        last.job.request,
        prompts=last.job.request.prompts[:1],
        negatives=last.job.request.negatives[:1],
        num_images_per_prompt=k,
    )
    rep = lambda t: None if t is None else t[:1].repeat(k, *([1] * (t.dim() - 1)))  # noqa: E731
    filler = dataclasses.replace(
        last,
        job=dataclasses.replace(last.job, request=request),
        rng=last.rng.clone(),
        pos=rep(last.pos),
        neg=rep(last.neg),
        positive=rep(last.positive),
        clip_pos=rep(last.clip_pos),
        clip_neg=rep(last.clip_neg),
        image=rep(last.image),
    )
    return [*batch, filler]


def _context(cascade, batch: list[Carry]) -> tuple[RunContext, list[torch.Generator]]:
    gens = [_generator(c.rng) for c in batch]
    rows = GeneratorGroups(tuple((g, c.job.request.batch) for g, c in zip(gens, batch, strict=True)))
    return RunContext(cascade.device, cascade.dtype, rows, progress=False), gens


def _if_group(cascade, stage_no: int, batch: list[Carry]) -> list[Carry]:
    first = batch[0]
    opts = first.job.request.stages[stage_no - 1]
    ctx, gens = _context(cascade, batch)
    rows = lambda name: torch.cat([getattr(c, name) for c in batch]).to(cascade.device, cascade.dtype)  # noqa: E731
    pos, neg = rows("pos"), rows("neg")
    branches = [neg, pos, rows("positive")] if _positives(first) else [neg, pos]
    embeds = torch.cat(branches) if opts.cfg else pos
    image = torch.cat([c.image for c in batch]).to(cascade.device) if stage_no == 2 else None
    stage = cascade.stage1 if stage_no == 1 else cascade.stage2
    shape = (pos.shape[0], 3, *_out_size(first, stage_no))
    edit = {} if first.job.edit is None else dict(start=_start(batch, stage_no), mixer=first.job.edit.mixer)
    x = cascade.runner.run_if_stage(stage_no, stage, opts, embeds, shape, ctx, image=image, **edit)
    return _split(cascade, batch, x, gens, f"stage{stage_no}")


def _start(batch: list[Carry], stage_no: int) -> Start:
    """The edits' start at this stage: each request's source (and mask) repeated for its rows."""
    edits = [c.job.edit for c in batch]
    source = _each_rows(batch, [e.sources[stage_no - 1] for e in edits])
    has_mask = edits[0].masks[stage_no - 1] is not None
    mask = _each_rows(batch, [e.masks[stage_no - 1] for e in edits]) if has_mask else None
    return Start(source, edits[0].strength[stage_no - 1], mask)


def _each_rows(batch: list[Carry], tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.expand(c.job.request.batch, -1, -1, -1) for t, c in zip(tensors, batch, strict=True)])


def _x4_group(cascade, batch: list[Carry]) -> list[Carry]:
    opts = batch[0].job.request.stages[2]
    ctx, gens = _context(cascade, batch)
    stage, prompts, negatives = _x4_text(cascade.stage3, batch, cascade.device, cascade.dtype)
    image = torch.cat([c.image for c in batch]).to(cascade.device)
    x = cascade.runner.run_x4_stage(stage, opts, prompts, negatives, image, ctx)
    return _split(cascade, batch, x, gens, "stage3")


def _x4_text(stage, batch: list[Carry], device, dtype):
    """(stage III, prompt keys, negative keys): the carried CLIP rows when the text deployment encoded them
    (``FixedText`` hands them to the runner by key), else the prompts for the stage's own CLIP."""
    if batch[0].clip_pos is None:
        prompts, negatives = [], []
        for c in batch:
            r = c.job.request
            prompts += [p for p in r.prompts for _ in range(r.num_images_per_prompt)]
            negatives += [p for p in r.negatives for _ in range(r.num_images_per_prompt)]
        return stage, prompts, negatives
    pos, neg = torch.cat([c.clip_pos for c in batch]), torch.cat([c.clip_neg for c in batch])
    prompts = [f"\0prompt {i}" for i in range(pos.shape[0])]
    negatives = [f"\0negative {i}" for i in range(neg.shape[0])]
    rows = torch.cat([pos, neg]).to(device, dtype)  # one upload for the whole group
    table = dict(zip(prompts + negatives, rows.unbind(0), strict=True))
    return dataclasses.replace(stage, text=FixedText(table, NO_CLIP)), prompts, negatives


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


def cascade_batch(cascade, carries: list[Carry], sizes: tuple[int, ...] = ()) -> list[Carry]:
    """The whole cascade on a batch (``--layout single``): text, then each stage a request asks for."""
    carries = encode_batch(cascade, carries)
    for stage_no in (1, 2, 3):
        todo = [i for i, c in enumerate(carries) if c.error is None and c.job.request.last_stage >= stage_no]
        done = stage_batch(cascade, stage_no, [carries[i] for i in todo], sizes)
        for i, c in zip(todo, done, strict=True):
            carries[i] = c
    return carries


def checked_cascade_batch(cascade, carries: list[Carry], sizes: tuple[int, ...] = ()) -> list[Carry]:
    """``cascade_batch``, then the safety checker and watermark on the requests that got an image: in
    ``--layout single`` the replica that made the images checks them, which saves the ingress a second
    round trip and a second batch wait per request."""
    carries = cascade_batch(cascade, carries, sizes)
    ok = [i for i, c in enumerate(carries) if c.error is None]
    marks = [cascade.watermark_size(carries[i].job.request.last_stage) for i in ok]
    for i, c in zip(ok, safety_batch(cascade.safety, [carries[i] for i in ok], marks), strict=True):
        carries[i] = c
    return carries


def safety_batch(safety, carries: list[Carry], watermark_sizes: list[int | None]) -> list[Carry]:
    """The final images through the safety checker and watermark (as ``Cascade.to_images`` does), one
    checker call per group of equal image size and watermark size; no checker: plain PIL images."""
    marks = {id(c): m for c, m in zip(carries, watermark_sizes, strict=True)}

    def run(batch: list[Carry]) -> list[Carry]:
        images = torch.cat([c.image for c in batch])
        if safety is None:
            pil, flags = convert(images, "pil"), None
        else:
            pil, flags = safety(images, watermark_size=marks[id(batch[0])])
        out, row = [], 0
        for c in batch:
            n = c.image.shape[0]
            nsfw = None if flags is None else list(flags[row : row + n])
            out.append(dataclasses.replace(c, images=pil[row : row + n], nsfw=nsfw))
            row += n
        return out

    return _each_group(carries, lambda c: (tuple(c.image.shape[1:]), marks[id(c)]), run, "safety checker")
