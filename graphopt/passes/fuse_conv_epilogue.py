"""fuse_conv_epilogue: fold what follows a convolution into one `fused_conv2d` node that TVM
compiles to one kernel: a per-channel bias add, the residual add of a ResNet block, and an
activation of `ops.epilogue.EPILOGUE`: relu / relu6 (clip) / leaky_relu / tanh / sigmoid /
hard_sigmoid / hard_swish, or silu (mul(y, sigmoid(y)) where both read the same conv output y).
Rules grow the fused node one step at a time, so conv -> add(residual) -> relu becomes
fused_conv2d[conv + add + relu] in two rewrites."""
from __future__ import annotations

import dataclasses

from .. import ops
from ..ir import Graph, Node, Value
from .manager import PassResult, register_pass
from .pattern import (Match, Rule, any_value, apply_rules, const, is_graph_output,
                      merged_provenance, op, use_count)

CONVS = ("conv2d", "fused_conv2d")
# what a fused_conv2d may end with, as one node after it (a gated one is two: silu's rule)
ACTIVATIONS = tuple(name for name, e in ops.epilogue.EPILOGUE.items() if not e.gated)


def _parts(node: Node) -> tuple[ops.FusedConv2d, list[Value]]:
    """Any conv node as a FusedConv2d op and its inputs (x, w, [b], [residual])."""
    if node.op_name == "fused_conv2d":
        return node.op, list(node.inputs)
    return ops.FusedConv2d(node.op, None, len(node.inputs) == 3, False), list(node.inputs)


def _epilogue_free(value: Value) -> str | None:
    fused, _ = _parts(value.producer)
    if fused.has_residual or fused.activation is not None:
        ending = "an activation" if fused.activation else "a residual add"
        return f"%{value.name} already ends with {ending}"
    return None


def _activation_free(value: Value) -> str | None:
    fused, _ = _parts(value.producer)
    return f"%{value.name} already ends with {fused.activation}" if fused.activation else None


def _emit(graph: Graph, m: Match, fused: ops.FusedConv2d, inputs: list[Value]) -> Value:
    conv = m["conv"]
    if fused.activation is None and not fused.has_residual:   # still a plain convolution
        new_op, inputs = fused.conv, inputs
    else:
        new_op = fused
    node = graph.add_node(new_op, inputs, name=graph.fresh_name(f"{m.root.name}.fused"),
                          provenance=merged_provenance(conv, m.root))
    return node.output


# ---- conv + per-channel constant: becomes the conv's bias ----------------------------------------
def _bias_check(graph: Graph, m: Match) -> str | None:
    fused, inputs = _parts(m["conv"])
    if fused.has_bias and not inputs[2].is_constant:
        return f"the bias %{inputs[2].name} of '{m['conv'].name}' is computed, not a constant"
    channels = m["conv"].output.shape[1]
    if m["c"].shape not in ((1, channels, 1, 1), (channels, 1, 1)):
        return f"%{m['c'].name} {m['c'].type} is not a per-channel bias of {channels} channels"
    if m.root.output.type != m["conv"].output.type:
        return f"the add broadcasts the conv output to {m.root.output.type}"
    return None


def _bias_rewrite(graph: Graph, m: Match) -> Value:
    fused, inputs = _parts(m["conv"])
    add = m["c"].data.reshape(-1)
    if fused.has_bias:
        bias = graph.add_constant(f"{m['conv'].name}.bias_add", (inputs[2].data + add))
        inputs[2] = bias
    else:
        inputs.insert(2, graph.add_constant(f"{m['conv'].name}.bias_add", add.copy()))
        fused = dataclasses.replace(fused, has_bias=True)
    return _emit(graph, m, fused, inputs)


# ---- conv + residual -----------------------------------------------------------------------------
def _residual_check(graph: Graph, m: Match) -> str | None:
    out = m["conv"].output.type
    if m["residual"].type != out or m.root.output.type != out:
        residual = m["residual"]
        return f"the residual %{residual.name} {residual.type} is not of the conv's type {out}"
    return None


def _residual_rewrite(graph: Graph, m: Match) -> Value:
    fused, inputs = _parts(m["conv"])
    return _emit(graph, m, dataclasses.replace(fused, has_residual=True),
                 [*inputs, m["residual"]])


# ---- conv + activation ---------------------------------------------------------------------------
def _activation_rewrite(graph: Graph, m: Match) -> Value:
    fused, inputs = _parts(m["conv"])
    return _emit(graph, m, dataclasses.replace(fused, activation=m.root.op), inputs)


# ---- conv + silu: y * sigmoid(y), both reading the same conv output -----------------------------
def _silu_check(graph: Graph, m: Match) -> str | None:
    y = m["conv"].output
    if m["gate_input"] is not y:
        return f"the sigmoid reads %{m['gate_input'].name}, not the conv output %{y.name}"
    if use_count(graph, y) != 2 or is_graph_output(graph, y):
        return f"%{y.name} has uses besides the sigmoid and the mul; fusing would duplicate it"
    return None


def _silu_rewrite(graph: Graph, m: Match) -> Value:
    fused, inputs = _parts(m["conv"])
    return _emit(graph, m, dataclasses.replace(fused, activation=ops.epilogue.Silu()), inputs)


RULES = [
    Rule("conv + bias", op("add", op(CONVS, name="conv", where=_epilogue_free), const("c"),
                           commutative=True), _bias_rewrite, _bias_check),
    Rule("conv + residual", op("add", op(CONVS, name="conv", where=_epilogue_free),
                               any_value("residual"), commutative=True),
         _residual_rewrite, _residual_check),
    Rule("conv + activation", op(ACTIVATIONS, op(CONVS, name="conv", where=_activation_free)),
         _activation_rewrite),
    Rule("conv + silu", op("mul", op(CONVS, name="conv", shared=True, where=_activation_free),
                           op("sigmoid", any_value("gate_input"), name="sigmoid"),
                           commutative=True), _silu_rewrite, _silu_check),
]


# Before int8 quantization: only the activations a quantized conv applies in its requantize
# step (relu, clip) join the conv; the others (tanh, sigmoid, ...) stay nodes of their own, so
# the conv is quantized and they run on its dequantized output.
INTEGER_RULES = RULES[:2] + [
    Rule("conv + activation", op(ops.epilogue.QUANTIZED_EPILOGUE,
                                 op(CONVS, name="conv", where=_activation_free)),
         _activation_rewrite)]


@register_pass
def fuse_conv_epilogue(graph: Graph) -> PassResult:
    return apply_rules(graph, RULES)


def fuse_conv_integer_epilogue(graph: Graph) -> PassResult:
    """fuse_conv_epilogue for graphs about to be quantized to int8 (`INTEGER_RULES`)."""
    return apply_rules(graph, INTEGER_RULES)
