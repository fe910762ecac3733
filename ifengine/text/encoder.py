"""Prompt -> embeddings, with a cache so a repeated prompt (or the empty negative) is encoded once."""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tokens:
    ids: torch.Tensor  # (B, max_length) int64
    mask: torch.Tensor  # (B, max_length) int64, 1 on real tokens


def tokenize(tokenizer, prompts: list[str], max_length: int = 77) -> Tokens:
    """Pad/truncate to ``max_length`` as the reference does, warning about what a long prompt loses."""
    batch = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                      add_special_tokens=True, return_tensors="pt")
    _warn_truncated(tokenizer, prompts, max_length)
    return Tokens(ids=batch.input_ids, mask=batch.attention_mask)


def _warn_truncated(tokenizer, prompts: list[str], max_length: int) -> None:
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=True).input_ids
        if len(ids) > max_length:
            lost = tokenizer.decode(ids[max_length - 1:-1])
            log.warning("prompt is longer than %d tokens; this part is cut off: %r", max_length, lost)


class PromptEncoder:
    """Encode prompts with a transformers text encoder (T5 for stages I/II, CLIP for stage III).

    Embeddings are cached per exact prompt string on the output device, so the unconditional ""
    and prompts repeated across calls cost one encoder run in total.
    """

    def __init__(self, tokenizer, model, *, out_dtype: torch.dtype, use_mask: bool = True,
                 max_length: int = 77, cache_size: int = 64):
        self.tokenizer, self.model = tokenizer, model
        self.out_dtype, self.use_mask, self.max_length = out_dtype, use_mask, max_length
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(len(prompts), max_length, hidden) embeddings in ``out_dtype``."""
        todo = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if todo:
            for prompt, emb in zip(todo, self._run(todo).unbind(0)):
                self._remember(prompt, emb)
        for p in prompts:
            self._cache.move_to_end(p)
        return torch.stack([self._cache[p] for p in prompts])

    @torch.no_grad()
    def _run(self, prompts: list[str]) -> torch.Tensor:
        tokens = tokenize(self.tokenizer, prompts, self.max_length)
        mask = tokens.mask.to(self.device) if self.use_mask else None
        out = self.model(tokens.ids.to(self.device), attention_mask=mask)
        hidden = out[0]
        if not torch.isfinite(hidden).all():
            raise FloatingPointError(
                f"the text encoder produced non-finite values in {hidden.dtype}; run it in bfloat16 or float32")
        return hidden.to(self.out_dtype)

    def _remember(self, prompt: str, emb: torch.Tensor) -> None:
        self._cache[prompt] = emb
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        self._cache.clear()
