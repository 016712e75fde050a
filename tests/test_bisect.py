"""bisect: the first pass, and the first rewrite within it, that breaks equivalence."""
from __future__ import annotations

import graphopt as go
from graphopt import ops
from graphopt.passes import PassResult, bisect
from graphopt.passes.pattern import Rule, any_value, apply_rules, op


def relu_pass(broken_at: str | None):
    """relu -> leaky_relu(0) everywhere (exact), leaky_relu(0.5) at node `broken_at`."""
    def rewrite(graph, m):
        alpha = 0.5 if m.root.name == broken_at else 0.0
        return graph.add_node(ops.LeakyRelu(alpha), [m["x"]], name=graph.fresh_name(m.root.name),
                              provenance=m.root.provenance).output
    rules = [Rule("relu as leaky_relu", op("relu", any_value("x")), rewrite)]

    def relu_as_leaky_relu(graph):
        return apply_rules(graph, rules)
    return relu_as_leaky_relu


def small_resnet():
    return go.zoo.resnet18(image_size=32, num_classes=10)


def test_bisect_finds_the_pass_and_the_rewrite():
    g = small_resnet()
    found = bisect(g, ["fold_batch_norm", relu_pass("layer2.1.relu1"), "fuse_conv_epilogue"])
    assert (found.pass_index, found.pass_name) == (1, "relu_as_leaky_relu")
    assert (found.rule, found.node) == ("relu as leaky_relu", "layer2.1.relu1")
    relus = [n.name for n in g.topological_order() if n.op_name == "relu"]
    assert found.rewrite_index == relus.index("layer2.1.relu1") + 1
    assert not found.report.ok
    assert "rewrite #" in str(found) and "layer2.1.relu1" in str(found)


def test_bisect_returns_none_when_every_pass_is_sound():
    g = small_resnet()
    assert bisect(g, ["fold_batch_norm", relu_pass(None), "fuse_conv_epilogue"]) is None


def test_a_pass_that_breaks_without_recorded_rewrites_is_still_named():
    def scale_weights(graph):
        g = graph.copy()
        w = g.node("fc").inputs[1]
        w.data = w.data * 2
        return PassResult(g, True, {})
    found = bisect(small_resnet(), ["eliminate_dead_code", scale_weights])
    assert (found.pass_index, found.pass_name, found.rewrite_index) == (1, "scale_weights", None)
