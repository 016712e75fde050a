"""fold_constants: evaluate every node whose inputs are all constants with its reference kernel
and use the result as a constant instead (the folded node leaves no provenance)."""
from __future__ import annotations

from ..ir import Graph, Value
from .manager import PassResult, register_pass
from .pattern import Match, Pattern, Rule, apply_rules, is_graph_output


def _inputs_constant(value: Value) -> str | None:
    node = value.producer
    if node is None:
        return "not a node output"
    if not node.inputs or not all(v.is_constant for v in node.inputs):
        return "not every input is a constant"
    return None


def _check(graph: Graph, m: Match) -> str | None:
    if is_graph_output(graph, m.root.output):
        return "a graph output stays computed (its name belongs to a node output)"
    return None


def _fold(graph: Graph, m: Match) -> Value:
    node = m.root
    [array] = node.op.run(*[v.data for v in node.inputs])
    return graph.add_constant(f"{node.name}.folded", array.astype(node.output.dtype))


RULES = [Rule("constant inputs", Pattern(where=_inputs_constant), _fold, _check,
              report_misses=False)]


@register_pass
def fold_constants(graph: Graph) -> PassResult:
    return apply_rules(graph, RULES)
