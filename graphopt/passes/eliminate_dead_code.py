"""eliminate_dead_code: remove nodes that no graph output depends on, and unused constants."""
from __future__ import annotations

from ..ir import Graph
from .manager import PassResult, register_pass


def _live_nodes(graph: Graph) -> set[int]:
    """Ids of the nodes some graph output depends on (a walk back from the outputs)."""
    live: set[int] = set()
    stack = [v.producer for v in graph.outputs if v.producer is not None]
    while stack:
        node = stack.pop()
        if id(node) not in live:
            live.add(id(node))
            stack.extend(v.producer for v in node.inputs if v.producer is not None)
    return live


@register_pass
def eliminate_dead_code(graph: Graph) -> PassResult:
    live = _live_nodes(graph)
    used = {id(v) for n in graph.nodes if id(n) in live for v in n.inputs} | \
        {id(v) for v in graph.outputs}
    dead_nodes = sum(id(n) not in live for n in graph.nodes)
    dead_constants = sum(id(c) not in used for c in graph.constants.values())
    if not dead_nodes and not dead_constants:
        return PassResult(graph, False, {})
    g = graph.copy()
    removed = g.remove_unused_nodes(list(g.nodes))
    count = len(g.constants)
    g.remove_unused_constants()
    return PassResult(g, True, {"nodes removed": removed,
                                "constants removed": count - len(g.constants)})
