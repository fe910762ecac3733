"""Prompt embeddings brought by the caller instead of text (diffusers' ``prompt_embeds=``).

The model card's memory advice is to run T5 once, keep its embeddings and free it: ``Cascade.encode_prompt``
returns a ``PromptEmbeds`` (it unpacks to ``(prompt_embeds, negative_prompt_embeds)`` as diffusers' does),
and every call and editing mode takes ``prompt_embeds=`` / ``negative_prompt_embeds=`` in place of text, on
a cascade loaded with or without T5 (``text_encoder=None``). Stage III conditions on its own CLIP encoder,
not T5: a ``PromptEmbeds`` carries those embeddings too; a bare T5 tensor cannot, so a run to stage III
from bare tensors is refused with a message saying what to pass.
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass

import torch

from ..text.clean import preprocess
from ..stage.options import Request, RequestError, as_prompts, check_images_per_prompt, negatives_for


@dataclass(frozen=True)
class PromptEmbeds:
    """T5 embeddings of prompts (B, 77, D) and their negatives, plus stage III's CLIP embeddings."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None
    clip_prompt_embeds: torch.Tensor | None = None
    clip_negative_prompt_embeds: torch.Tensor | None = None
    prompts: tuple[str, ...] | None = None  # the text they came from, when known (for image metadata)
    negative_prompts: tuple[str, ...] | None = None

    def __iter__(self):
        """``pe, ne = pipe.encode_prompt(...)``, as diffusers' IFPipeline.encode_prompt returns."""
        return iter((self.prompt_embeds, self.negative_prompt_embeds))

    def __reduce__(self):
        # rebuilt from its fields, so ``torch.load(path, weights_only=True)`` accepts it once this class
        # is allowed (below, when ifengine.PromptEmbeds is first imported)
        return (PromptEmbeds, tuple(getattr(self, f.name) for f in dataclasses.fields(self)))


torch.serialization.add_safe_globals([PromptEmbeds])


@dataclass(frozen=True)
class Given:
    """The embeddings one call brings (rows per prompt, before ``num_images_per_prompt`` repeats)."""

    pos: torch.Tensor
    neg: torch.Tensor | None
    clip_pos: torch.Tensor | None
    clip_neg: torch.Tensor | None


def encode_prompt(
    pipe,
    prompts,
    negative_prompts=None,
    clean_caption: bool = True,
    *,
    num_images_per_prompt: int = 1,
    do_classifier_free_guidance: bool = True,
    prompt_embeds=None,
    negative_prompt_embeds=None,
) -> PromptEmbeds:
    """Run T5 (and stage III's CLIP when loaded) once; the embeddings are checked for NaN right here.
    diffusers' options: ``num_images_per_prompt`` repeats each row, ``do_classifier_free_guidance=False``
    leaves the negatives out, given ``prompt_embeds`` come back as they are (repeated)."""
    n = check_images_per_prompt(num_images_per_prompt)
    if prompt_embeds is not None:
        if prompts is not None:
            raise RequestError("give prompt or prompt_embeds, not both")
        pos, neg = _tensor(prompt_embeds, "prompt_embeds"), negative_prompt_embeds
        return _remember(PromptEmbeds(*_repeat(n, pos, neg if do_classifier_free_guidance else None)))
    if pipe.text is None:
        raise RequestError("this cascade was loaded without T5 (text_encoder=None): it cannot encode text")
    prompts = as_prompts(prompts)
    negatives = negatives_for(prompts, negative_prompts)
    pos = pipe.text.encode(preprocess(list(prompts), clean_caption))
    neg = pipe.text.encode(preprocess(list(negatives), clean_caption)) if do_classifier_free_guidance else None
    clip = getattr(pipe.stage3, "text", None)
    clip_pos = clip.encode(list(prompts)) if clip is not None else None
    clip_neg = clip.encode(list(negatives)) if clip is not None and neg is not None else None
    _check_now(pipe.encoders())
    each = lambda rows: tuple(p for p in rows for _ in range(n))  # noqa: E731
    rows = _repeat(n, pos, neg, clip_pos, clip_neg)
    return _remember(PromptEmbeds(*rows, each(prompts), each(negatives) if neg is not None else None))


