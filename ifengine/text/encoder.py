"""Prompt -> embeddings, with a cache so a repeated prompt (or the empty negative) is encoded once."""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .masks import host_attention_mask
from ..facts import TEXT_TOKENS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tokens:
    ids: torch.Tensor  # (B, max_length) int64
    mask: torch.Tensor  # (B, max_length) int64, 1 on real tokens


def tokenize(tokenizer, prompts: list[str], max_length: int = TEXT_TOKENS) -> Tokens:
    """Pad/truncate to ``max_length`` as the reference does, warning about what a long prompt loses."""
    batch = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    _warn_truncated(tokenizer, prompts, max_length)
    return Tokens(ids=batch.input_ids, mask=batch.attention_mask)


def _warn_truncated(tokenizer, prompts: list[str], max_length: int) -> None:
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=True).input_ids
        if len(ids) > max_length:
            lost = tokenizer.decode(ids[max_length - 1 : -1])
            log.warning("prompt is longer than %d tokens; this part is cut off: %r", max_length, lost)


def to_device_no_sync(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``host`` on ``device`` without a host synchronisation: a copy from pageable memory makes the host
    wait for it, one from page-locked memory is only enqueued. torch's pinned allocator hands a block out
    again only after the copies reading it have completed, so the staging tensor may go at once."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


class PromptEncoder:
    """Encode prompts with a transformers text encoder (T5 for stages I/II, CLIP for stage III).

    Embeddings are cached per exact prompt string on the output device, so the unconditional ""
    and prompts repeated across calls cost one encoder run in total.

    Every run's output is checked for non-finite values. By default the check reads the result back
    (an error right here); with ``defer_checks`` it stays a device flag that the caller fetches with its
    images (``take_checks``), so encoding never synchronises with the host; ``reject`` then drops the
    embeddings a failed check covered.
    """

    def __init__(
        self,
        tokenizer,
        model,
        *,
        out_dtype: torch.dtype,
        use_mask: bool = True,
        max_length: int = TEXT_TOKENS,
        cache_size: int = 64,
        defer_checks: bool = False,
    ):
        self.tokenizer, self.model = tokenizer, model
        self.out_dtype, self.use_mask, self.max_length = out_dtype, use_mask, max_length
        self.cache_size, self.defer_checks = cache_size, defer_checks
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._unchecked: dict[tuple[str, ...], torch.Tensor] = {}  # prompts of one run -> its finite flag
        self._hidden_dtype: torch.dtype | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(len(prompts), max_length, hidden) embeddings in ``out_dtype``."""
        todo = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if todo:
            for prompt, emb in zip(todo, self._run(todo).unbind(0), strict=True):
                self._remember(prompt, emb)
        for p in prompts:
            self._cache.move_to_end(p)
        return torch.stack([self._cache[p] for p in prompts])

    @torch.no_grad()
    def _run(self, prompts: list[str]) -> torch.Tensor:
        tokens = tokenize(self.tokenizer, prompts, self.max_length)
        out = self.model(to_device_no_sync(tokens.ids, self.device), attention_mask=self._mask(tokens))
        hidden = out[0]
        finite = torch.isfinite(hidden).all()
        self._hidden_dtype = hidden.dtype
        if self.defer_checks:
            self._defer(tuple(prompts), finite)
        elif not finite:
            raise FloatingPointError(self.failure_message(hidden.dtype))
        return hidden.to(self.out_dtype)

    def _defer(self, prompts: tuple[str, ...], finite: torch.Tensor) -> None:
        """Keep the flag for the caller. Past ``cache_size`` runs nobody took, the two oldest flags merge
        into one covering both runs' prompts (a device AND, no sync): memory stays bounded and a failed
        check is never dropped, it only covers more prompts."""
        self._unchecked[prompts] = finite
        if len(self._unchecked) > self.cache_size:
            (p1, f1), (p2, f2) = list(self._unchecked.items())[:2]
            del self._unchecked[p1], self._unchecked[p2]
            self._unchecked = {tuple(dict.fromkeys(p1 + p2)): f1 & f2, **self._unchecked}

    def _mask(self, tokens: Tokens) -> torch.Tensor | None:
        if not self.use_mask:
            return None
        mask = host_attention_mask(self.model, tokens.mask)
        return None if mask is None else to_device_no_sync(mask, self.device)

    def failure_message(self, dtype: torch.dtype | None = None) -> str:
        dtype = dtype or self._hidden_dtype
        return f"the text encoder produced non-finite values in {dtype}; run it in bfloat16 or float32"

    def take_checks(self) -> list[tuple[tuple[str, ...], torch.Tensor]]:
        """The deferred finite flags since the last call, each with the prompts it covers."""
        checks, self._unchecked = list(self._unchecked.items()), {}
        return checks

    def reject(self, prompts: tuple[str, ...]) -> None:
        """Forget the embeddings of ``prompts`` (their run failed its deferred check)."""
        for p in prompts:
            self._cache.pop(p, None)

    def _remember(self, prompt: str, emb: torch.Tensor) -> None:
        self._cache[prompt] = emb
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        self._cache.clear()
        self._unchecked.clear()
