"""The pattern matcher and rule engine: captures, the reasons a match fails, shared and
commutative patterns, output names, the rewrite budget and the convergence guard."""
from __future__ import annotations

import numpy as np
import pytest

from graphopt import PassError, dsl, ops
from graphopt.passes.pattern import (Miss, Rule, any_value, apply_rules, const, match, op,
                                     rewrite_limit)


def conv_relu_graph(extra_user: bool = False):
    with dsl.Builder("g", seed=0) as b:
        x = b.input("input", (1, 2, 6, 6))
        c = dsl.conv2d(x, 3, 3, padding=1, name="conv")
        y = dsl.relu(c, name="relu")
        if extra_user:
            y = dsl.add(y, dsl.sigmoid(c, name="side"), name="join")
        return b.output(y)


CONV_RELU = op("relu", op("conv2d", any_value("x"), const("w"), name="conv"), name="act")


def test_match_captures_nodes_and_values():
    g = conv_relu_graph()
    m = match(g, CONV_RELU, g.node("relu"))
    assert m["act"] is g.node("relu") and m["conv"] is g.node("conv")
    assert m["x"] is g.inputs[0] and m["w"].is_constant
    assert [n.name for n in m.nodes] == ["relu", "conv"]


@pytest.mark.parametrize("pattern, reason", [
    (op("relu", op("max_pool2d")), "is produced by conv2d, expected max_pool2d"),
    (op("relu", op("conv2d", const("x"))), "%input is not a constant"),
    (op("relu", op("conv2d", op("pad"))), "is a graph input, expected the output of pad"),
    (op("relu", op("conv2d", any_value(), any_value(), any_value(), any_value())),
     "has 3 inputs, expected at least 4"),
    (op("relu", op("conv2d", where=lambda v: "never")), "never"),
])
def test_a_failed_match_says_why(pattern, reason):
    g = conv_relu_graph()
    with pytest.raises(Miss, match=reason):
        match(g, pattern, g.node("relu"))


def test_inner_node_with_a_second_user_does_not_match_unless_shared():
    g = conv_relu_graph(extra_user=True)
    with pytest.raises(Miss, match=r"%conv\w* \(conv2d\) has 2 uses"):
        match(g, CONV_RELU, g.node("relu"))
    shared = op("relu", op("conv2d", name="conv", shared=True))
    assert match(g, shared, g.node("relu"))["conv"] is g.node("conv")


def test_commutative_pattern_tries_both_operand_orders():
    with dsl.Builder("g") as b:
        x = b.input("input", (1, 2, 4, 4))
        g = b.output(dsl.add(dsl.relu(x, name="r"), dsl.sigmoid(x, name="s"), name="sum"))
    ordered = op("add", op("sigmoid", name="s"), op("relu", name="r"))
    with pytest.raises(Miss):
        match(g, ordered, g.node("sum"))
    m = match(g, op("add", op("sigmoid", name="s"), op("relu", name="r"), commutative=True),
              g.node("sum"))
    assert m["s"] is g.node("s") and m["r"] is g.node("r")


def _relu_to_clip(graph, m):
    return graph.add_node(ops.Clip(0.0, None), [m["x"]], name=graph.fresh_name(m.root.name),
                          provenance=m.root.provenance).output


RELU_TO_CLIP = [Rule("relu as clip", op("relu", any_value("x")), _relu_to_clip)]


def test_rules_leave_the_input_graph_alone_and_keep_output_names():
    g = conv_relu_graph()
    result = apply_rules(g, RELU_TO_CLIP)
    assert result.changed and result.stats["rewrites"] == {"relu as clip": 1}
    assert [n.op_name for n in g.nodes] == ["conv2d", "relu"]          # untouched
    assert [n.op_name for n in result.graph.nodes] == ["conv2d", "clip"]
    assert result.graph.output_names == ["output"]
    assert result.graph.nodes[-1].provenance == ("relu",)


def test_no_applicable_rule_returns_the_same_graph_with_the_near_misses():
    g = conv_relu_graph(extra_user=True)
    rules = [Rule("pool+relu", op("relu", op("max_pool2d")), _relu_to_clip),
             Rule("conv+relu", op("relu", op("conv2d")), _relu_to_clip)]
    result = apply_rules(g, rules)
    assert result.graph is g and not result.changed
    conv = g.node("conv").output.name
    # A different op kind is the ordinary case; only the near miss is reported.
    assert result.stats["misses"] == {"conv+relu": [
        ("relu", f"%{conv} (conv2d) has 2 uses; fusing would duplicate or lose it")]}


def test_a_check_can_refuse_a_match_with_a_reason():
    g = conv_relu_graph()
    rules = [Rule("relu as clip", op("relu", any_value("x")), _relu_to_clip,
                  check=lambda graph, m: "not today")]
    assert apply_rules(g, rules).stats["misses"]["relu as clip"] == [("relu", "not today")]


def test_rewrite_limit_stops_after_k_rewrites_and_logs_them():
    with dsl.Builder("g") as b:
        x = b.input("input", (1, 4))
        g = b.output(dsl.relu(dsl.relu(dsl.relu(x, name="a"), name="b"), name="c"))
    with rewrite_limit(2) as log:
        result = apply_rules(g, RELU_TO_CLIP)
    assert log.entries == [("relu as clip", "a"), ("relu as clip", "b")]
    assert [n.op_name for n in result.graph.topological_order()] == ["clip", "clip", "relu"]


def test_rules_without_a_fixed_point_are_reported():
    g = conv_relu_graph()
    flip = [Rule("relu again", op("relu", any_value("x")),
                 lambda graph, m: graph.add_node(ops.Relu(), [m["x"]]).output)]
    with pytest.raises(PassError, match="still rewrite after"):
        apply_rules(g, flip)


def test_rewritten_graph_computes_the_same():
    import graphopt as go
    g = conv_relu_graph()
    x = {"input": np.random.default_rng(0).standard_normal((1, 2, 6, 6)).astype("float32")}
    assert go.compare(g, apply_rules(g, RELU_TO_CLIP).graph, x).ok
