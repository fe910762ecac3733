"""The memory planner: which weights stay on the device, which come in per stage, what streams.

Decisions are pure functions of ``PlanInputs`` (sizes measured in ``memory``/``plan_inputs``) and a
budget. Every component is either

* resident: on the device for the whole life of the runtime;
* offload: held in pinned host memory, copied into the *swap area* when its phase starts. The swap
  area is ONE device buffer, allocated once and shared by all phases, so a component always lands at
  the same address and CUDA graphs captured over it stay valid. T5 offloaded means T5 is released
  after encoding: stage I's weights overwrite its part of the swap area;
* stream: offloaded, but some of its units do not fit the swap area; they pass through a separate
  *stream slots* every forward: two of them, so that unit k+1 is copied in while unit k computes
  (``stream_slot_offsets``; the even units of a component share one slot, the odd ones the other).

The search enumerates resident sets, VAE decode tilings and graph lifetimes, keeps the placements
whose predicted peak fits every phase, and picks the cheapest by, in order: U-Net bytes streamed per
call (paid every step), whether the VAE decodes in tiles (a quality cost), whether graphs must be
recaptured every call, bytes moved per call, and finally the most resident bytes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..facts import UNETS
from .workload import CAPTURED_PHASES, PlanInputs, Workload
from .sizes import format_size
from ..errors import IFEngineError

RESIDENT, OFFLOAD, STREAM = "resident", "offload", "stream"
MiB = 2**20


class PlanError(IFEngineError, ValueError):
    """No placement fits the budget; the message says what the tightest phase needs."""


@dataclass(frozen=True)
class PlanOptions:
    cuda_graphs: bool = True
    graph_scope: str = "auto"  # "run": graphs live across calls; "stage": dropped after each stage
    reserve_bytes: int = 512 * MiB  # workspaces, allocator rounding/fragmentation (the CUDA context is extra)
    # The CUDA context, cuBLAS/cuDNN handles and loaded kernels live outside torch's allocator, so a budget
    # for a whole card must leave them room, and the allocator limit is the budget less this. 0.75 GiB is
    # a guess (published figures range 0.5-1 GB per context, by driver and GPU) until a GPU measures it.
    context_reserve_bytes: int = 768 * MiB
    activation_margin: float = 1.25  # measured activations are a perfect-allocator lower bound
    mode: str = "latency"  # or "throughput": stages of consecutive batches overlap on two streams

    def __post_init__(self) -> None:
        if self.graph_scope not in ("auto", "run", "stage"):
            raise ValueError(f"graph_scope must be 'auto', 'run' or 'stage', got {self.graph_scope!r}")
        if self.context_reserve_bytes < 0:
            raise ValueError(f"context_reserve_bytes must be >= 0, got {self.context_reserve_bytes}")
        if self.mode not in ("latency", "throughput"):
            raise ValueError(f"mode must be 'latency' or 'throughput', got {self.mode!r}")


@dataclass(frozen=True)
class Placement:
    name: str
    mode: str
    weight_bytes: int
    swap_offset: int = 0
    swap_bytes: int = 0  # bytes this component occupies in the swap area during its phase
    streamed_units: tuple[str, ...] = ()
    streamed_bytes: int = 0


@dataclass(frozen=True)
class PhasePeak:
    phase: str
    components: tuple[str, ...]
    activation_bytes: int
    peak_bytes: int


@dataclass(frozen=True)
class MemoryPlan:
    budget_bytes: int
    options: PlanOptions
    workload: Workload
    placements: tuple[Placement, ...]
    swap_bytes: int
    slot_bytes: int
    graph_scope: str  # "run", "stage" or "none" (graphs off)
    vae_tile: int | None
    phases: tuple[PhasePeak, ...]
    resident_bytes: int
    buffer_bytes: int
    transfer_bytes_per_call: int  # weight bytes moved in per call, except U-Net streaming (offload + encoders)
    unet_streamed_bytes_per_call: int

    def placement(self, name: str) -> Placement:
        for p in self.placements:
            if p.name == name:
                return p
        raise KeyError(f"the plan has no component {name!r}")

    @property
    def vae_overlap(self) -> int:
        return (self.vae_tile or 0) // 4

    @property
    def peak_bytes(self) -> int:
        return max(p.peak_bytes for p in self.phases)

    @property
    def t5_released_before_stage1(self) -> bool:
        return any(p.name == "t5" and p.mode != RESIDENT for p in self.placements)

    def modes(self) -> dict[str, str]:
        return {p.name: p.mode for p in self.placements}


def plan_memory(inputs: PlanInputs, budget_bytes: int, options: PlanOptions = PlanOptions()) -> MemoryPlan:
    """The cheapest placement whose predicted peak fits ``budget_bytes`` in every phase."""
    plan = _search(inputs, budget_bytes, options)
    if plan is None:
        raise PlanError(_infeasible(inputs, budget_bytes, options))
    return plan


def _search(inputs: PlanInputs, budget_bytes: int, options: PlanOptions) -> MemoryPlan | None:
    names = [c.name for c in inputs.components]
    best = None
    for (tile, decode_act), scope, resident in itertools.product(
        inputs.decode_options, _scopes(options), _resident_sets(names, options.mode)
    ):
        plan = _evaluate(inputs, budget_bytes, options, frozenset(resident), tile, decode_act, scope)
        if plan is not None and (best is None or _cost(plan) < _cost(best)):
            best = plan
    return best


def _scopes(options: PlanOptions) -> tuple[str, ...]:
    if not options.cuda_graphs:
        return ("none",)
    if options.mode == "throughput":
        return ("run",)  # graphs recaptured per batch would serialise the two streams
    return ("run", "stage") if options.graph_scope == "auto" else (options.graph_scope,)


def _resident_sets(names: list[str], mode: str):
    required = {n for n in names if n != "t5"} if mode == "throughput" else set()
    free = [n for n in names if n not in required]
    for k in range(len(free) + 1):
        for chosen in itertools.combinations(free, k):
            yield required | set(chosen)


def _cost(plan: MemoryPlan) -> tuple:
    tile_rank = 0 if plan.vae_tile is None else -plan.vae_tile
    unet_moved = sum(p.swap_bytes for p in plan.placements if p.name in UNETS and p.mode != RESIDENT)
    # U-Net moves happen every call; encoder moves only for prompts the embedding cache has not seen
    return (
        plan.unet_streamed_bytes_per_call,
        plan.vae_tile is not None,
        tile_rank,
        plan.graph_scope == "stage",
        unet_moved,
        plan.transfer_bytes_per_call,
        -plan.resident_bytes,
    )


def _phase_extras(inputs: PlanInputs, options: PlanOptions, decode_act: int, scope: str) -> dict[str, int]:
    """Per phase: activation bytes on top of weights and buffers (graph pools included)."""
    acts = {
        p.name: int((decode_act if p.name == "decode" else p.activation_bytes) * options.activation_margin)
        for p in inputs.phases
    }
    if options.mode == "throughput":
        front = acts.get("stage1", 0)
        back = max([acts.get(p, 0) for p in ("stage2", "stage3")] or [0])
        pools = graph_pool_bytes(acts, "throughput")
        pipeline = pools + front + max(back, acts.get("decode", 0))
        return {"text": acts.get("text", 0) + pools, "pipeline": pipeline}
    # "run": graph pools outlive their stage; a later stage's eager warm-up runs beside them (conservative)
    pool = graph_pool_bytes(acts, "latency") if scope == "run" else 0
    return {name: act + pool for name, act in acts.items()}


def graph_pool_bytes(acts: dict[str, int], mode: str) -> int:
    """What the graph pools hold once every stage is captured, from each captured phase's activations.

    A ``runtime.graphs.GraphCache`` captures all its graphs on ONE stream into ONE pool, so the allocator
    reuses the blocks each capture freed for the next and the pool holds its largest graph (the max).
    Latency mode has one cache; throughput mode has two (stage I on the front stream, II/III on the back),
    whose pools add up.
    """
    captured = {p: acts[p] for p in CAPTURED_PHASES if p in acts}
    if mode == "throughput":
        back = [captured[p] for p in ("stage2", "stage3") if p in captured]
        return captured.get("stage1", 0) + max(back, default=0)
    return max(captured.values(), default=0)


def _evaluate(
    inputs: PlanInputs, budget: int, options: PlanOptions, resident: frozenset, tile, decode_act, scope: str
) -> MemoryPlan | None:
    extras = _phase_extras(inputs, options, decode_act, scope)
    budget_in_allocator = budget - options.context_reserve_bytes  # the context lives outside the allocator
    comps = {c.name: c for c in inputs.components}
    resident_bytes = sum(comps[n].partition.total_bytes for n in resident)
    fixed = options.reserve_bytes + inputs.buffer_bytes + resident_bytes
    groups = _swap_groups(inputs, resident)
    slot, streamed = 0, {}
    while True:
        room = budget_in_allocator - fixed - slot - max(extras.values())
        streamed = _choose_streaming(groups, comps, room)
        if streamed is None:
            return None
        needed = _slot_bytes(streamed)
        if needed <= slot:
            break
        slot = needed
    slot = _slot_bytes(streamed)
    placements, swap = _placements(comps, resident, groups, streamed)
    peaks = tuple(_peak(inputs, name, extras, fixed + slot + swap, decode_act, options) for name in extras)
    return MemoryPlan(
        budget_bytes=budget,
        options=options,
        workload=inputs.workload,
        placements=placements,
        swap_bytes=swap,
        slot_bytes=slot,
        graph_scope=scope,
        vae_tile=tile,
        phases=peaks,
        resident_bytes=resident_bytes,
        buffer_bytes=inputs.buffer_bytes,
        transfer_bytes_per_call=_transfer(placements, comps, unets=False),
        unet_streamed_bytes_per_call=_transfer(placements, comps, unets=True),
    )


def _slot_bytes(streamed: dict[str, list]) -> int:
    # streamed units are chosen from the end of each partition: their forward order is the reverse
    return max((stream_slot_offsets([u.nbytes for u in reversed(us)])[1] for us in streamed.values()), default=0)


def stream_slot_offsets(unit_bytes: list[int]) -> tuple[list[int], int]:
    """(offset in the stream slot of each unit, in forward order; bytes the slot needs) for one component.

    Two slots, so that the copy of unit k+1 runs while unit k computes: even units at offset 0 (the first
    slot, as large as the largest even unit), odd units right after it. Neighbours never share bytes.
    """
    even = max(unit_bytes[0::2], default=0)
    odd = max(unit_bytes[1::2], default=0)
    return [0 if i % 2 == 0 else even for i in range(len(unit_bytes))], even + odd


def _swap_groups(inputs: PlanInputs, resident: frozenset) -> list[tuple[str, ...]]:
    """Per phase, the non-resident components that share the swap area while it runs."""
    groups = [tuple(c for c in p.components if c not in resident) for p in inputs.phases]
    return [g for g in groups if g]


def _choose_streaming(groups, comps, room: int) -> dict[str, list] | None:
    """Units to stream so that every phase's swap part fits ``room``; None when impossible."""
    if room < 0:
        return None
    streamed: dict[str, list] = {}
    for group in groups:
        need = sum(comps[c].partition.total_bytes for c in group)
        # stream what is used least often first: encoders run twice a call, U-Nets every step
        for name in sorted(group, key=lambda c: comps[c].forwards_per_run):
            units = list(comps[name].partition.units)
            while need > room and units:
                unit = units.pop()
                streamed.setdefault(name, []).append(unit)
                need -= unit.nbytes
        if need > room:
            return None
    return streamed


