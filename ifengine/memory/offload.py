"""Put each component's weights where a ``MemoryPlan`` says, and move them in when they are needed.

* resident: packed into one device buffer of its own (exact accounting, no allocator rounding);
* offload: one page-locked host buffer; its weights are views into the shared swap area at the
  component's fixed offset, refilled by ``ensure`` (one asynchronous copy) when its phase starts;
* stream: as offload, plus units whose weights are views into one of two stream slots (alternating,
  ``planner.stream_slot_offsets``). Unit k's forward pre-hook enqueues the copy of unit k+1 into the
  other slot on a separate copy stream (fork: it waits for the compute issued so far, so unit k-1,
  the slot's last reader, is done) and makes the compute stream wait for unit k's own copy (join, an
  event): the copy of k+1 runs while k computes. Fork and join are events, so CUDA-graph capture
  records them with the step and every replay streams again with the same overlap.

Weights always keep the same device address, which is what lets captured graphs survive offloading.
Copies are enqueued on the current stream and never waited for: stream order puts each copy after the
kernels that read the previous tenant of the same bytes and before the kernels that read the new one.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from .planner import RESIDENT, UNETS, MemoryPlan, Placement, stream_slot_offsets
from .sizes import format_size
from .weight_layout import Rebinder, Slot, bind_all, fill, layout, unique_tensors, unit_tensors
from ..errors import IFEngineError

log = logging.getLogger(__name__)


PLACED = "_ifengine_weights_placed"


class PlanMismatchError(IFEngineError, ValueError):
    """The modules being placed are not the ones the plan was made for."""


def page_locked(nbytes: int, device: torch.device) -> torch.Tensor:
    """A host byte buffer that asynchronous copies to ``device`` can read directly.

    cudaHostRegister on an ordinary allocation pins exactly ``nbytes``: torch's pinned allocator
    rounds every request up to a power of two, which would pin 16 GiB for the 9 GiB T5.
    """
    buffer = torch.empty(nbytes, dtype=torch.uint8)
    if device.type != "cuda" or nbytes == 0:
        return buffer
    try:
        cudart = torch.cuda.cudart()
        # flag 1 = cudaHostRegisterPortable (pinned for every context), as torch's own staging code does
        error = int(cudart.cudaHostRegister(buffer.data_ptr(), nbytes, 1))
        if error != 0:
            raise RuntimeError(f"cudaHostRegister returned error {error}")
        weakref.finalize(buffer, cudart.cudaHostUnregister, buffer.data_ptr())
        return buffer
    except (RuntimeError, AttributeError) as err:
        log.warning(
            "could not page-lock %s of host memory (%s); falling back to torch's pinned allocator",
            format_size(nbytes),
            err,
        )
        return buffer.pin_memory()


@dataclass
class _HostCopy:
    """A component's page-locked bytes: its swap part first, then each streamed unit."""

    host: torch.Tensor
    placement: Placement
    part_bytes: int
    units: dict[str, tuple[int, int]]  # unit path -> (host offset, bytes)


@dataclass
class _StreamState:
    """One streamed component's units in forward order, and which unit's copy is already in flight."""

    following: dict[str, str | None]
    prefetched: str | None = None


