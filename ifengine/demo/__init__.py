"""The built-in tiny demo cascade (random weights, runs in seconds on a CPU) and its tokenizer assets."""

from .build import demo_cascade, demo_checkpoints

__all__ = ["demo_cascade", "demo_checkpoints"]
