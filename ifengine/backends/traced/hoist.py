"""Loop-invariant hoisting on a frozen TorchScript graph: split one step into a per-run prologue and the step.

Within one denoising run the text states, the guidance scale, the schedule tables and stage II's noised
low-res image never change, yet an eager step recomputes everything derived from them every step: the
cross-attention keys/values of the text in every attention layer, the attention-pooled text embedding,
the text projection. This pass marks every node whose inputs are all run-invariant (or constants),
moves those nodes into a prologue graph that runs once per run, and feeds its results into the step
graph as extra inputs. Nothing is approximated: both graphs run exactly the traced aten ops.

The split is refused (one plain graph is used instead) when the graph mutates tensors in place, because
a hoisted tensor that a step mutated would carry that change into the next step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)
_NEVER_HOISTED = ("prim::Constant", "prim::Param")


@dataclass(frozen=True)
class SplitStep:
    """``prologue(*inputs[i] for i in prologue_inputs)`` once per run, then per step
    ``step(*inputs[i] for i in step_inputs, *hoisted)``; ``prologue`` is None when nothing was hoisted."""

    prologue: Callable | None
    prologue_inputs: tuple[int, ...]
    step: Callable
    step_inputs: tuple[int, ...]
    hoisted_nodes: int


def split_invariant(graph: torch._C.Graph, invariant: set[int]) -> SplitStep:
    """Split a self-less graph whose inputs at positions ``invariant`` are fixed for a run."""
    graph = graph.copy()
    torch._C._jit_pass_remove_mutation(graph)
    if _mutates(graph):
        log.debug("graph mutates tensors in place; running it whole, without hoisting")
        return _whole(graph)
    inputs = list(graph.inputs())
    static = _static_values(graph, {inputs[k] for k in invariant})
    frontier = _frontier(graph, static)
    if not frontier:
        return _whole(graph)
    names = [v.debugName() for v in frontier]
    prologue = _prologue_graph(graph, names)
    before = _count(graph)
    for value in frontier:
        fed = graph.addInput()
        fed.setType(value.type())
        value.replaceAllUsesWith(fed)
    torch._C._jit_pass_dce(graph)
    hoisted = before - _count(graph)
    log.debug("hoisted %d nodes (%d tensors) out of the step", hoisted, len(frontier))
    n_original = len(inputs)
    step_kept = _erase_unused_inputs(graph)
    if step_kept[-len(frontier) :] != tuple(range(n_original, n_original + len(frontier))):
        raise RuntimeError("hoisting lost a hoisted input of the step graph")  # would misalign the prologue
    return SplitStep(
        prologue=_function("prologue", prologue),
        prologue_inputs=_erase_unused_inputs(prologue),
        step=_function("step", graph),
        step_inputs=tuple(k for k in step_kept if k < n_original),
        hoisted_nodes=hoisted,
    )


def _whole(graph: torch._C.Graph) -> SplitStep:
    kept = _erase_unused_inputs(graph)
    return SplitStep(
        prologue=None, prologue_inputs=(), step=_function("step", graph), step_inputs=kept, hoisted_nodes=0
    )


def _mutates(graph: torch._C.Graph) -> bool:
    return any(_is_inplace(n) for n in _all_nodes(graph.block()))


def _all_nodes(block):
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from _all_nodes(inner)


def _is_inplace(node) -> bool:
    # aten in-place ops end in "_" (add_, copy_); dunder names (__getitem__) are not in-place
    kind = node.kind()
    return kind.startswith("aten::") and kind.endswith("_") and not kind.endswith("__")


def _static_values(graph: torch._C.Graph, invariant_inputs: set) -> set:
    """Values computable from run-invariant inputs and constants alone (top-level nodes only)."""
    static = set(invariant_inputs)
    for node in graph.nodes():
        if node.kind() == "prim::Constant" or _hoistable(node, static):
            static.update(node.outputs())
    return static


def _hoistable(node, static: set) -> bool:
    if node.isNondeterministic() or list(node.blocks()) or _is_inplace(node):
        return False
    return all(v in static for v in node.inputs())


def _frontier(graph: torch._C.Graph, static: set) -> list:
    """Tensors computed in the prologue that the step still needs (inputs and constants stay put)."""
    frontier, seen = [], set()
    for node in list(graph.nodes()) + [graph.return_node()]:
        if node.kind() != "prim::Return" and all(o in static for o in node.outputs()):
            continue  # itself hoisted
        for value in node.inputs():
            if (
                value in static
                and value.node().kind() not in _NEVER_HOISTED
                and isinstance(value.type(), torch._C.TensorType)
                and value.unique() not in seen
            ):
                seen.add(value.unique())
                frontier.append(value)
    return frontier


def _prologue_graph(graph: torch._C.Graph, names: list[str]) -> torch._C.Graph:
    prologue = graph.copy()
    by_name = {v.debugName(): v for n in prologue.nodes() for v in n.outputs()}
    for _ in range(len(list(prologue.outputs()))):
        prologue.eraseOutput(0)
    for name in names:
        prologue.registerOutput(by_name[name])
    torch._C._jit_pass_dce(prologue)
    prologue.makeMultiOutputIntoTuple()
    return prologue


def _erase_unused_inputs(graph: torch._C.Graph) -> tuple[int, ...]:
    """Drop inputs nothing reads (the step need not be handed every table); returns kept positions."""
    kept = []
    for position, value in reversed(list(enumerate(graph.inputs()))):
        if value.uses():
            kept.append(position)
        else:
            graph.eraseInput(position)
    return tuple(reversed(kept))


def _count(graph: torch._C.Graph) -> int:
    return sum(1 for n in graph.nodes() if n.kind() != "prim::Constant")


def _function(name: str, graph: torch._C.Graph) -> Callable:
    return torch._C._create_function_from_graph(name, graph)
