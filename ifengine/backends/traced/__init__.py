"""The "traced" executor: a stage's whole step as one frozen TorchScript graph, loop invariants hoisted.

- ``executor``: tracing, freezing and running the step; ``attach_executor`` for the cascade
- ``hoist``: splitting a frozen graph into a per-run prologue and the per-step remainder
"""
