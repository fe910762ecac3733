#!/usr/bin/env python
"""Build the random full-size checkpoints (Hub layout, fp16 safetensors) that both systems load.

Same as `ifengine bench checkpoints`; the cascade and memory benchmarks build them on first use too, so
this only moves the wait (tens of GB of writing for --preset full) ahead of a timed session.
"""

import sys

from ifengine.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "checkpoints", *sys.argv[1:]]))