def _repeat(n: int, *tensors):
    return tuple(None if t is None else t.repeat_interleave(n, 0) if n > 1 else t for t in tensors)


# encode_prompt's results by the identity of their T5 tensor: a caller who unpacks the pair
# (``pe, ne = pipe.encode_prompt(...)``) still brings stage III's CLIP rows and the text labels along
_ISSUED: dict[int, tuple[weakref.ref, PromptEmbeds]] = {}


def _remember(result: PromptEmbeds) -> PromptEmbeds:
    key = id(result.prompt_embeds)
    _ISSUED[key] = (weakref.ref(result.prompt_embeds, lambda _ref, k=key, table=_ISSUED: table.pop(k, None)), result)
    return result


def issued(tensor) -> PromptEmbeds | None:
    """The ``PromptEmbeds`` that ``tensor`` (a bare ``prompt_embeds``) came from, when encode_prompt made it."""
    entry = _ISSUED.get(id(tensor))
    return entry[1] if entry is not None and entry[0]() is tensor else None


def _check_now(encoders) -> None:
    # the cascade's encoders defer their finite checks to the end of a run; here the embeddings leave
    # the cascade, so a bad one must fail now (one host sync per encode_prompt call, not per step)
    for enc in encoders:
        for prompts, finite in enc.take_checks():
            if not bool(finite):
                enc.reject(prompts)
                raise FloatingPointError(enc.failure_message())


def prepare(pipe, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds):
    """(prompt, negative_prompt, Given or None) for ``make_request``: labels stand in for the text a
    caller did not give (they show in the settings and metadata)."""
    if prompt_embeds is None:
        if negative_prompt_embeds is not None:
            raise RequestError("negative_prompt_embeds= goes with prompt_embeds=; with text, use negative_prompt=")
        if prompt is None:
            raise RequestError("give prompt= (text) or prompt_embeds= (from pipe.encode_prompt)")
        if pipe.text is None:
            raise RequestError(
                "this cascade was loaded without T5 (text_encoder=None), so it cannot encode the prompt text: "
                "pass prompt_embeds= (and negative_prompt_embeds=) from encode_prompt on a cascade that has T5"
            )
        return prompt, negative_prompt, None
    if prompt is not None:
        raise RequestError("give prompt= or prompt_embeds=, not both")
    given = prompt_embeds if isinstance(prompt_embeds, PromptEmbeds) else issued(prompt_embeds)
    if given is None or (
        negative_prompt_embeds is not None and negative_prompt_embeds is not given.negative_prompt_embeds
    ):
        given = PromptEmbeds(prompt_embeds, clip_prompt_embeds=getattr(given, "clip_prompt_embeds", None),
                             prompts=getattr(given, "prompts", None))  # fmt: skip
    pos = _tensor(given.prompt_embeds, "prompt_embeds")
    neg = negative_prompt_embeds if negative_prompt_embeds is not None else given.negative_prompt_embeds
    if neg is not None:
        if negative_prompt is not None:
            raise RequestError("give negative_prompt= or negative_prompt_embeds=, not both")
        neg = _tensor(neg, "negative_prompt_embeds")
        if neg.shape != pos.shape:
            raise RequestError(
                f"negative_prompt_embeds has shape {tuple(neg.shape)} but prompt_embeds {tuple(pos.shape)}; "
                "they must match"
            )
    labels = given.prompts or tuple(f"[prompt_embeds {i}]" for i in range(pos.shape[0]))
    if neg is not None and negative_prompt is None:
        negative_prompt = given.negative_prompts or [f"[negative_prompt_embeds {i}]" for i in range(pos.shape[0])]
    clip_neg = given.clip_negative_prompt_embeds if neg is given.negative_prompt_embeds else None
    return list(labels), negative_prompt, Given(pos, neg, given.clip_prompt_embeds, clip_neg)


