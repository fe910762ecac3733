#!/usr/bin/env python
"""Cascade latency, throughput and MFU per stage (T5, I, II, III incl. VAE), ifengine backends vs diffusers
(fp16 eager and torch.compile) on identical random full-size weights. Needs a CUDA GPU (--device cpu --preset
tiny for a smoke run).

Same as `ifengine bench cascade`; `python benchmarks/cascade.py --help` lists the options. Results go to --out
(JSON + Markdown + PNG); benchmarks/RESULTS.md keeps the latest recorded figures.
"""

import sys

from ifengine.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "cascade", *sys.argv[1:]]))
