"""The GPU check of the runtime, built so that one run on a fresh GPU keeps every result it reaches.

``benchmarks/gpu_check.py`` is its command. ``registry.SECTIONS`` is the ordered list of sections, each
a function run alone in a child process (``child.py``) under a hard deadline enforced by the parent
(``runner.py``), which rewrites ``gpu_check.json`` and ``gpu_check.md`` after every section. To add a
section, see ``registry.py``'s docstring: one function in its own module, one ``Section`` line.
"""

from .config import PRESETS, CheckConfig, quick_config
from .registry import DEFAULT_SECONDS, SECTIONS, Section, names, section
from .runner import run_check, write_report

__all__ = [
    "CheckConfig",
    "DEFAULT_SECONDS",
    "PRESETS",
    "SECTIONS",
    "Section",
    "names",
    "quick_config",
    "run_check",
    "section",
    "write_report",
]
