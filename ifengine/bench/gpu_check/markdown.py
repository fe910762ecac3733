"""The GPU check's report as Markdown: one heading per section, its status, its figures."""

from __future__ import annotations

import json

from ..report import markdown_table


def markdown(report: dict) -> str:
    cfg = report["config"]
    lines = [
        f"# GPU check ({cfg['preset']} presets on {cfg['device']}, steps {tuple(cfg['steps'])}): "
        f"{report.get('total_seconds', 0)} s of a {cfg['seconds']} s budget\n",
        f"Started {report.get('started_utc')}; libraries imported in {report.get('startup_seconds')} s.\n",
        markdown_table(
            ["section", "status", "seconds", "deadline s"], [_status_row(n, e) for n, e in report["sections"].items()]
        ),
    ]
    for name, entry in report["sections"].items():
        lines.append(f"\n## {name}: {entry.get('status')}\n")
        if entry.get("error"):
            lines.append(f"Error: `{entry['error']}`\n")
        result = entry.get("result")
        if name == "step_times" and isinstance(result, dict):
            lines.append(_step_table(result))
        elif result is not None:
            lines += ["```json", json.dumps(result, indent=1, default=str), "```"]
    return "\n".join(lines) + "\n"


def _status_row(name: str, entry: dict) -> list:
    return [name, entry.get("status"), entry.get("seconds", ""), entry.get("deadline_s", "")]


def _step_table(step_times: dict) -> str:
    header = ["U-Net", "batch", "eager ms", "graph ms", "GFLOP/call", "MFU eager", "MFU graph"]
    rows = [
        [r["unet"], r["batch"], _f(r["eager_ms"]), _f(r.get("graph_ms")), _f(r["flops"] / 1e9)]
        + [_f(r.get("mfu_eager"), 3), _f(r.get("mfu_graph"), 3)]
        for r in step_times.get("rows", [])
    ]
    return f"Matmul peak: {step_times.get('matmul_peak')}\n\n" + markdown_table(header, rows)


def _f(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
