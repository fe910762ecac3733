"""Benchmark harness shared by ``benchmarks/*.py`` and ``ifengine bench``.

timing (warm-up, CUDA events, alternated repetitions, median and spread), machine description, FLOP
counting and matmul peak, random full-size checkpoints that diffusers and ifengine load identically,
and reporting (atomic JSON, Markdown tables, PNG charts). diffusers is imported only inside the
functions that run the diffusers side: the engine itself never depends on it.
"""
