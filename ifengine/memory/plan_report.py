"""A MemoryPlan as the table ``ifengine plan`` prints."""

from __future__ import annotations

from ..facts import STAGE_OF_UNET
from .workload import PHASE_LABELS, PHASES, PlanInputs
from .planner import OFFLOAD, RESIDENT, MemoryPlan, Placement
from .sizes import format_size

_PHASE_OF = {name: phase for phase, names in PHASES for name in names}  # derived, not restated
_SCOPES = {
    "run": "CUDA graphs kept across calls",
    "stage": "CUDA graphs recaptured per stage (their memory is freed after each stage)",
    "none": "CUDA graphs off",
}


def _params(n: int) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _placement_text(p: Placement, units: int) -> str:
    when = PHASE_LABELS.get(_PHASE_OF.get(p.name, ""), "its stage")
    if p.mode == RESIDENT:
        return "resident"
    tail = "; released after encoding (before stage I)" if p.name == "t5" else ""
    if p.mode == OFFLOAD:
        return f"offload: pinned host memory, moved in for {when}{tail}"
    return (
        f"stream: {format_size(p.swap_bytes)} moved in for {when}, {format_size(p.streamed_bytes)} in "
        f"{len(p.streamed_units)} of {units} units streamed every forward{tail}"
    )


def _header(plan: MemoryPlan, inputs: PlanInputs) -> list[str]:
    w = inputs.workload
    sizes = " -> ".join(f"{h}x{wd}" for h, wd in (w.size(s) for s in range(1, _stages(inputs) + 1)))
    unet_dtype = _dtype_name(inputs.component("unet1").dtype)
    mode = "throughput (stage I overlaps II/III)" if plan.options.mode == "throughput" else "latency"
    return [
        f"memory plan: budget {format_size(plan.budget_bytes)} for the allocator, {unet_dtype}, "
        f"batch {w.batch}, {sizes}, steps {'/'.join(map(str, w.steps[: _stages(inputs)]))}",
        f"mode {mode}; {_SCOPES[plan.graph_scope]}",
        "",
    ]


def _stages(inputs: PlanInputs) -> int:
    return max(STAGE_OF_UNET[c.name] for c in inputs.components if c.name in STAGE_OF_UNET)


def _components(plan: MemoryPlan, inputs: PlanInputs) -> list[str]:
    rows = [f"{'component':<10} {'params':>9} {'weights':>11} {'dtype':>9}  placement"]
    for p in plan.placements:
        info = inputs.component(p.name)
        dtype = "int8" if info.int8 else _dtype_name(info.dtype)
        rows.append(
            f"{p.name:<10} {_params(info.params):>9} {format_size(info.weight_bytes):>11} "
            f"{dtype:>9}  {_placement_text(p, len(info.partition.units))}"
        )
    return rows


def _phases(plan: MemoryPlan) -> list[str]:
    rows = [f"{'phase':<12} {'runs':<12} {'activations':>12} {'predicted peak':>15}"]
    for ph in plan.phases:
        label = PHASE_LABELS.get(ph.phase, "stages I-III")
        runs = ",".join(ph.components) if len(ph.components) <= 2 else "all U-Nets"
        rows.append(f"{label:<12} {runs:<12} {format_size(ph.activation_bytes):>12} {format_size(ph.peak_bytes):>15}")
    return rows


def _footer(plan: MemoryPlan, inputs: PlanInputs) -> list[str]:
    decode = (
        "whole image"
        if plan.vae_tile is None
        else f"tiled, {plan.vae_tile}x{plan.vae_tile} latent tiles overlapping by {plan.vae_overlap}"
    )
    lines = [
        f"swap area {format_size(plan.swap_bytes)} (one device buffer shared by all non-resident "
        f"weights), stream slot {format_size(plan.slot_bytes)}, buffers {format_size(plan.buffer_bytes)}, "
        f"reserve {format_size(plan.options.reserve_bytes)}",
        f"VAE decode: {decode}",
        f"weights moved in per call: {format_size(plan.transfer_bytes_per_call)}",
    ]
    if plan.unet_streamed_bytes_per_call:
        lines.append(
            f"U-Net weights streamed per call: {format_size(plan.unet_streamed_bytes_per_call)} "
            "(every step re-reads them over PCIe: expect a slower stage)"
        )
    int8 = [c.name for c in inputs.components if c.int8]
    if int8:
        lines.append(
            f"int8 weights (weight-only, per output channel; compute stays "
            f"{_dtype_name(inputs.component(int8[0]).dtype)}): {', '.join(int8)}"
        )
    lines.append(
        "activations include a margin over the meta-device measurement; graph pools are counted where "
        "they outlive their stage"
    )
    lines.append(
        f"predicted peak {format_size(plan.peak_bytes)} of {format_size(plan.budget_bytes)}; the CUDA "
        "context (~0.3-0.5 GiB) comes on top: on a card shared with a display, budget below its size"
    )
    return lines


def format_plan(plan: MemoryPlan, inputs: PlanInputs) -> str:
    return "\n".join(
        _header(plan, inputs) + _components(plan, inputs) + [""] + _phases(plan) + [""] + _footer(plan, inputs)
    )