def _placements(comps, resident, groups, streamed) -> tuple[tuple[Placement, ...], int]:
    placements, swap = [], 0
    for name in comps:
        if name in resident:
            placements.append(Placement(name, RESIDENT, comps[name].weight_bytes))
    for group in groups:
        offset = 0
        for name in group:
            units = streamed.get(name, [])
            streamed_bytes = sum(u.nbytes for u in units)
            part = comps[name].partition.total_bytes - streamed_bytes
            mode = STREAM if units else OFFLOAD
            placements.append(
                Placement(
                    name,
                    mode,
                    comps[name].weight_bytes,
                    offset,
                    part,
                    tuple(u.path for u in reversed(units)),
                    streamed_bytes,
                )
            )
            offset += part  # layout sizes are already aligned
        swap = max(swap, offset)
    order = {name: i for i, name in enumerate(comps)}
    return tuple(sorted(placements, key=lambda p: order[p.name])), swap


def _peak(inputs: PlanInputs, phase: str, extras, base: int, decode_act: int, options) -> PhasePeak:
    info = next((p for p in inputs.phases if p.name == phase), None)
    if info is None:  # throughput's overlapped stages: report everything that runs concurrently
        components = tuple(c for p in inputs.phases if p.name != "text" for c in p.components)
        return PhasePeak(phase, components, extras[phase], base + extras[phase])
    act = decode_act if phase == "decode" else info.activation_bytes
    return PhasePeak(phase, info.components, int(act * options.activation_margin), base + extras[phase])


