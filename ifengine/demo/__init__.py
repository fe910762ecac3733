"""The built-in tiny demo checkpoints (random weights, in the Hub layout; run in seconds on a CPU) and their
tokenizer assets. ``pipeline.cascade.open_cascade()`` with no source opens them."""

from .build import demo_checkpoints

__all__ = ["demo_checkpoints"]
