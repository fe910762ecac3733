"""The request estimate of a cascade whose weights a memory plan placed: checked against the plan.

Once a plan has placed the weights, the device's free memory says little: the allocator keeps the
plan's swap area, stream slots and cached blocks, all counted as used, and the plan's offloading,
streaming and tiled decode are what make the request fit at all. So a request is measured against the
plan's budget: one within the planned workload fits by construction (the plan's peak covers it); a
larger one fits if the planner finds a placement for it under the same budget, and is refused with the
planner's reason otherwise (the runtime keeps its placement, so a bigger request is also warned about).
"""

from __future__ import annotations

from dataclasses import replace

from .planner import MemoryPlan, PlanError, plan_memory
from .workload import Workload
from .plan_inputs import plan_inputs


def within(plan: MemoryPlan, batch: int, height: int, width: int, steps) -> bool:
    work = plan.workload
    return (
        batch <= work.batch
        and height * width <= work.height * work.width
        and all(s <= w for s, w in zip(steps, work.steps, strict=False))
    )


def planned_estimate(plan: MemoryPlan, modules, base, *, batch: int, height: int, width: int, steps):
    """``base`` (a ``RequestEstimate`` of this request) restated against ``plan``'s budget."""

    steps = tuple(steps) + (1,) * (3 - len(tuple(steps)))
    source = f"the memory plan's {plan.budget_bytes / 2**30:.2f} GiB budget"
    if within(plan, batch, height, width, steps):
        return _from_plan(base, plan, source)
    workload = Workload(height=height, width=width, batch=batch, steps=steps)
    try:
        bigger = plan_memory(plan_inputs(modules, workload), plan.budget_bytes, plan.options)
    except PlanError as err:
        return replace(base, limit_bytes=plan.budget_bytes, limit_source=source, fits=False, reason=str(err))
    return _from_plan(base, bigger, source)


def _from_plan(base, plan: MemoryPlan, source: str):
    peak = max(plan.phases, key=lambda p: p.peak_bytes)
    weights = plan.peak_bytes - plan.buffer_bytes - peak.activation_bytes  # resident, swap, slots, reserves
    return replace(
        base,
        weight_bytes=weights,
        weights_loaded=False,  # counted: under a plan they are part of the peak, not of "used" memory
        buffer_bytes=plan.buffer_bytes,
        activation_bytes=peak.activation_bytes,
        peak_phase=peak.phase,
        limit_bytes=plan.budget_bytes,
        limit_source=source,
        exact=True,
        fits=plan.peak_bytes <= plan.budget_bytes,
        reason="",
    )