class WeightPlacer:
    """Applies a MemoryPlan to named modules; ``ensure(name)`` before a component's phase runs."""

    def __init__(self, plan: MemoryPlan, modules: dict[str, nn.Module], device: torch.device | str):
        self.plan, self.modules, self.device = plan, modules, torch.device(device)
        self.swap = self.slot = None
        self.resident: dict[str, torch.Tensor] = {}
        self._copies: dict[str, _HostCopy] = {}
        self._loaded: set[str] = set()
        self._hooks: list = []
        self.slot_offsets: dict[str, dict[str, int]] = {}  # component -> unit path -> offset in the slot
        self._streams: dict[str, _StreamState] = {}
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._events: dict[tuple[str, str], object] = {}
        # per streamed component: units whose copy was already in flight (hits) or had to start on
        # arrival (misses: one per forward, its first unit, when the units are in execution order)
        self.prefetch_hits: dict[str, int] = {}
        self.prefetch_misses: dict[str, int] = {}

    def apply(self) -> WeightPlacer:
        placed = [n for n, m in self.modules.items() if getattr(m, PLACED, False)]
        if placed:
            # offloaded weights live in a shared swap area: only the loaded tenant's bytes are valid there,
            # so re-packing them from the device could copy another component's bytes
            raise ValueError(
                f"{placed} were already placed by a memory plan; configure a cascade once (reload "
                "it to plan for another budget)"
            )
        offloaded = [p for p in self.plan.placements if p.mode != RESIDENT and p.name in self.modules]
        staged = {p.name: self._stage_on_host(p) for p in offloaded}  # frees device originals first
        self.swap = torch.zeros(self.plan.swap_bytes, dtype=torch.uint8, device=self.device)
        self.slot = torch.zeros(self.plan.slot_bytes, dtype=torch.uint8, device=self.device)
        for p in offloaded:
            self._bind_offloaded(p, *staged[p.name])
        for p in self.plan.placements:
            if p.mode == RESIDENT and p.name in self.modules:
                self._make_resident(p.name)
        for module in self.modules.values():
            setattr(module, PLACED, True)
        log.info(
            "weights placed: %s resident, swap %s, stream slot %s",
            format_size(sum(b.numel() for b in self.resident.values())),
            format_size(self.plan.swap_bytes),
            format_size(self.plan.slot_bytes),
        )
        return self

    # -- setup ---------------------------------------------------------------------------------
    def _stage_on_host(self, p: Placement):
        module = self.modules[p.name]
        rebinder = Rebinder(module)
        units = unit_tensors(module, p.streamed_units)
        in_units = {id(t) for ts in units.values() for t in ts}
        part_slots, end = layout([t for t in unique_tensors(module) if id(t) not in in_units])
        if end > p.swap_bytes:
            raise PlanMismatchError(
                f"{p.name}: its resident part needs {end} bytes, the plan reserved "
                f"{p.swap_bytes}; plan with the modules being placed"
            )
        unit_slots, host_units = {}, {}
        for path, tensors in units.items():
            start = end
            unit_slots[path], end = layout(tensors, start)
            host_units[path] = (start, end - start)
        needed = stream_slot_offsets([n for _, n in host_units.values()])[1]
        if needed > self.plan.slot_bytes:
            raise PlanMismatchError(
                f"{p.name}'s streamed units need {needed} bytes of stream slots, the plan has {self.plan.slot_bytes}"
            )
        host = page_locked(end, self.device)
        all_slots = part_slots + [s for slots in unit_slots.values() for s in slots]
        fill(host, all_slots)
        # point the module at the host copy now, so device originals are freed before the swap exists
        part_slots = bind_all(rebinder, part_slots, host)
        unit_slots = {k: bind_all(rebinder, v, host) for k, v in unit_slots.items()}
        self._copies[p.name] = _HostCopy(host, p, p.swap_bytes, host_units)
        return rebinder, part_slots, unit_slots

    def _bind_offloaded(
        self, p: Placement, rebinder: Rebinder, part_slots: list[Slot], unit_slots: dict[str, list[Slot]]
    ) -> None:
        bind_all(rebinder, part_slots, self.swap, shift=p.swap_offset)
        module = self.modules[p.name]
        fired: set[str] = set()
        paths = list(unit_slots)  # execution order: the plan's (memory.exec_order)
        offsets, _ = stream_slot_offsets([self._copies[p.name].units[q][1] for q in paths])
        self.slot_offsets[p.name] = dict(zip(paths, offsets, strict=True))
        stream = _StreamState({q: (paths[i + 1] if i + 1 < len(paths) else None) for i, q in enumerate(paths)})
        for path, slots in unit_slots.items():
            start, _ = self._copies[p.name].units[path]
            bind_all(rebinder, slots, self.slot, shift=self.slot_offsets[p.name][path] - start)
            hook = self._stream_hook(p.name, path, stream, fired)
            self._hooks.append(module.get_submodule(path).register_forward_pre_hook(hook))
        if paths:
            self._streams[p.name] = stream
        if unit_slots or p.name not in UNETS:
            # U-Nets without streaming get no root hook: the runner loads them before the stage (a graph
            # replay runs no hooks anyway), and torch.compile then sees a module without Python hooks
            self._hooks.append(module.register_forward_pre_hook(self._enter_hook(p.name, fired)))
        if unit_slots:
            self._hooks.append(module.register_forward_hook(self._check_hook(p.name, set(unit_slots), fired)))

    def _enter_hook(self, name: str, fired: set[str]):
        def enter(_module, _args) -> None:
            fired.clear()
            if name in self._streams:
                self._streams[name].prefetched = None  # a new forward: nothing is in flight for it yet
            self.ensure(name)  # eager components (text encoders) load themselves on first use in a call

        return enter

    def _stream_hook(self, name: str, path: str, stream: _StreamState, fired: set[str]):
        def load_unit(_module, _args) -> None:
            # recorded into the step's CUDA graph when captured: every replay streams the units again
            if stream.prefetched != path:  # the forward's first unit (or an unexpected order): fetch it now
                self._fetch(name, path)
                self.prefetch_misses[name] = self.prefetch_misses.get(name, 0) + 1
            else:
                self.prefetch_hits[name] = self.prefetch_hits.get(name, 0) + 1
            following = stream.following[path]
            if following is not None:
                self._fetch(name, following)  # into the other slot, while this unit computes
            stream.prefetched = following
            self._join(name, path)
            fired.add(path)

        return load_unit

    def _fetch(self, name: str, path: str) -> None:
        """Enqueue unit ``path``'s copy into its slot: on the copy stream after the compute issued so far."""
        start, nbytes = self._copies[name].units[path]
        offset = self.slot_offsets[name][path]
        dst, src = self.slot[offset : offset + nbytes], self._copies[name].host[start : start + nbytes]
        if self._copy_stream is None:
            dst.copy_(src)
            return
        compute = torch.cuda.current_stream(self.device)
        self._copy_stream.wait_stream(compute)  # fork: the slot's previous reader has been issued before
        with torch.cuda.stream(self._copy_stream):
            dst.copy_(src, non_blocking=True)
        self._events.setdefault((name, path), torch.cuda.Event()).record(self._copy_stream)

    def _join(self, name: str, path: str) -> None:
        if self._copy_stream is not None:
            torch.cuda.current_stream(self.device).wait_event(self._events[(name, path)])

    @staticmethod
    def _check_hook(name: str, expected: set[str], fired: set[str]):
        def check(_module, _args, _out) -> None:
            # a unit whose hook never fired computed with another unit's bytes: fail loudly, never silently
            missing = expected - fired
            if missing:
                raise RuntimeError(
                    f"{name}: streamed units {sorted(missing)} ran without their pre-hook (not "
                    "entered through __call__); they cannot be streamed"
                )

        return check

    def _make_resident(self, name: str) -> None:
        module = self.modules[name]
        slots, end = layout(unique_tensors(module))
        buffer = torch.empty(end, dtype=torch.uint8, device=self.device)
        fill(buffer, slots)
        bind_all(Rebinder(module), slots, buffer)
        self.resident[name] = buffer

    # -- per call ------------------------------------------------------------------------------
    def ensure(self, name: str) -> None:
        """Make ``name``'s weights valid in the swap area (one async copy; nothing if already there)."""
        copy = self._copies.get(name)
        if copy is None or name in self._loaded:
            return
        p = copy.placement
        self.swap[p.swap_offset : p.swap_offset + copy.part_bytes].copy_(
            copy.host[: copy.part_bytes], non_blocking=True
        )
        self._loaded = {n for n in self._loaded if not self._overlaps(n, name)} | {name}
        log.debug("moved %s in (%s)", name, format_size(copy.part_bytes))

    def _overlaps(self, a: str, b: str) -> bool:
        pa, pb = self._copies[a].placement, self._copies[b].placement
        return pa.swap_offset < pb.swap_offset + pb.swap_bytes and pb.swap_offset < pa.swap_offset + pa.swap_bytes

    @property
    def loaded(self) -> frozenset[str]:
        return frozenset(self._loaded)

    def host_bytes(self) -> int:
        return sum(c.host.numel() for c in self._copies.values())

    def remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
