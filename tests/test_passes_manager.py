"""PassManager and optimize: verification after every pass, the check=True probe comparison, the
report, fixed points, and a deliberately broken pass being caught."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt import PassError, dsl, ops
from graphopt.passes import (DEFAULT_PIPELINE, PASSES, PassManager, PassResult, optimize,
                             probe_inputs)
from graphopt.passes.pattern import Rule, any_value, apply_rules, op


def small_resnet():
    return go.zoo.resnet18(image_size=32, num_classes=10)


def relu_pass(broken_at: str | None, alpha: float):
    """A deliberately broken pass: relu -> leaky_relu(0) everywhere (exact), except at node
    `broken_at`, which gets leaky_relu(alpha)."""
    def rewrite(graph, m):
        a = alpha if m.root.name == broken_at else 0.0
        return graph.add_node(ops.LeakyRelu(a), [m["x"]], name=graph.fresh_name(m.root.name),
                              provenance=m.root.provenance).output
    rules = [Rule("relu as leaky_relu", op("relu", any_value("x")), rewrite)]

    def relu_as_leaky_relu(graph):
        return apply_rules(graph, rules)
    return relu_as_leaky_relu


def test_default_pipeline_on_resnet_reports_every_pass():
    g = small_resnet()
    res = optimize(g, check=True)
    assert [r.name for r in res.records[:len(DEFAULT_PIPELINE)]] == list(DEFAULT_PIPELINE)
    assert len(res.graph.nodes) == 24 and len(g.nodes) == 69
    report = res.report
    for what in ("fold_batch_norm", "69 -> 49", "layer + batch_norm x20", "conv + residual x8",
                 "max err"):
        assert what in report
    fold = next(r for r in res.records if r.name == "fold_batch_norm")
    assert fold.max_error is not None and fold.max_error < 1e-6
    assert fold.params[1] < fold.params[0] and fold.macs[0] == fold.macs[1]
    last_round = [r for r in res.records if r.round == res.records[-1].round]
    assert not any(r.changed for r in last_round)          # stopped at a fixed point
    # the confirming round is one line, not a row per pass
    assert "round 2: no pass changed the graph" in report
    assert report.count("fold_batch_norm") == 1


def test_optimize_does_not_touch_its_input_and_twice_changes_nothing():
    g = small_resnet()
    before = repr(g)
    once = optimize(g).graph
    assert repr(g) == before
    twice = optimize(once)
    assert not twice.changed and twice.graph is once


def test_check_catches_a_broken_pass_and_names_the_node():
    g = small_resnet()
    broken = relu_pass("layer2.1.relu1", 0.5)
    with pytest.raises(PassError) as info:
        optimize(g, ["fold_batch_norm", broken, "fuse_conv_epilogue"], check=True)
    err = info.value
    assert "pass 'relu_as_leaky_relu' changed the result" in str(err)
    assert "first divergent layer 'layer2.1.relu1'" in str(err)
    assert err.op == "leaky_relu" and err.node.startswith("layer2.1.relu1")
    # The same pass with an exact rewrite everywhere passes the check.
    optimize(g, ["fold_batch_norm", relu_pass("none", 0.5)], check=True)


def test_without_check_a_broken_pass_goes_unnoticed():
    g = small_resnet()
    res = optimize(g, [relu_pass("layer2.1.relu1", 0.5)])
    assert res.records[0].max_error is None
    assert not go.compare(g, res.graph, probe_inputs(g)).ok


def test_an_invalid_graph_is_reported_with_the_pass_name():
    def corrupt(graph):
        g = graph.copy()
        relu = next(n for n in g.nodes if n.op_name == "relu")
        relu.outputs[0].type = relu.outputs[0].type.with_shape((1, 1))
        return PassResult(g, True, {})
    with pytest.raises(PassError, match="pass 'corrupt' produced an invalid graph") as info:
        PassManager([corrupt]).run(small_resnet())
    assert info.value.op == "relu"


def test_unknown_pass_names_are_listed():
    with pytest.raises(go.OptionError,
                       match="no pass named 'fold_everything'; known passes: .*fold"):
        optimize(small_resnet(), ["fold_everything"])


@pytest.mark.parametrize("typed, meant", [
    ("fold_bn", "fold_batch_norm"),            # initials of a run of words, not fold_pad
    ("bn", "fold_batch_norm"),
    ("fold_batchnorm", "fold_batch_norm"),     # words run together
    ("dce", "eliminate_dead_code"),            # "dead code elimination": the verb last
    ("cse", "eliminate_common_subexpressions"),
    ("fold_const", "fold_constants"),          # a prefix
    ("fuse_conv", "fuse_conv_epilogue"),
    ("remove_identity", "remove_identities"),  # a misspelling: difflib
    ("fold_pd", "fold_pad"),
    ("quantize_everything", None),
])
def test_an_unknown_pass_name_suggests_the_pass_meant(typed, meant):
    from graphopt.passes.manager import suggest_pass
    assert suggest_pass(typed) == meant
    hint = f"did you mean '{meant}'?" if meant else "known passes"
    with pytest.raises(go.OptionError, match=f"no pass named '{typed}'; {hint}"):
        optimize(small_resnet(), [typed])


def test_the_default_pipeline_names_registered_passes():
    assert set(DEFAULT_PIPELINE) <= set(PASSES)


def test_check_uses_the_given_inputs():
    with dsl.Builder("g") as b:
        x = b.input("input", (1, 3))
        g = b.output(dsl.relu(x))
    clamp_negative = [Rule("relu as clip", op("relu", any_value("x")),
                           lambda graph, m: graph.add_node(ops.Clip(0.0, 1.0), [m["x"]]).output)]

    def relu_to_clip(graph):
        return apply_rules(graph, clamp_negative)
    small = {"input": np.array([[-1.0, 0.25, 0.5]], "float32")}
    optimize(g, [relu_to_clip], check=True, inputs=small)      # equal on these inputs
    with pytest.raises(PassError, match="differs by 1"):
        optimize(g, [relu_to_clip], check=True, inputs={"input": small["input"] + 1.5})


@pytest.mark.slow
def test_the_issue_example_on_resnet50():
    g = go.zoo.resnet50(seed=0)
    res = go.optimize(g, passes=["fold_constants", "eliminate_dead_code", "fold_batch_norm",
                                 "fuse_conv_epilogue"], check=True)
    assert "fuse_conv_epilogue" in res.report
    fused = [n for n in res.graph.nodes if n.op_name == "fused_conv2d"]
    assert len(fused) == 49 and sum(n.op.has_residual for n in fused) == 16
    rep = go.compare(g, res.graph, probe_inputs(g), per_layer=True)
    assert rep.ok and rep.first_divergent is None
