"""The parent of the GPU check: runs each section in a child process under a hard deadline.

Children are forked by ``multiprocessing``'s fork server (see ``child.py``): the libraries are imported
once for the whole check instead of once per section, which saves seconds of every section's share.

The parent holds no CUDA context (it never touches the device), so each child has the device to itself.
A child that overruns its deadline is killed with its whole process group; a child that crashes leaves
its error (and whatever it had saved) in the report. The report, JSON and Markdown, is rewritten
atomically before the first section and after every one: a run cut short at any moment keeps every
section finished so far.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import signal
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from ...atomic import write_json_atomic, write_text_atomic
from .child import PRELOAD, ready, run_in_child
from .config import CheckConfig
from .markdown import markdown
from .registry import DEFAULT_SECONDS, SECTIONS, Section

log = logging.getLogger(__name__)
MIN_SECONDS = 3.0  # below this a child cannot even import torch: the section is recorded as not started
PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # the folder that holds ifengine/


def run_check(
    cfg: CheckConfig, out_dir: Path, only: Sequence[str] | None = None, sections: Sequence[Section] = SECTIONS
) -> dict:
    """Run ``sections`` (those named in ``only``, if given) and return the report written to ``out_dir``.
    Each section's deadline is its ``budget_s`` scaled by ``cfg.seconds / DEFAULT_SECONDS``."""
    out_dir = Path(out_dir)
    chosen = [s for s in sections if not only or s.name in only]
    started, scale = time.monotonic(), cfg.seconds / DEFAULT_SECONDS
    report = {
        "config": asdict(cfg),
        "started_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "sections": {s.name: {"status": "pending"} for s in chosen},
    }
    report["startup_seconds"] = _start_server(max(MIN_SECONDS, cfg.seconds / 8))
    write_report(report, out_dir)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for s in chosen:
            left = cfg.seconds - (time.monotonic() - started)
            deadline = min(s.budget_s * scale, left)
            if deadline < MIN_SECONDS:
                report["sections"][s.name] = {"status": "not started", "error": f"{left:.0f} s left of the budget"}
            else:
                report["sections"][s.name] = run_section(s, cfg, deadline, Path(tmp), out_dir)
            report["total_seconds"] = round(time.monotonic() - started, 2)
            write_report(report, out_dir)
    return report


def _context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _start_server(limit: float) -> float:
    """Start the fork server (it imports the libraries) with a no-op child, before any section's clock
    runs: the first section's deadline is then its own work, not the imports. Counts in the total."""
    started = time.monotonic()
    child = _context().Process(target=ready, name="gpu_check start-up")
    child.start()
    child.join(timeout=limit)
    if child.is_alive():
        child.kill()
        child.join()
        log.warning("the fork server's start-up took more than %.0f s; the first section pays the rest", limit)
    return round(time.monotonic() - started, 2)


def run_section(s: Section, cfg: CheckConfig, deadline: float, tmp: Path, out_dir: Path) -> dict:
    result_path, log_path = tmp / f"{s.name}.json", out_dir / f"gpu_check.{s.name}.log"
    args = (s.target, cfg.to_json(), str(result_path), str(log_path), [str(PACKAGE_ROOT), *sys.path])
    started = time.monotonic()
    child = _context().Process(target=run_in_child, args=args, name=f"gpu_check {s.name}")
    child.start()
    child.join(timeout=deadline)
    timed_out = child.is_alive()
    if timed_out:
        _kill_group(child)
        child.join()
    code = child.exitcode
    entry = _read(result_path)
    entry.update(seconds=round(time.monotonic() - started, 2), deadline_s=round(deadline, 1))
    if timed_out:
        entry.update(status="timeout", error=f"killed at its deadline of {deadline:.0f} s")
    elif code and entry.get("status") != "error":
        entry.update(status="error", error=f"the child exited with status {code} before recording a result")
    if entry["status"] != "ok":
        entry["log_tail"] = _tail(log_path)
    log.info("section %s: %s in %.1f s", s.name, entry["status"], entry["seconds"])
    return entry


def _kill_group(child) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)  # the section's own session: its helpers go with it
    child.kill()  # in case it was killed before it could start its session


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"status": "error"}


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {
        "json": write_json_atomic(out_dir / "gpu_check.json", report, default=str),
        "md": write_text_atomic(out_dir / "gpu_check.md", markdown(report)),
    }
