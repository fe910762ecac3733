#!/usr/bin/env python
"""Peak device memory per stage and end to end, unconstrained and under each --vram budget. Needs a CUDA GPU
(--device cpu --preset tiny --vram none for a smoke run).

Same as `ifengine bench memory`; `python benchmarks/memory.py --help` lists the options. Results go to --out
(JSON + Markdown + PNG); benchmarks/RESULTS.md keeps the latest recorded figures.
"""

import sys

from ifengine.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "memory", *sys.argv[1:]]))
