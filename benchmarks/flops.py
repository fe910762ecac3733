#!/usr/bin/env python
"""FLOPs per component counted on the meta device (vs if-facts.md) and the matmul peak they are measured against.

Same as `ifengine bench work`; `python benchmarks/flops.py --help` lists the options. Results go to --out
(JSON + Markdown); benchmarks/RESULTS.md keeps the latest recorded figures.
"""

import sys

from ifengine.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "work", *sys.argv[1:]]))
