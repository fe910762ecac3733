"""The one host synchronisation of a call: stage outputs, their NaN flags and the text encoders' checks.

The text encoders of a cascade defer their finite checks (``PromptEncoder.defer_checks``), so encoding
never waits for the device; their flags travel to the host in the same copy as the images. A failed
text check is reported before a failed stage (it is the cause) and its embeddings leave the cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .buffers import fetch_no_sync
from ..text.encoder import PromptEncoder


def fetch_checked(
    outputs: list[torch.Tensor],
    encoders: Sequence[PromptEncoder],
    check_finite: bool = True,
    labels: Sequence[str] | None = None,
) -> list[torch.Tensor]:
    """``outputs`` on the host as float32, after one wait; FloatingPointError on any non-finite value
    (``labels`` name the outputs in that error; default "stage 1", "stage 2", ...)."""
    checks = [(enc, prompts, flag) for enc in encoders for prompts, flag in enc.take_checks()]
    host, finite = fetch_no_sync(outputs, extra_flags=[flag for _, _, flag in checks]).wait()
    failed = [(enc, prompts) for (enc, prompts, _), ok in zip(checks, finite[len(outputs) :], strict=True) if not ok]
    for enc, prompts in failed:
        enc.reject(prompts)
    if failed:
        raise FloatingPointError(failed[0][0].failure_message())
    if check_finite:
        labels = labels or [f"stage {n}" for n in range(1, len(outputs) + 1)]
        for label, ok in zip(labels, finite[: len(outputs)], strict=True):
            if not ok:
                raise FloatingPointError(
                    f"{label} produced NaN or infinite values; with float16 try dtype=torch.bfloat16 or float32"
                )
    return host
