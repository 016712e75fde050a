"""bisect: the first pass, and the first rewrite within it, that breaks equivalence."""
from __future__ import annotations

import graphopt as go
from graphopt.passes import PassResult, bisect
from test_passes_manager import relu_pass


def small_resnet():
    return go.zoo.resnet18(image_size=32, num_classes=10)


def test_bisect_finds_the_pass_and_the_rewrite():
    g = small_resnet()
    found = bisect(g, ["fold_batch_norm", relu_pass("layer2.1.relu1", 0.5), "fuse_conv_epilogue"])
    assert (found.pass_index, found.pass_name) == (1, "relu_as_leaky_relu")
    assert (found.rule, found.node) == ("relu as leaky_relu", "layer2.1.relu1")
    relus = [n.name for n in g.topological_order() if n.op_name == "relu"]
    assert found.rewrite_index == relus.index("layer2.1.relu1") + 1
    assert not found.report.ok
    assert "rewrite #" in str(found) and "layer2.1.relu1" in str(found)


def test_bisect_returns_none_when_every_pass_is_sound():
    g = small_resnet()
    assert bisect(g, ["fold_batch_norm", relu_pass(None, 0.5), "fuse_conv_epilogue"]) is None


def test_a_pass_that_breaks_without_recorded_rewrites_is_still_named():
    def scale_weights(graph):
        g = graph.copy()
        w = g.node("fc").inputs[1]
        w.data = w.data * 2
        return PassResult(g, True, {})
    found = bisect(small_resnet(), ["eliminate_dead_code", scale_weights])
    assert (found.pass_index, found.pass_name, found.rewrite_index) == (1, "scale_weights", None)
