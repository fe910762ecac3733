"""The one seam: what runs a whole denoising step, what runs a stage loop, and when either may be captured.

It lives in the stage core because the stage loops (``stage.stages``) call through it, and every floor
above implements it: the eager torch step (``EagerStep``, here), the traced TorchScript step
(``backends.traced``), the exported step graphs on ONNX Runtime, TensorRT and ahead-of-time Inductor
(``backends.parts.NetworkIFStep`` / ``NetworkX4Step`` over a ``backends.base.Network``), and the GPU runner
(``runtime``), which repeats steps inside CUDA graphs.

**The step contract** (``Step``). A step runs x_t -> x_{t-1} for one stage:

1. It is called as ``step(unet, tables, i, ...)`` with exactly the parameters of ``steps.if_step`` (stages
   I and II) or ``steps.x4_step`` (stage III), ``i`` a device tensor; it returns the new sample and never
   writes its inputs.
2. It never synchronises the host: no ``.item()``, no ``.cpu()``, no Python branch on a tensor value.
3. ``capture`` states, as a ``Capture``, whether a call may be recorded in a CUDA graph and replayed
   without running Python; the GPU runner combines it with the U-Net's (``capture_of``) and never captures
   a step that says ``NEVER``.
4. ``weights_changed()`` is called after the U-Net's weights change in place (LoRA fused, set or removed):
   a step that froze weights (a traced graph) forgets them; one that reads the module each call does nothing.
5. ``eager_equivalent`` is None, or the step whose ops this one replays through a host-side executor (the
   traced step): the GPU runner runs that one instead, because its graphs already remove the per-op host
   cost and an executor's host-side caches would replay stale values.

What a step will NOT do: own or allocate the stage's buffers (the loop and the runner do), draw random
numbers (all noise is drawn before the loop), move weights between devices (the memory planner does),
or change the schedule (the tables are the loop's).

**The stage-runner contract** (``StageRunner``): ``run_if_stage`` / ``run_x4_stage`` with the signatures of
``stage.stages.run_if_stage`` / ``run_x4_stage``: the plain loops (``stages.EAGER``) and the GPU runtime
(``runtime.Runtime``) are the two; ``Cascade.runner`` is always one of them.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

from torch import nn


class Capture(enum.Enum):
    """May a call be recorded in a CUDA graph (and replayed without running Python)?"""

    NEVER = "never"  # host work per call (ONNX Runtime's session.run, host-side caches)
    AFTER_WARMUP = "after_warmup"  # pure device work once one eager call at these shapes has run
    ALWAYS = "always"  # pure device work from the first call

    def allows(self, warm: bool) -> bool:
        return self is Capture.ALWAYS or (self is Capture.AFTER_WARMUP and warm)


def weakest(captures: Iterable[Capture]) -> Capture:
    """The capture rule of a step that makes all these calls: the strictest of them."""
    order = (Capture.NEVER, Capture.AFTER_WARMUP, Capture.ALWAYS)
    return min(captures, key=order.index, default=Capture.ALWAYS)


class Capturable(ABC):
    """A network part the GPU runner may put inside a captured step states its rule through this type."""

    @property
    @abstractmethod
    def capture(self) -> Capture: ...


def capture_of(obj: Any) -> Capture:
    """The capture rule of what a step calls: a torch module is pure device work after one warm-up call;
    anything else must state its rule (``Capturable``), so an unknown object is an error, not a guess."""
    if isinstance(obj, Capturable):
        return obj.capture
    if isinstance(obj, nn.Module):
        return Capture.AFTER_WARMUP
    raise TypeError(f"{type(obj).__name__} neither is a torch module nor states a capture rule (stage.seam.Capturable)")


@runtime_checkable
class Step(Protocol):
    """Runs one whole denoising step; the contract is the numbered list in the module docstring."""

    @property
    def capture(self) -> Capture: ...

    @property
    def eager_equivalent(self) -> Step | None: ...

    def weights_changed(self) -> None: ...

    def __call__(self, unet: Any, tables: Any, *args: Any, **kwargs: Any) -> Any: ...


class EagerStep:
    """The torch step function itself (``steps.if_step`` / ``x4_step``): module calls, nothing cached."""

    eager_equivalent = None

    def __init__(self, fn: Callable):
        self.fn = fn

    @property
    def capture(self) -> Capture:
        return Capture.AFTER_WARMUP  # pure tensor arithmetic; the U-Net's own rule is combined by the runner

    def weights_changed(self) -> None:
        return None  # reads the module's weights on every call

    def __call__(self, unet, tables, *args, **kwargs):
        return self.fn(unet, tables, *args, **kwargs)

    def __repr__(self) -> str:
        return f"EagerStep({self.fn.__name__})"


def check_step(step: Any) -> Step:
    """``step`` if it implements the contract, else a TypeError that names what is missing."""
    if not isinstance(step, Step):
        missing = [n for n in ("capture", "eager_equivalent", "weights_changed", "__call__") if not hasattr(step, n)]
        raise TypeError(f"{type(step).__name__} is not a stage.seam.Step (missing {', '.join(missing)})")
    return step


@runtime_checkable
class StageRunner(Protocol):
    """Runs whole stage loops: the plain torch loops or the GPU runtime."""

    def run_if_stage(self, stage_no: int, stage: Any, opts: Any, embeds: Any, shape: Any, ctx: Any, **kw: Any): ...

    def run_x4_stage(self, stage: Any, opts: Any, prompts: Any, negatives: Any, image: Any, ctx: Any): ...
