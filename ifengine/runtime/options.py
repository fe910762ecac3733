"""The switches of the GPU runtime, listed once: ``Cascade.from_pretrained``'s keywords, ``configure``'s
keywords and the CLI's flags all become one ``RuntimeOptions``, checked when it is made."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..memory.planner import PlanOptions
from ..memory.sizes import parse_size
from ..memory.weight_precision import check_weights
from ..validate import positive_int


@dataclass(frozen=True)
class RuntimeOptions:
    """Every switch of the GPU runtime. Made from keywords (``RuntimeOptions.of(**keywords)`` also takes
    ``throughput=True`` for ``mode="throughput"``); bad values fail here, before anything is loaded."""

    vram_budget: int | str | None = None  # "8GiB", "12GB" or bytes: the planner places every weight
    cuda_graphs: bool | None = None  # None: on for CUDA cascades, off elsewhere; False: eager steps
    compile: bool = False  # torch.compile the U-Nets (backends/torch/settings.py says why it is off)
    channels_last: bool = False
    weights: str = "auto"  # U-Net weights: "native", "int8", or "auto" (int8 only where native would stream)
    mode: str = "latency"  # "throughput": stage I and stages II/III on two streams (see throughput.py)
    max_batch: int = 1  # the most images one call makes: buffers and the plan are sized for it
    max_size: tuple[int | None, int | None] | None = None  # the largest stage I (height, width); None: default
    warmup_steps: int = 2
    graph_scope: str = "auto"
    limit_allocator: bool = False  # enforce the budget with torch.cuda.set_per_process_memory_fraction
    plan: PlanOptions | None = None  # planner knobs (reserve, margin); derived from the above when None

    def __post_init__(self) -> None:
        if self.vram_budget is not None:
            object.__setattr__(self, "vram_budget", parse_size(self.vram_budget))  # bytes from here on
        check_weights(self.weights)
        positive_int(self.max_batch, "max_batch")
        if self.max_size is not None and (not isinstance(self.max_size, (tuple, list)) or len(self.max_size) != 2):
            raise ValueError(f"max_size must be None or a (height, width) pair, got {self.max_size!r}")
        for part in self.max_size or ():
            positive_int(part, "max_size", none_ok=True)
        positive_int(self.warmup_steps, "warmup_steps")
        self.plan_options()  # checks mode and graph_scope

    @classmethod
    def of(cls, base: RuntimeOptions | None = None, *, throughput: bool = False, **keywords) -> RuntimeOptions:
        """``base`` (default: the defaults) with the keywords that differ from their defaults applied, as
        ``from_pretrained`` and ``configure`` take them; ``throughput=True`` is ``mode="throughput"``."""
        unknown = set(keywords) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown runtime option(s) {sorted(unknown)}; the options are {', '.join(DEFAULTS)}")
        changed = {name: value for name, value in keywords.items() if value != DEFAULTS[name]}
        if throughput:
            changed["mode"] = "throughput"
        return dataclasses.replace(base, **changed) if base is not None else cls(**changed)

    def wanted_on(self, device_type: str) -> bool:
        """Whether a cascade on ``device_type`` needs the runtime: always on CUDA; elsewhere only when
        asked for by a budget, CUDA graphs, int8 weights or throughput mode."""
        asked = self.vram_budget is not None or self.cuda_graphs or self.weights == "int8"
        return device_type == "cuda" or bool(asked) or self.mode == "throughput"

    def for_device(self, device_type: str) -> RuntimeOptions:
        """These options with ``cuda_graphs`` decided for the device (None: on exactly for CUDA)."""
        graphs = device_type == "cuda" if self.cuda_graphs is None else self.cuda_graphs
        return dataclasses.replace(self, cuda_graphs=graphs)

    def plan_options(self) -> PlanOptions:
        return self.plan or PlanOptions(
            cuda_graphs=bool(self.cuda_graphs), graph_scope=self.graph_scope, mode=self.mode
        )


DEFAULTS = {f.name: f.default for f in dataclasses.fields(RuntimeOptions)}  # every field has a plain default