def _tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() != 3 or not value.is_floating_point():
        what = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise RequestError(
            f"{name} must be a float tensor (batch, tokens, hidden) as encode_prompt returns it, got {what}"
        )
    return value


def attach(pipe, request: Request, given: Given | None) -> Request:
    """The request carrying the caller's embeddings, after the checks that need its stage options."""
    if given is None:
        return request
    # the width stage I's U-Net projects from (T5's d_model), where its config says
    width = getattr(getattr(getattr(pipe.stage1, "unet", None), "config", None), "encoder_hid_dim", None)
    if isinstance(width, int) and given.pos.shape[-1] != width:
        raise RequestError(f"prompt_embeds have {given.pos.shape[-1]} features; this cascade's U-Nets take {width}")
    ifs = request.stages[: min(request.last_stage, 2)]
    if given.neg is None and pipe.text is None and any(o.cfg for o in ifs):
        raise RequestError(
            "classifier-free guidance needs negative embeddings and this cascade has no T5 to encode the "
            "empty negative prompt: pass negative_prompt_embeds= (or guidance=1)"
        )
    if request.last_stage >= 3 and given.clip_pos is None:
        raise RequestError(
            "stage III encodes its prompt with its own CLIP text encoder, which a T5 tensor cannot stand in "
            "for: pass the PromptEmbeds that pipe.encode_prompt() returns (it holds both), or last_stage=2"
        )
    if request.last_stage >= 3 and request.stages[2].cfg and given.neg is not None and given.clip_neg is None:
        raise RequestError(
            "stage III needs CLIP embeddings of the negative prompts too: pass them inside the PromptEmbeds "
            "from pipe.encode_prompt(prompts, negative_prompts), or negative_prompt= as text"
        )
    return dataclasses.replace(request, embeds=given)


def t5_pair(pipe, request: Request, clean_caption: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(positive, negative) T5 rows of the run from the caller's embeddings, negatives encoded if absent."""
    given, n = request.embeds, request.num_images_per_prompt
    place = lambda t: t.to(pipe.device, pipe.dtype).repeat_interleave(n, 0)  # noqa: E731
    if given.neg is not None:
        return place(given.pos), place(given.neg)
    if pipe.text is None:  # attach() made sure no stage guides
        return place(given.pos), place(torch.zeros_like(given.pos))
    neg = pipe.text.encode(preprocess(list(request.negatives), clean_caption))
    return place(given.pos), neg.to(pipe.device, pipe.dtype).repeat_interleave(n, 0)


class FixedText:
    """Stands in for stage III's CLIP encoder during one run: placeholder keys -> the caller's rows;
    any other key (a negative prompt given as text) is encoded by the real encoder."""

    def __init__(self, table: dict[str, torch.Tensor], encoder):
        self.table, self.encoder = table, encoder

    def encode(self, keys: list[str]) -> torch.Tensor:
        rows = [self.table[k] if k in self.table else self.encoder.encode([k])[0] for k in keys]
        return torch.stack(rows)


def x4_inputs(pipe, request: Request) -> tuple[object, list[str], list[str]]:
    """(stage III, prompts, negatives) for ``run_x4_stage``, one entry per image."""
    n = request.num_images_per_prompt
    given = request.embeds
    negatives = [p for p in request.negatives for _ in range(n)]
    if given is None:
        return pipe.stage3, [p for p in request.prompts for _ in range(n)], negatives
    keys = [f"\0prompt {i}" for i in range(given.pos.shape[0]) for _ in range(n)]
    table = {f"\0prompt {i}": row for i, row in enumerate(given.clip_pos)}
    if given.clip_neg is not None:
        negatives = [f"\0negative {i}" for i in range(given.clip_neg.shape[0]) for _ in range(n)]
        table.update({f"\0negative {i}": row for i, row in enumerate(given.clip_neg)})
    return dataclasses.replace(pipe.stage3, text=FixedText(table, pipe.stage3.text)), keys, negatives
