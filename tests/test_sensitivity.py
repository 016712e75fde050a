"""go.sensitivity and go.quantize(..., budget=): a layer made fragile on purpose (one outlier
weight that a per-tensor scale spends its whole range on) is named first, by output error and by
a top-1 metric, and the budget search keeps exactly it in float32."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

import graphopt as go
from graphopt import dsl
from graphopt.quantization.sensitivity import BudgetResult


def fragile_mlp():
    """linear(32 -> 24) - relu - linear(24 -> 24) - relu - linear(24 -> 10); fc2 has one weight
    1000x the others, on an input that is always 0 (act1's channel 5): harmless in float, but a
    per-tensor scale spends its range on it and rounds fc2's other weights to 0."""
    rng = np.random.default_rng(4)
    with dsl.Builder("fragile_mlp", seed=5) as b:
        x = b.input("input", (16, 32))
        bias = np.zeros(24, np.float32)
        bias[5] = -1e3
        h = dsl.relu(dsl.linear(x, 24, name="fc1", bias_value=bias), name="act1")
        w = (rng.standard_normal((24, 24)) * 0.2).astype(np.float32)
        w[3, 5] = 200.0
        h = dsl.relu(dsl.linear(h, 24, name="fc2", weight=w), name="act2")
        return b.output(dsl.linear(h, 10, name="fc3"))


def batches(graph, count: int, seed: int):
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal(graph.inputs[0].shape).astype(np.float32)}
            for _ in range(count)]


@lru_cache(maxsize=None)
def setup():
    graph = fragile_mlp()
    calib = go.calibrate(graph, batches(graph, 8, seed=0))
    held_out = batches(graph, 3, seed=1)
    labels = np.concatenate([go.interpret(graph, b)["output"].argmax(1) for b in held_out])
    return graph, calib, held_out, labels


def top1(labels):
    return lambda outputs: float((outputs["output"].argmax(1) == labels).mean())


def test_the_fragile_layer_is_named_first():
    graph, calib, held_out, labels = setup()
    table = go.sensitivity(graph, calib, held_out, per_channel=False)
    assert table.names()[0] == "fc2" and len(table.layers) == 3
    assert table.layers[0].stands_for == ("fc2", "act2")
    errors = [row.error for row in table.layers]
    assert errors == sorted(errors, reverse=True) and errors[0] > 5 * errors[1]
    # quantizing every layer is at least as bad as the worst alone
    assert table.quantized.error >= 0.5 * errors[0]
    assert table.samples == 48 and table.baseline is None
    text = str(table)
    assert "fc2" in text and "stands for" in text and "metric" not in text
    # per output channel, the outlier only costs its own row (fc2 stays the most sensitive)
    per_channel = go.sensitivity(graph, calib, held_out)
    assert per_channel.layers[[r.layer for r in per_channel.layers].index("fc2")].error < \
        errors[0] / 2


def test_a_metric_orders_by_its_drop():
    graph, calib, held_out, labels = setup()
    progress = []
    table = go.sensitivity(graph, calib, held_out, metric=top1(labels), per_channel=False,
                           progress=lambda i, name: progress.append((i, name)))
    assert table.baseline == 1.0
    assert [row.layer for row in table.layers][0] == "fc2"
    drops = [row.drop for row in table.layers]
    assert drops == sorted(drops, reverse=True) and drops[0] > 0.05
    assert [i for i, _ in progress] == [0, 1, 2]
    assert "drop" in str(table)
    # a layer in the keep list is not measured
    kept = go.sensitivity(graph, calib, held_out[0], keep=["fc1"])
    assert kept.names() and "fc1" not in kept.names() and kept.samples == 16


def test_budget_keeps_the_fewest_layers():
    graph, calib, held_out, labels = setup()
    everything = go.quantize(graph, calib, per_channel=False)
    table = go.sensitivity(graph, calib, held_out, per_channel=False)
    # between the error of quantizing everything but fc2 and that of everything
    budget = (table.layers[1].error + table.quantized.error) / 2
    res = go.quantize(graph, calib, per_channel=False, budget=budget, eval_inputs=held_out)
    assert isinstance(res, BudgetResult) and res.kept == ("fc2",)
    assert res.evaluation.error <= budget < table.quantized.error
    ops = [n.op_name for n in res.graph.nodes]
    assert ops.count("qlinear_conv2d") == 2 and ops.count("linear") == 1
    assert "kept in float32 for it: fc2 [fc2, act2]" in res.report and "met with" in res.report
    for feeds in held_out:
        assert go.compare(graph, res.graph, feeds).ok
    # a budget every layer meets keeps none
    loose = go.quantize(graph, calib, per_channel=False, budget=1.0, eval_inputs=held_out)
    assert loose.kept == () and loose.sensitivity is None
    assert [n.op_name for n in loose.graph.nodes] == [n.op_name for n in everything.graph.nodes]
    # with a metric: no top-1 drop at all
    exact = go.quantize(graph, calib, per_channel=False, budget=0.0, eval_inputs=held_out,
                        metric=top1(labels))
    assert exact.kept[:1] == ("fc2",) and exact.evaluation.metric == 1.0
    assert "metric drop <= 0" in exact.report


@pytest.mark.parametrize("call, match", [
    (lambda g, c, e: go.quantize(g, c, budget=0.1), "needs eval_inputs"),
    (lambda g, c, e: go.quantize(g, c, budget=-1, eval_inputs=e), "budget to be a finite"),
    (lambda g, c, e: go.quantize(g, c, budget="1%", eval_inputs=e), "budget to be a finite"),
    (lambda g, c, e: go.quantize(g, "float16", budget=0.1), "applies to int8"),
    (lambda g, c, e: go.sensitivity(g, c, e, metric="top1"), "metric to be a callable"),
    (lambda g, c, e: go.sensitivity(g, c, e, metric=lambda out: "high"), "return a number"),
    (lambda g, c, e: go.sensitivity(g, c, e, metric=lambda out: float("nan")), "finite"),
    (lambda g, c, e: go.sensitivity(g, c, e, progress=3), "progress"),
    (lambda g, c, e: go.sensitivity(g, c, e, keep=["fc9"]), "keep names"),
])
def test_bad_options_are_option_errors(call, match):
    graph, calib, held_out, _ = setup()
    with pytest.raises(go.OptionError, match=match):
        call(graph, calib, held_out)


@pytest.mark.parametrize("inputs, match", [
    ([], "at least one evaluation batch"),
    (3, "found int"),
    ([{"input": np.zeros((16, 32), np.float32)}, "x"], "batch 1"),
])
def test_bad_evaluation_inputs_are_input_errors(inputs, match):
    graph, calib, _, _ = setup()
    with pytest.raises(go.InputError, match=match):
        go.sensitivity(graph, calib, inputs)
