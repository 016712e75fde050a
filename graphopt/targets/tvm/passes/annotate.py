"""`annotate`: how target passes record a decision on nodes without rewriting the graph."""
from __future__ import annotations

from collections import Counter
from typing import Callable

from ....ir import Graph, Node
from ....passes.manager import PassResult


def annotate(graph: Graph, decide: Callable[[Node], object | None],
             misses: dict[str, list[tuple[str, str]]] | None = None) -> PassResult:
    """Swap each node's op for `decide(node)` where that returns a different op (same inputs
    and output types: a recorded decision, not a rewrite); names and provenance stay.
    `misses`: {rule: [(node, reason)]} that `decide` filled, for the pass report."""
    changed: Counter[str] = Counter()
    result = graph.copy()
    for node in result.nodes:
        new = decide(node)
        if new is not None and new != node.op:
            node.op = new
            changed[_label(new)] += 1
    noted = {"misses": misses} if misses else {}
    if not changed:
        return PassResult(graph, False, noted)
    return PassResult(result, True, {"rewrites": dict(changed), **noted})


def _label(op) -> str:
    return f"{op.name} -> {op.target_choice() or 'as written'}"
