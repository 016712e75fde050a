"""remove_identities: drop nodes that return their input unchanged (identity, dropout at inference,
no-op reshape / flatten / transpose / pad / clip / pooling, single-input concat, x + 0, x * 1, ...),
and collapse chains of reshapes and of transposes into one node."""
from __future__ import annotations

import numpy as np

from .. import ops
from ..ir import Graph, Value
from .manager import PassResult, register_pass
from .pattern import (Match, Rule, any_value, apply_rules, can_take_over, const,
                      merged_provenance, op)


def _same_type(value: Value) -> str | None:
    """The node returns a value of its first input's type (so it may stand for it)."""
    node = value.producer
    if node.outputs[0].type != node.inputs[0].type:
        return f"changes the type {node.inputs[0].type} to {value.type}"
    return None


# When a node of each op returns its input unchanged (its output type is checked apart).
IDENTITY_WHEN = {
    "identity": lambda node, op: True,
    "dropout": lambda node, op: True,
    "reshape": lambda node, op: True,
    "flatten": lambda node, op: True,
    "transpose": lambda node, op: op.perm == tuple(range(len(op.perm))),
    "pad": lambda node, op: all(a == 0 and b == 0 for a, b in op.pads),
    "clip": lambda node, op: op.min is None and op.max is None,
    "concat": lambda node, op: len(node.inputs) == 1,
    "max_pool2d": lambda node, op: _unit_window(op),
    "avg_pool2d": lambda node, op: _unit_window(op),
}


def _is_identity(value: Value) -> str | None:
    node = value.producer
    if not IDENTITY_WHEN[node.op_name](node, node.op):
        return f"{node.op} is not an identity"
    return _same_type(value)


def _unit_window(pool) -> bool:
    return pool.kernel == (1, 1) and pool.stride == (1, 1) and not any(pool.padding)


def _neutral(element: float):
    """x (+,-) 0 and x (*,/) 1: the constant operand is all `element` and does not broadcast x."""
    def check(graph: Graph, m: Match) -> str | None:
        if not np.all(m["c"].data == element):
            return f"%{m['c'].name} is not all {element:g}"
        if m.root.output.type != m["x"].type:
            return f"the constant broadcasts %{m['x'].name} to {m.root.output.type}"
        return _keeps_name(graph, m)
    return check


def _keeps_name(graph: Graph, m: Match) -> str | None:
    return can_take_over(graph, m.root.output, m["x"])


def _input(graph: Graph, m: Match) -> Value:
    return m["x"]


def _reshape_chain(graph: Graph, m: Match) -> Value:
    root = m.root
    node = graph.add_node(ops.Reshape(root.output.shape), [m["x"]],
                          name=graph.fresh_name(f"{root.name}.merged"),
                          provenance=merged_provenance(m["inner"], root))
    return node.output


def _transpose_chain(graph: Graph, m: Match) -> Value:
    root, inner = m.root, m["inner"]
    perm = tuple(inner.op.perm[p] for p in root.op.perm)
    node = graph.add_node(ops.Transpose(perm), [m["x"]],
                          name=graph.fresh_name(f"{root.name}.merged"),
                          provenance=merged_provenance(inner, root))
    return node.output


IDENTITY_OPS = tuple(IDENTITY_WHEN)
SHAPE_OPS = ("reshape", "flatten")

RULES = [
    Rule("identity", op(IDENTITY_OPS, any_value("x"), where=_is_identity), _input, _keeps_name),
    Rule("x + 0", op("add", any_value("x"), const("c"), commutative=True), _input, _neutral(0)),
    Rule("x - 0", op("sub", any_value("x"), const("c")), _input, _neutral(0)),
    Rule("x * 1", op("mul", any_value("x"), const("c"), commutative=True), _input, _neutral(1)),
    Rule("x / 1", op("div", any_value("x"), const("c")), _input, _neutral(1)),
    Rule("reshape chain", op(SHAPE_OPS, op(SHAPE_OPS, any_value("x"), name="inner", shared=True)),
         _reshape_chain),
    Rule("transpose chain",
         op("transpose", op("transpose", any_value("x"), name="inner", shared=True)),
         _transpose_chain),
]


@register_pass
def remove_identities(graph: Graph) -> PassResult:
    return apply_rules(graph, RULES)
