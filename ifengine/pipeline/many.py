"""Many prompts in one call: batches through the cascade, overlapped on a throughput runtime.

``Cascade.generate_many`` hands the batches to ``runtime.throughput.run_throughput``. With a runtime
built for throughput (``from_pretrained(..., throughput=True)`` on a GPU) stage I of batch k+1 runs on
one CUDA stream while stages II/III of batch k run on another; otherwise the batches run one after
another through the same code. Batch k is seeded with ``seed + k``, so its images equal a plain call
with that seed and the batch's prompts.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Sequence

import torch

from ..stage import stages
from .embeds import PromptEmbeds
from ..stage.noise import make_generator
from ..stage.options import RequestError, as_prompts
from ..validate import positive_int
from ..runtime.throughput import run_throughput

log = logging.getLogger(__name__)


@dataclass
class ManyOutput:
    images: list[Any]  # one per prompt, in prompt order (PIL images, or arrays/tensors per output_type)
    prompts: list[str]
    seeds: list[int]  # the seed of each image's batch
    seconds: float  # from the first enqueue to the images on the host (text encoding excluded)
    nsfw_detected: list[bool] | None = None
    settings: dict = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return len(self.images) / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class _PlainOptions:
    mode: str = "latency"


class _PlainRunner:
    """The plain stage loops behind the runtime's interface, for a cascade that has no runtime."""

    options = _PlainOptions()
    run_if_stage = staticmethod(stages.run_if_stage)
    run_x4_stage = staticmethod(stages.run_x4_stage)


def generate_many(
    cascade,
    prompts: Sequence[str] | None = None,
    *,
    batch_size: int = 1,
    seed: int | None = None,
    output_type: str = "pil",
    prompt_embeds=None,
    negative_prompt_embeds=None,
    **kwargs,
) -> ManyOutput:

    positive_int(batch_size, "batch_size", error=RequestError)
    _, seed = make_generator(None, seed)
    if prompt_embeds is not None:
        if prompts is not None:
            raise RequestError("give prompts or prompt_embeds=, not both")
        return _many_from_embeds(cascade, prompt_embeds, negative_prompt_embeds, batch_size, seed, output_type, kwargs)
    prompts = list(as_prompts(prompts, "prompts"))
    runtime = cascade.runtime or _PlainRunner()
    overlap = runtime.options.mode == "throughput"
    if not overlap and torch.device(cascade.device).type == "cuda":
        log.info("batches run one after another; from_pretrained(..., throughput=True) overlaps their stages")
    result = run_throughput(cascade, runtime, prompts, batch_size=batch_size, seed=seed, overlap=overlap, **kwargs)
    images, nsfw, seeds = [], [], []
    for k, outs in enumerate(result.outputs):
        batch_images, batch_nsfw = cascade.to_images(outs[-1], len(outs), output_type)
        images.extend(batch_images)
        nsfw.extend(batch_nsfw or [False] * len(batch_images))
        seeds.extend([seed + k] * len(batch_images))
    settings = {
        "prompt": prompts,
        "seed": seed,
        "batch_size": batch_size,
        "seeds": "seed + batch index",
        **{k: v for k, v in kwargs.items() if v is not None},
    }
    has_nsfw = cascade.safety is not None and output_type == "pil"
    return ManyOutput(images, prompts, seeds, result.seconds, nsfw if has_nsfw else None, settings)


def _many_from_embeds(cascade, prompt_embeds, negative_prompt_embeds, batch_size, seed, output_type, kwargs):
    """One image per row of the caller's embeddings (``encode_prompt``'s ``PromptEmbeds``, or tensors), batch
    k as a plain call with ``seed + k`` and those rows. The batches run one after another: the overlapped
    throughput path encodes text itself, so it is used only for prompts given as text."""
    given = prompt_embeds
    if not isinstance(given, PromptEmbeds):
        given = PromptEmbeds(prompt_embeds, negative_prompt_embeds)
    elif negative_prompt_embeds is not None:
        given = dataclasses.replace(given, negative_prompt_embeds=negative_prompt_embeds)
    rows = int(given.prompt_embeds.shape[0])
    images, nsfw, seeds, prompts = [], [], [], []
    started = time.perf_counter()
    for k, i in enumerate(range(0, rows, batch_size)):
        part = _rows(given, slice(i, i + batch_size))
        out = cascade(prompt_embeds=part, seed=seed + k, output_type=output_type, progress=False, **kwargs)
        images.extend(out.images)
        nsfw.extend(out.nsfw_detected or [False] * len(out.images))
        seeds.extend([seed + k] * len(out.images))
        prompts.extend(part.prompts or [f"[prompt_embeds {j}]" for j in range(i, i + len(out.images))])
    seconds = time.perf_counter() - started
    settings = {"prompt_embeds": rows, "seed": seed, "batch_size": batch_size, "seeds": "seed + batch index"}
    settings |= {k: v for k, v in kwargs.items() if v is not None}
    has_nsfw = cascade.safety is not None and output_type == "pil"
    return ManyOutput(images, prompts, seeds, seconds, nsfw if has_nsfw else None, settings)


def _rows(given, rows: slice):
    """The PromptEmbeds of some rows (every tensor and label list cut the same way)."""
    cut = lambda v: None if v is None else v[rows]  # noqa: E731 - tensors and tuples alike
    return dataclasses.replace(
        given,
        prompt_embeds=given.prompt_embeds[rows],
        negative_prompt_embeds=cut(given.negative_prompt_embeds),
        clip_prompt_embeds=cut(given.clip_prompt_embeds),
        clip_negative_prompt_embeds=cut(given.clip_negative_prompt_embeds),
        prompts=cut(given.prompts),
        negative_prompts=cut(given.negative_prompts),
    )
