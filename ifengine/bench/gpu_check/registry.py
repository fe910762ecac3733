"""The sections of the GPU check, in the order they run: the one list to extend.

A section is a function ``run(cfg: CheckConfig, save: Callable[[dict], None]) -> dict`` in a module of
its own (or a sibling's). It runs alone in a fresh child process, so it builds what it needs, may crash
or hang without costing the others, and starts on a device nobody else holds. It returns a JSON-safe
dict; ``save(partial)`` records what it has so far, which the report keeps if the section is killed at
its deadline. On ``--device cpu`` a section runs all its code except the GPU-only calls, which it
reports as ``{"skipped": why}`` (the default test suite runs every section this way).

``budget_s`` is the section's share of the quick run's 480 s on a GPU (``--seconds`` scales every share);
the parent kills the section's process group at ``min(share, time left)``. To add a section, write its
function and append ``Section("name", module.run, budget_s)`` here, taking its seconds from another
section's share so that the sum stays at ``DEFAULT_SECONDS`` (the quick run must end within 9 minutes
of the command starting, Python and CUDA start-up included).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import gpu_inductor
from . import budget, context, graphs, machine, steps, throughput


@dataclass(frozen=True)
class Section:
    name: str
    run: Callable
    budget_s: float  # share of DEFAULT_SECONDS

    @property
    def target(self) -> str:
        """Where the child process finds the function: a module-level function of an importable module."""
        return f"{self.run.__module__}:{self.run.__qualname__}"


SECTIONS: tuple[Section, ...] = (
    Section("machine", machine.run, 20),  # first: even a run that dies at once says where it ran
    Section("context", context.run, 25),  # second: the CUDA context measured with nothing else on the device
    Section("equality", graphs.equality, 60),
    Section("graph_reuse", graphs.reuse, 60),
    Section("sync_debug", graphs.sync_debug, 45),
    Section("throughput", throughput.run, 40),
    Section("step_times", steps.run, 80),
    Section("budget", budget.run, 90),
    # last: an IF-I-M step compiled ahead of time; if the compile outruns its share the kill keeps the rest
    Section("inductor", gpu_inductor.run, 60),
)
DEFAULT_SECONDS = sum(s.budget_s for s in SECTIONS)


def section(name: str) -> Section:
    for s in SECTIONS:
        if s.name == name:
            return s
    raise ValueError(f"unknown GPU check section {name!r}; the sections are {', '.join(names())}")


def names() -> tuple[str, ...]:
    return tuple(s.name for s in SECTIONS)
