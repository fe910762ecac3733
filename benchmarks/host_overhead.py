#!/usr/bin/env python
"""Host overhead per denoising step: stage I of a tiny model at 8x8 on one CPU thread, ifengine vs diffusers.

Same as `ifengine bench host`; `python benchmarks/host_overhead.py --help` lists the options. Results go to --out
(JSON + Markdown + PNG); benchmarks/RESULTS.md keeps the latest recorded figures.
"""

import sys

from ifengine.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "host", *sys.argv[1:]]))
