"""insert_bottleneck: replace convolutions and linear layers by two thinner factors, as a plan
says (`graphopt.compression.factorize` makes the plan; this pass only carries it out).

A KxK conv Cin -> Cout of rank r becomes, in form "reduce", a 1x1 conv Cin -> r (at the input
resolution, no bias, so it maps the zero padding to zero) then the KxK conv r -> Cout with the
layer's stride, padding and dilation; in form "expand", the KxK conv Cin -> r then a 1x1 conv
r -> Cout. A 1x1 conv or a linear layer becomes two of its kind. The second factor takes the
layer's place: it keeps the bias (the plan's, or the layer's own) and a fused_conv2d's epilogue
(residual add, activation), and stands for the layer in provenance and in its output's name."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .. import ops
from ..errors import OptionError
from ..ir import Graph, Node, Value
from .manager import Pass, PassResult
from .pattern import Match, Rule, apply_rules, op

RULE = "insert bottleneck"
LAYER_OPS = ("conv2d", "fused_conv2d", "linear")
FORMS = ("reduce", "expand")


@dataclass(frozen=True, eq=False)
class Bottleneck:
    """The factors of one layer. `first`: reduce [r, Cin, 1, 1], expand [r, Cin, KH, KW],
    linear [r, in]; `second`: reduce [Cout, r, KH, KW], expand [Cout, r, 1, 1], linear
    [out, r]; `bias`: the second factor's bias [Cout] (None: the layer's own, if it has one)."""

    form: str
    first: np.ndarray
    second: np.ndarray
    bias: np.ndarray | None = None

    def __post_init__(self):
        if self.form not in FORMS:
            raise OptionError(f"expected a bottleneck form one of {', '.join(FORMS)}, found "
                              f"{self.form!r}")

    @property
    def rank(self) -> int:
        return self.first.shape[0]

    @property
    def layer_weight_shape(self) -> tuple[int, ...]:
        """The weight shape of the layer these factors replace."""
        cout, cin = self.second.shape[0], self.first.shape[1]
        kernel = self.first.shape[2:] if self.form == "expand" else self.second.shape[2:]
        return (cout, cin, *kernel)


def factor_ops(layer: ops.Op, form: str, has_bias: bool) -> tuple[ops.Op, ops.Op]:
    """The ops of the two factors of `layer` (a conv2d, fused_conv2d or linear op) in `form`;
    the second carries the bias when `has_bias`, and a fused_conv2d's epilogue."""
    if layer.name == "linear":
        return ops.Linear(), ops.Linear()
    conv = layer.conv if layer.name == "fused_conv2d" else layer
    kernel = ops.Conv2d(conv.stride, conv.padding, conv.dilation)
    pointwise = ops.Conv2d()
    first, second = (pointwise, kernel) if form == "reduce" else (kernel, pointwise)
    if layer.name == "fused_conv2d":
        second = dataclasses.replace(layer, conv=second, has_bias=has_bias)
    return first, second


def factor_names(node: Node, form: str) -> tuple[str, str]:
    """Names of the two factors: "reduce" for a 1x1 (or linear) into the rank, "expand" for one
    out of it, "3x3" (the kernel size) for the factor keeping the layer's kernel."""
    kernel = node.inputs[1].shape[2:]
    if node.op_name == "linear" or tuple(kernel) == (1, 1):
        return f"{node.name}.reduce", f"{node.name}.expand"
    kxk = f"{node.name}.{'x'.join(map(str, kernel))}"
    return (f"{node.name}.reduce", kxk) if form == "reduce" else (kxk, f"{node.name}.expand")


def layer_parts(node: Node) -> tuple[Value, Value, Value | None, Value | None]:
    """(x, weight, bias or None, residual or None) of a conv2d, fused_conv2d or linear node."""
    if node.op_name == "fused_conv2d":
        return node.op.split(node.inputs)
    x, weight, *bias = node.inputs
    return x, weight, (bias[0] if bias else None), None


def insert_bottleneck(plan: Mapping[str, Bottleneck]) -> Pass:
    """The pass replacing each layer the plan names (by node name) by its two factors. A named
    layer whose weight does not have the shape the factors replace, or a grouped conv, stays,
    with the reason in the pass's misses."""
    plan = dict(plan)

    def planned(value: Value) -> str | None:
        return None if value.producer.name in plan else f"%{value.name} is not in the plan"

    def check(graph: Graph, m: Match) -> str | None:
        node = m.root
        conv = node.op.conv if node.op_name == "fused_conv2d" else node.op
        if getattr(conv, "groups", 1) != 1:
            return f"{node.op_name} '{node.name}' is grouped (groups {conv.groups})"
        expected = plan[node.name].layer_weight_shape
        found = node.inputs[1].shape
        if tuple(found) != expected:
            return (f"{node.op_name} '{node.name}' has a weight of shape {found}, the plan's "
                    f"factors replace one of shape {expected}")
        return None

    def rewrite(graph: Graph, m: Match) -> Value:
        node, factors = m.root, plan[m.root.name]
        x, weight, bias, residual = layer_parts(node)
        dtype = weight.dtype
        first_name, second_name = factor_names(node, factors.form)
        if factors.bias is not None:
            bias = graph.add_constant(f"{second_name}.bias", factors.bias.astype(dtype))
        first_op, second_op = factor_ops(node.op, factors.form, bias is not None)
        first_w = graph.add_constant(f"{first_name}.weight", factors.first.astype(dtype))
        second_w = graph.add_constant(f"{second_name}.weight", factors.second.astype(dtype))
        hidden = graph.add_node(first_op, [x, first_w], name=first_name).output
        inputs = [hidden, second_w] + [v for v in (bias, residual) if v is not None]
        return graph.add_node(second_op, inputs, name=second_name).output

    rules = [Rule(RULE, op(LAYER_OPS, where=planned), rewrite, check)]

    def insert_bottleneck(graph: Graph) -> PassResult:
        return apply_rules(graph, rules)

    return insert_bottleneck
