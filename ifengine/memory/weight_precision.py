"""Which U-Nets run with int8 weights under a budget: ``weights="auto" | "native" | "int8"``.

"native" keeps the cascade's dtype everywhere (fp16 or bf16), streaming weights if it must; "int8" makes
every U-Net weight-only int8 (``models/int8.py``); "auto" keeps native weights unless the native plan
would stream U-Net weights every step (or fits no placement at all), and then quantises U-Nets, the
biggest first, until a plan streams none. Streaming re-reads gigabytes over PCIe every step (203 GiB per
call for IF-I-XL under 8 GiB), while int8 weight rounding costs little accuracy (tested against the fp32
nets in tests/test_int8_weights.py), so "auto" prefers rounding to streaming.

Candidates are planned on meta twins built from each U-Net's config, so nothing real is touched until
the choice is made.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..models.int8 import compute_dtype, is_quantized, quantize_module
from .workload import PlanInputs, Workload
from .plan_inputs import PlanMemo, plan_inputs
from .planner import UNETS, MemoryPlan, PlanError, PlanOptions, plan_memory
from .sizes import format_size

log = logging.getLogger(__name__)
WEIGHT_CHOICES = ("auto", "native", "int8")
DEFAULT_OPTIONS = PlanOptions()  # frozen: one shared default instance is safe


@dataclass(frozen=True)
class WeightChoice:
    int8: tuple[str, ...]  # U-Nets (planner names) that run with int8 weights
    plan: MemoryPlan
    inputs: PlanInputs  # what the plan was made from (int8 U-Nets as meta twins: the same paths and sizes)


def check_weights(weights: str) -> str:
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}")
    return weights


def int8_twin(unet: nn.Module) -> nn.Module:
    """A meta copy of ``unet`` with int8 weights: the sizes the planner needs, no memory."""
    if is_quantized(unet):
        return unet
    with torch.device("meta"):
        twin = type(unet)(unet.config).to(compute_dtype(unet))
    quantize_module(twin)
    return twin


def candidates(modules: dict[str, nn.Module], weights: str) -> list[tuple[str, ...]]:
    """The int8 sets to try, in order of preference."""
    unets = [n for n in UNETS if n in modules]
    if weights == "native":
        return [()]
    if weights == "int8":
        return [tuple(unets)]
    by_size = sorted(unets, key=lambda n: -sum(p.numel() for p in modules[n].parameters()))
    return [tuple(by_size[:k]) for k in range(len(by_size) + 1)]


def choose_weights(
    modules: dict[str, nn.Module],
    workload: Workload,
    budget: int,
    options: PlanOptions = DEFAULT_OPTIONS,
    weights: str = "auto",
) -> WeightChoice:
    """The preferred (int8 set, plan) under ``budget``; PlanError when even all-int8 fits nothing."""
    tried: list[WeightChoice] = []
    error = None
    memo, twins = PlanMemo(), {}  # each twin built and each module measured once over all candidates
    for int8 in candidates(modules, check_weights(weights)):
        trial = {n: _twin(twins, n, m) if n in int8 else m for n, m in modules.items()}
        inputs = plan_inputs(trial, workload, memo)
        try:
            choice = WeightChoice(int8, plan_memory(inputs, budget, options), inputs)
        except PlanError as err:
            error = PlanError(f"{err} (planned with int8 weights for {', '.join(int8)})") if int8 else err
            continue
        if choice.plan.unet_streamed_bytes_per_call == 0:
            _explain(choice, tried)
            return choice
        tried.append(choice)
    if not tried:
        raise error
    best = min(tried, key=lambda c: c.plan.unet_streamed_bytes_per_call)
    _explain(best, tried)
    return best


def _twin(twins: dict[str, nn.Module], name: str, module: nn.Module) -> nn.Module:
    if name not in twins:
        twins[name] = int8_twin(module)
    return twins[name]


def _explain(choice: WeightChoice, tried: list[WeightChoice]) -> None:
    if not choice.int8:
        return
    native = next((c for c in tried if not c.int8), None)
    why = (
        f"native weights would stream {format_size(native.plan.unet_streamed_bytes_per_call)} of U-Net weights per call"
        if native
        else "native weights fit no placement"
    )
    log.warning(
        "budget %s: int8 weights for %s (%s); pass weights='native' to keep them",
        format_size(choice.plan.budget_bytes),
        ", ".join(choice.int8),
        why,
    )


def apply_int8(modules: dict[str, nn.Module], names: tuple[str, ...]) -> None:
    """Quantise the real U-Nets ``names`` in place (before their weights are placed)."""
    for name in names:
        if is_quantized(modules[name]):
            continue
        report = quantize_module(modules[name], progress=f"{name} to int8")
        log.info(
            "%s: %d layers to int8 weights, %s -> %s",
            name,
            report.layers,
            format_size(report.bytes_before),
            format_size(report.bytes_after),
        )
