"""Results on disk: one JSON per run, a Markdown table and a PNG chart, every file written atomically.

A file is written to a temporary name in its own folder and renamed over the target, so a reader (or a
crashed run) never sees half a result.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from pathlib import Path
from collections.abc import Callable, Mapping, Sequence

from ..atomic import replacing

log = logging.getLogger(__name__)


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it into place."""
    with replacing(path) as tmp:
        write(tmp)
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, payload: Mapping) -> Path:
    return write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def command_line(argv: Sequence[str] | None = None) -> str:
    """The exact command that produced a result, as a shell would need it."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(".py"):
        argv = ["python"] + argv  # a benchmarks/*.py script
    elif argv and os.path.basename(argv[0]) == "ifengine":
        argv = ["ifengine"] + argv[1:]  # the console script, wherever it is installed
    return " ".join(shlex.quote(a) for a in argv)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def stage_chart(
    path: Path,
    values: Mapping[str, Mapping[str, float]],
    title: str,
    ylabel: str = "time per run (ms)",
    scale: float = 1e3,
) -> Path:
    """Grouped bars: one group per stage, one bar per system; ``values`` is system -> stage -> value
    (seconds by default, drawn times ``scale``)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on build or GPU machines
    import matplotlib.pyplot as plt

    systems = list(values)
    stages = list(dict.fromkeys(s for per in values.values() for s in per))
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(stages) + 2), 4.2))
    for k, system in enumerate(systems):
        xs = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(stages))]
        ys = [values[system].get(stage, float("nan")) * scale for stage in stages]
        ax.bar(xs, ys, width, label=system)
    ax.set_xticks(range(len(stages)), stages)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)


def write_outputs(
    out_dir: Path, name: str, payload: Mapping, table: str, chart: Callable[[Path], Path] | None = None
) -> dict[str, Path]:
    """``<out_dir>/<name>.json`` and ``.md`` (+ ``.png`` when a chart is given)."""
    out_dir = Path(out_dir)
    paths = {"json": write_json(out_dir / f"{name}.json", payload), "md": write_text(out_dir / f"{name}.md", table)}
    if chart is not None:
        try:
            paths["png"] = chart(out_dir / f"{name}.png")
        except ImportError as err:  # matplotlib is a benchmark extra, not an engine dependency
            log.warning("no PNG chart for %s: %s (pip install matplotlib)", name, err)
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths
