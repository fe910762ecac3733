"""Fixes from the review of the GPU path that a CPU can check: deferred finite checks, the host mask,
throughput streams made once, planner vs runner buffer sizes, the request estimate against a plan."""

import logging

import pytest
import torch

from ifengine.bench.fullsize import random_cascade
from ifengine.runtime.api import Runtime

TINY = ("tiny-I", "tiny-II", "tiny-x4")


@pytest.fixture(scope="module")
def tiny():
    return random_cascade(TINY, dtype=torch.float32, device="cpu")


def test_a_failed_deferred_check_survives_any_number_of_later_prompts(tiny):
    enc = tiny.text
    enc.clear_cache()
    enc.defer_checks = True
    weights = {k: v.clone() for k, v in enc.model.state_dict().items()}
    try:
        with torch.no_grad():
            for p in enc.model.parameters():
                p.fill_(float("nan"))
        enc.encode(["a poisoned prompt"])
        enc.model.load_state_dict(weights)
        for k in range(enc.cache_size + 6):  # more runs than the encoder keeps flags for
            enc.encode([f"prompt number {k}"])
        checks = enc.take_checks()
    finally:
        enc.defer_checks = False
        enc.clear_cache()
    assert len(checks) <= enc.cache_size
    failed = [prompts for prompts, finite in checks if not bool(finite)]
    assert len(failed) == 1 and "a poisoned prompt" in failed[0]
    assert sum(len(p) for p, _ in checks) == enc.cache_size + 7  # every prompt is still covered


def test_the_host_mask_path_says_loudly_when_transformers_changed(tiny, monkeypatch, caplog):
    import transformers.masking_utils as masking

    from ifengine.text import masks

    mask = torch.ones(1, 77, dtype=torch.long)
    mask[:, 9:] = 0  # padding: something is masked
    assert masks.host_attention_mask(tiny.text.model, mask).dim() == 4  # this transformers: prepared 4-D

    def drifted(**kwargs):
        raise TypeError("create_bidirectional_mask() got an unexpected keyword argument 'inputs_embeds'")

    monkeypatch.setattr(masking, "create_bidirectional_mask", drifted)
    masks._warned.clear()
    with caplog.at_level(logging.WARNING, logger="ifengine.text.masks"):
        assert masks.host_attention_mask(tiny.text.model, mask) is mask
        masks.host_attention_mask(tiny.text.model, mask)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "synchronis" in warnings[0].getMessage()
    assert masks.host_mask_status(tiny.text.model).startswith("2-D fallback")


def test_throughput_streams_are_made_once_per_runtime(tiny):
    runtime = Runtime(tiny, options=None, runner=None, backend=None)
    made = []

    def make():
        made.append(object())
        return made[-1]

    first = runtime.stream_pair(make)
    assert runtime.stream_pair(make) is first and len(made) == 2 and first == tuple(made)
