"""remove_identities: drop nodes that return their input unchanged (dropout at inference, no-op
reshape / flatten / transpose / pad / clip / pooling, single-input concat, x + 0, x * 1, ...),
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


def _is_identity(value: Value) -> str | None:
    node, attrs = value.producer, value.producer.op
    checks = {
        "dropout": lambda: True,
        "reshape": lambda: True,
        "flatten": lambda: True,
        "transpose": lambda: attrs.perm == tuple(range(len(attrs.perm))),
        "pad": lambda: all(a == 0 and b == 0 for a, b in attrs.pads),
        "clip": lambda: attrs.min is None and attrs.max is None,
        "concat": lambda: len(node.inputs) == 1,
        "max_pool2d": lambda: _unit_window(attrs),
        "avg_pool2d": lambda: _unit_window(attrs),
    }
    if not checks[node.op_name]():
        return f"{attrs} is not an identity"
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


IDENTITY_OPS = ("dropout", "reshape", "flatten", "transpose", "pad", "clip", "concat",
                "max_pool2d", "avg_pool2d")
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
