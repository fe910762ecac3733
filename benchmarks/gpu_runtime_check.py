"""Replaced by ``benchmarks/gpu_check.py`` (one budgeted GPU check; see its docstring).

The old script ran 10-13 minutes by default and hours with --sweep, and its budget section could not pass
(run_throughput's overlap on a latency runtime); this name forwards so existing notes keep working.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