def _transfer(placements, comps, *, unets: bool) -> int:
    """unets=True: U-Net bytes streamed per call (paid every step); False: every other weight byte moved."""
    total = 0
    for p in placements:
        if p.mode == RESIDENT:
            continue
        if not unets:
            total += p.swap_bytes
        if (p.name in UNETS) == unets:
            total += p.streamed_bytes * comps[p.name].forwards_per_run
    return total


def _infeasible(inputs: PlanInputs, budget: int, options: PlanOptions) -> str:
    needed = minimum_budget(inputs, options)
    what = "throughput mode (every U-Net resident)" if options.mode == "throughput" else "any placement"
    return (
        f"no memory plan fits {format_size(budget)} with {what}: this workload needs at least "
        f"{format_size(needed)} (with everything that can stream streamed). Use a larger budget, a smaller "
        "batch or resolution" + (", or latency mode." if options.mode == "throughput" else ".")
    )


def minimum_budget(inputs: PlanInputs, options: PlanOptions = PlanOptions(), precision: int = 16 * MiB) -> int:
    """The smallest budget (to ``precision``) for which ``plan_memory`` finds a placement."""
    comps = sum(c.partition.total_bytes for c in inputs.components)
    acts = sum(p.activation_bytes for p in inputs.phases) + max(a for _, a in inputs.decode_options)
    low, high = 0, 2 * (comps + acts + inputs.buffer_bytes + options.reserve_bytes + options.context_reserve_bytes)
    while high - low > precision:
        mid = (low + high) // 2
        if _search(inputs, mid, options) is None:
            low = mid
        else:
            high = mid
    return high
