"""How much memory one request needs, before any work: the same model of the cascade the planner uses.

Activation peaks come from the planner's meta-device traces of the exact step functions
(``workload.unet_step_activation`` / ``decode_activation``), measured ONCE per component at a
reference shape (one image at the cascade's native size) and scaled: every activation of a step is
per sample (exactly linear in the batch) and per pixel (convolutions, fused attention), so
``bytes(batch, pixels) = per_image * batch * max(1, pixels / reference_pixels)``. Measured per pixel cost
falls slightly with size (fixed embeddings are amortised), so the scaled figure is an upper bound above
the reference and the reference itself below it; tests/test_estimates.py checks it against real traces.
Tracing a huge shape would itself take minutes; scaling takes microseconds.

Buffers (noise, stage states and outputs, the final image) are the planner's closed form at the request
itself. Before any trace, that closed form alone is a lower bound: a request it already rules out
(``height=2**31``) is refused at once, without tracing anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..facts import DEFAULT_STEPS, SR_SCALE, UNET_OF, scale_of
from ..models.int8 import compute_dtype, largest_dequantized_bytes
from .sizes import format_size
from .workload import Workload, buffer_bytes, decode_activation, text_activation_bytes, unet_step_activation
from ..errors import IFEngineError
from ..validate import positive_int
from .plan_inputs import cascade_modules

log = logging.getLogger(__name__)
ACTIVATION_MARGIN = 1.25  # the planner's: traced peaks assume a perfect allocator
STAGE_PHASES = {1: ("text", "stage1"), 2: ("stage2",), 3: ("stage3", "decode")}


class RequestTooLarge(IFEngineError, ValueError):
    """A request whose estimate exceeds the memory it may use, or an explicit max_pixels/max_batch."""

    def __init__(self, estimate: RequestEstimate):
        self.estimate = estimate
        super().__init__(estimate.reason)


@dataclass(frozen=True)
class Limits:
    """What a request may use. ``memory``: bytes (default: the device's free memory, or the host's
    available memory on a CPU); ``max_pixels``: output pixels per image; ``max_batch``: images per call."""

    memory: int | None = None
    max_pixels: int | None = None
    max_batch: int | None = None

    def __post_init__(self) -> None:
        for name in ("memory", "max_pixels", "max_batch"):
            positive_int(getattr(self, name), name, none_ok=True)


@dataclass(frozen=True)
class PhaseCost:
    """Activation bytes of one phase: ``fixed + per_image * batch * max(1, pixels / ref_pixels)``.

    ``pixels`` are stage I pixels (stage II/III scale with them); ``ref_pixels`` 0: no size dependence."""

    name: str
    stage: int
    per_image: int
    ref_pixels: int
    fixed: int = 0

    def bytes(self, batch: int, pixels: int) -> int:
        if not self.ref_pixels:
            return self.fixed + self.per_image * batch
        # integers throughout: a fuzzed height of 10**200 must not overflow a float
        return self.fixed - (-self.per_image * batch * max(pixels, self.ref_pixels) // self.ref_pixels)


@dataclass(frozen=True)
class CascadeCosts:
    """What the estimate knows about a cascade: weights, buffer layout and per-phase activation costs."""

    weight_bytes: int
    weights_loaded: bool  # True: the weights already sit in the memory the limit is read from
    text_dims: tuple[int, int, int]
    itemsize: int
    phases: tuple[PhaseCost, ...] | None  # None: not measured yet (the lower bound needs none)

    def activation(self, batch: int, pixels: int, last_stage: int) -> tuple[int, str]:
        """The largest phase peak (with the planner's margin) and its name."""
        used = [p for p in self.phases or () if p.stage <= last_stage]
        if not used:
            return 0, ""
        peak = max(used, key=lambda p: p.bytes(batch, pixels))
        return int(peak.bytes(batch, pixels) * ACTIVATION_MARGIN), peak.name


@dataclass(frozen=True)
class RequestEstimate:
    batch: int
    height: int  # stage I
    width: int
    last_stage: int
    weight_bytes: int
    weights_loaded: bool
    buffer_bytes: int
    activation_bytes: int  # 0 with ``exact`` False: refused on buffers alone
    peak_phase: str
    limit_bytes: int | None  # None: no memory figure could be read (no memory check)
    limit_source: str
    exact: bool
    fits: bool
    reason: str  # why it is refused ("" when it fits)
    largest_batch: int | None = None  # at this size (0: not even one image)
    largest_size: tuple[int, int] | None = None  # stage I (height, width) at this batch and aspect
    steps: tuple[int, ...] = ()  # per stage: the noise drawn up front grows with them
    size_note: str = "stage I size at this batch"  # or a square size when no size of this aspect fits

    @property
    def needed_bytes(self) -> int:
        """Bytes the request adds to what is already used (weights count only when not loaded yet)."""
        weights = 0 if self.weights_loaded else self.weight_bytes
        return weights + self.buffer_bytes + self.activation_bytes

    def summary(self) -> str:
        what = "about" if self.exact else "at least"
        parts = f"{_bytes(self.buffer_bytes)} buffers"
        if self.exact:
            parts += f" + {_bytes(self.activation_bytes)} activations ({self.peak_phase})"
        if not self.weights_loaded:
            parts = f"{_bytes(self.weight_bytes)} weights + " + parts
        return f"{what} {_bytes(self.needed_bytes)} ({parts})"


def _n(value: int) -> str:
    """A count as text; astronomically large ones (a fuzzed 10**200) as a power of ten."""
    return str(value) if value < 10**15 else f"~10^{int(value.bit_length() * 0.30103)}"


def _bytes(value: int) -> str:
    return format_size(value) if value < 2**60 else f"~2^{value.bit_length() - 1} bytes"


def output_size(height: int, width: int, last_stage: int) -> tuple[int, int]:
    return height * scale_of(last_stage), width * scale_of(last_stage)


def available_memory(device: torch.device | str) -> tuple[int | None, str]:
    """Free memory on a CUDA device, else the host's available memory (psutil, or /proc/meminfo)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free memory on {device}"
    if device.type != "cpu":
        return None, f"unknown on {device}"
    try:
        import psutil

        return int(psutil.virtual_memory().available), "available host memory"
    except ImportError:
        return _meminfo_available(), "available host memory"


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def module_bytes(modules: dict[str, nn.Module]) -> int:
    tensors = {id(t): t for m in modules.values() for t in (*m.parameters(), *m.buffers())}.values()
    return sum(t.numel() * t.element_size() for t in tensors)


def _unet_text_dim(unet: nn.Module | None) -> int:
    return 0 if unet is None else unet.config.encoder_hid_dim or unet.config.cross_attention_dim[0]


def _text_cost(name: str, module: nn.Module, stage: int) -> PhaseCost:
    c = module.config
    dims = (
        (c.d_model, c.d_ff, c.num_heads)
        if hasattr(c, "d_model")
        else (
            c.hidden_size,
            c.intermediate_size,
            c.num_attention_heads,
        )
    )
    return PhaseCost(name, stage, text_activation_bytes(*dims, 1, compute_dtype(module).itemsize), 0)


def _unet_cost(modules: dict[str, nn.Module], stage: int, base: int) -> PhaseCost:
    unet = modules[UNET_OF[stage]]
    side = base * scale_of(min(stage, 2))  # stage III's latents have stage II's size
    kind = "x4" if stage == 3 else f"if{stage}"
    per = unet_step_activation(kind, unet.config, compute_dtype(unet), 1, side, side, True, _unet_text_dim(unet))
    return PhaseCost(f"stage{stage}", stage, per, base * base, largest_dequantized_bytes(unet))


def _decode_cost(vae: nn.Module, base: int) -> PhaseCost:
    side = base * SR_SCALE
    return PhaseCost("decode", 3, decode_activation(vae.config, compute_dtype(vae), 1, side, side, None, 0), base**2)


def measure_phases(modules: dict[str, nn.Module], last_stage: int = 3) -> tuple[PhaseCost, ...]:
    """Each phase's cost up to ``last_stage``, measured at the cascade's native size (stage I ``sample_size``)."""
    base = modules["unet1"].config.sample_size
    phases = [_text_cost("text", modules["t5"], 1)] if "t5" in modules else []
    phases += [_unet_cost(modules, s, base) for s in range(1, last_stage + 1) if UNET_OF[s] in modules]
    if "clip" in modules and last_stage == 3:
        phases.append(_text_cost("stage3 text", modules["clip"], 3))
    if "vae_decoder" in modules and last_stage == 3:
        phases.append(_decode_cost(modules["vae_decoder"], base))
    return tuple(phases)


def cascade_costs(
    modules: dict[str, nn.Module], weights_loaded: bool, measure: bool = True, last_stage: int = 3
) -> CascadeCosts:
    """``modules`` by planner name (``plan_inputs.cascade_modules`` / ``checkpoint_modules``)."""
    if "unet1" not in modules:
        raise ValueError("an estimate needs stage I (unet1)")
    dims = tuple(_unet_text_dim(modules.get(UNET_OF[s])) for s in (1, 2, 3))
    itemsize = compute_dtype(modules["unet1"]).itemsize
    phases = measure_phases(modules, last_stage) if measure else None
    return CascadeCosts(module_bytes(modules), weights_loaded, dims, itemsize, phases)


def _buffers(costs: CascadeCosts, batch: int, h: int, w: int, last: int, steps) -> int:
    work = Workload(height=h, width=w, batch=batch, steps=tuple(steps))
    return buffer_bytes(work, costs.text_dims, costs.itemsize, last)


def _needed(costs: CascadeCosts, batch: int, h: int, w: int, last: int, steps) -> tuple[int, int, str]:
    buffers = _buffers(costs, batch, h, w, last, steps)
    act, phase = costs.activation(batch, h * w, last)
    return buffers, act, phase


def _fits(costs, batch, h, w, last, steps, room: int) -> bool:
    buffers, act, _ = _needed(costs, batch, h, w, last, steps)
    return buffers + act <= room


def _largest(ok: Callable[[int], bool], upto: int) -> int:
    """The largest k in [0, upto] with ok(k), for a monotone ``ok`` (0 when only 0 works)."""
    low, high = 0, upto
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if ok(mid) else (low, mid - 1)
    return low


def largest_batch(costs, h, w, last, steps, room: int, upto: int) -> int:
    """The largest batch <= ``upto`` that fits ``room`` at this size (0: none)."""
    return _largest(lambda b: _fits(costs, b, h, w, last, steps, room), upto)


def scaled_size(h: int, w: int, short: int, multiple: int) -> tuple[int, int]:
    """(height, width) with the short side ``short`` and the long one in proportion, to ``multiple``."""
    lo, hi = min(h, w), max(h, w)
    long = max(multiple, (2 * short * hi + lo * multiple) // (2 * lo * multiple) * multiple)
    return (short, long) if h <= w else (long, short)


def largest_size(h: int, w: int, multiple: int, ok: Callable[[int, int], bool]) -> tuple[int, int] | None:
    """The largest stage I size with the aspect of (h, w), no larger, sides multiples of ``multiple``, with ok."""
    k = _largest(lambda k: ok(*scaled_size(h, w, k * multiple, multiple)), max(min(h, w) // multiple, 1))
    return scaled_size(h, w, k * multiple, multiple) if k else None


def estimate(
    costs: CascadeCosts,
    *,
    batch: int,
    height: int,
    width: int,
    last_stage: int,
    steps=DEFAULT_STEPS,
    limit: tuple[int | None, str] = (None, ""),
    multiple: int = 8,
) -> RequestEstimate:
    """The request's estimate against ``limit`` (bytes, where it comes from); nothing is refused here."""
    buffers, act, phase = _needed(costs, batch, height, width, last_stage, steps)
    est = RequestEstimate(
        batch=batch,
        height=height,
        width=width,
        last_stage=last_stage,
        weight_bytes=costs.weight_bytes,
        weights_loaded=costs.weights_loaded,
        buffer_bytes=buffers,
        activation_bytes=act,
        peak_phase=phase,
        limit_bytes=limit[0],
        limit_source=limit[1],
        exact=costs.phases is not None,
        fits=True,
        reason="",
        steps=tuple(steps)[:last_stage],
    )
    return est if limit[0] is None or est.needed_bytes <= limit[0] else _refused(est, costs, steps, multiple)


def _refused(est: RequestEstimate, costs: CascadeCosts, steps, multiple: int) -> RequestEstimate:
    room = est.limit_bytes - (0 if est.weights_loaded else est.weight_bytes)
    last = est.last_stage
    best_batch = largest_batch(costs, est.height, est.width, last, steps, room, est.batch) if room > 0 else 0
    ok = lambda h, w: _fits(costs, est.batch, h, w, last, steps, room)  # noqa: E731
    best_size = largest_size(est.height, est.width, multiple, ok) if room > 0 else None
    if best_size is None and room > 0 and est.height != est.width:  # no size of this aspect fits: try squares
        side = max(est.height, est.width)
        best_size, note = largest_size(side, side, multiple, ok), "square stage I size at this batch"
    else:
        note = "stage I size at this batch"
    est = replace(est, fits=False, largest_batch=best_batch, largest_size=best_size, size_note=note)
    return replace(est, reason=refusal_message(est))


def refusal_message(est: RequestEstimate) -> str:
    oh, ow = output_size(est.height, est.width, est.last_stage)
    bound = "" if est.exact else "at most "
    fits = []
    if est.largest_size:
        h, w = est.largest_size
        fits.append(f"height={h}, width={w} ({bound}{est.size_note})")
    if est.largest_batch:
        fits.append(f"{bound}{est.largest_batch} image(s) per call at this size")
    hint = "; what fits: " + " or ".join(fits) if fits else "; not even one image of the smallest size fits"
    loaded = f" beside the {_bytes(est.weight_bytes)} of weights already loaded" if est.weights_loaded else ""
    return (
        f"request too large: {_n(est.batch)} image(s) (prompts x num_images_per_prompt) at height={_n(est.height)}, "
        f"width={_n(est.width)}, steps={','.join(map(_n, est.steps))} (output {_n(ow)}x{_n(oh)}, stage "
        f"{est.last_stage}) need {est.summary()}{loaded}, "
        f"but the limit is {_bytes(est.limit_bytes)} ({est.limit_source}){hint}"
    )


_COSTS: dict[tuple, CascadeCosts] = {}  # measured costs by the identity of the modules they describe


def costs_for(
    modules: dict[str, nn.Module], weights_loaded: bool, measure: bool = True, last_stage: int = 3
) -> CascadeCosts:
    """``cascade_costs``, measured once per set of modules (the traces cost ~0.5 s per component)."""
    key = (weights_loaded, measure and last_stage, *sorted((name, id(m)) for name, m in modules.items()))
    if key not in _COSTS:
        if len(_COSTS) > 32:
            _COSTS.clear()
        _COSTS[key] = cascade_costs(modules, weights_loaded, measure, last_stage)
    return _COSTS[key]


def explicit_limits(
    limits: Limits, *, batch: int, height: int, width: int, last_stage: int, multiple: int
) -> str | None:
    """Why ``max_batch`` or ``max_pixels`` refuses the request (None when neither does)."""
    if limits.max_batch is not None and batch > limits.max_batch:
        return (
            f"request too large: {_n(batch)} image(s) per call (prompts x num_images_per_prompt) exceed "
            f"max_batch={limits.max_batch}; ask for at most {limits.max_batch}"
        )
    oh, ow = output_size(height, width, last_stage)
    if limits.max_pixels is not None and oh * ow > limits.max_pixels:
        scale = 4 ** (last_stage - 1)
        best = largest_size(height, width, multiple, lambda h, w: h * w * scale * scale <= limits.max_pixels)
        hint = f"the largest at this aspect ratio is height={best[0]}, width={best[1]}" if best else "no size fits"
        return (
            f"request too large: height={_n(height)}, width={_n(width)} makes {_n(ow)}x{_n(oh)} = {_n(oh * ow)} "
            f"pixel images (stage {last_stage}), more than max_pixels={limits.max_pixels}; {hint}"
        )
    return None


def estimate_modules(
    modules: dict[str, nn.Module],
    *,
    batch: int,
    height: int,
    width: int,
    last_stage: int = 3,
    steps=DEFAULT_STEPS,
    device: torch.device | str = "cpu",
    weights_loaded: bool = True,
    limits: Limits = Limits(),
    multiple: int = 8,
) -> RequestEstimate:
    """The estimate of a request on ``modules``: buffers alone first (instant; a request they already rule
    out is not traced at all), then the measured activation peaks."""
    limit = (limits.memory, "the memory limit") if limits.memory else available_memory(device)
    shape = dict(batch=batch, height=height, width=width, last_stage=last_stage, steps=steps, limit=limit)
    lower = estimate(costs_for(modules, weights_loaded, measure=False), multiple=multiple, **shape)
    if not lower.fits:
        return lower
    return estimate(costs_for(modules, weights_loaded, True, last_stage), multiple=multiple, **shape)


def estimate_request(
    cascade,
    *,
    batch: int,
    height: int,
    width: int,
    last_stage: int | None = None,
    steps=None,
    limits: Limits | None = None,
) -> RequestEstimate:
    """The memory estimate of one request on a loaded ``Cascade`` (``batch``: images per call, prompts x
    num_images_per_prompt; ``height``/``width``: stage I). Explicit limits are checked first; the
    returned estimate says whether the request fits, and if not, why and what would."""

    limits = limits or getattr(cascade, "request_limits", None) or Limits()
    last = cascade.resolve_last_stage(last_stage)
    steps = tuple(steps) if steps is not None else cascade.defaults.steps
    multiple = cascade.size_multiple(last)
    shape = dict(batch=batch, height=height, width=width, last_stage=last)
    modules = cascade_modules(cascade)
    reason = explicit_limits(limits, **shape, multiple=multiple)
    if "unet1" not in modules:
        # exported graphs / engines: their profiles and ORT arenas size their memory, which this torch
        # activation model does not describe; only the explicit limits apply
        return _unmodelled(shape, steps, reason)
    if reason:  # refused on its face: no memory figure or trace needed
        lower = estimate(costs_for(modules, True, measure=False), **shape, steps=steps, multiple=multiple)
        return replace(lower, fits=False, reason=reason)
    plan = getattr(getattr(cascade, "runtime", None), "plan", None)
    if plan is not None and limits.memory is None:  # placed by a plan: its budget, not the free memory
        from .plan_estimate import planned_estimate  # imported here: plan_estimate imports this module

        base = estimate(costs_for(modules, True, measure=False), **shape, steps=steps, multiple=multiple)
        return planned_estimate(plan, modules, base, batch=batch, height=height, width=width, steps=steps)
    return estimate_modules(
        modules, **shape, steps=steps, device=cascade.device, weights_loaded=True, limits=limits, multiple=multiple
    )


def _unmodelled(shape: dict, steps, reason: str | None) -> RequestEstimate:
    return RequestEstimate(
        **shape,
        weight_bytes=0,
        weights_loaded=True,
        buffer_bytes=0,
        activation_bytes=0,
        peak_phase="",
        limit_bytes=None,
        limit_source="no memory model for exported graphs or engines",
        exact=False,
        fits=not reason,
        reason=reason or "",
        steps=tuple(steps),
    )


def check_request(cascade, **request) -> RequestEstimate:
    """``estimate_request``, raising ``RequestTooLarge`` (a ValueError with the message) when it does not fit."""
    est = estimate_request(cascade, **request)
    if not est.fits:
        raise RequestTooLarge(est)
    log.debug("request estimate: %s of %s", est.summary(), est.limit_source)
    return est
