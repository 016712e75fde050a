"""fold_pad and fold_batch_norm: hits, near misses, provenance, and exactness in float64."""
from __future__ import annotations

import math

import numpy as np
import pytest

import graphopt as go
from graphopt import dsl
from test_passes_cleanup import build as build_case
from test_passes_cleanup import op_names, run_pass


def build(fn, shape=(1, 4, 7, 7), dtype="float32"):
    return build_case(fn, shape, dtype)


# ---- fold_pad ------------------------------------------------------------------------------------
PAD_HITS = {
    "conv": (lambda b, x: [dsl.conv2d(dsl.pad(x, (1, 2, 0, 1)), 3, 3, padding=1, name="c")],
             "conv2d", (2, 3, 1, 2)),
    "max pool": (lambda b, x: [dsl.max_pool2d(dsl.pad(x, (1, 1, 1, 1), value=-math.inf), 3, 2,
                                              name="c")], "max_pool2d", (1, 1, 1, 1)),
    "avg pool": (lambda b, x: [dsl.avg_pool2d(dsl.pad(x, (1, 0, 1, 0)), 2, 1, name="c")],
                 "avg_pool2d", (1, 0, 1, 0)),
}


@pytest.mark.parametrize("case", PAD_HITS)
def test_fold_pad_into_the_consumers_padding(case):
    fn, op_name, padding = PAD_HITS[case]
    g = build(fn)
    result = run_pass("fold_pad", g)
    [node] = result.graph.nodes
    assert node.op_name == op_name and node.op.padding == padding
    assert node.provenance == (g.nodes[0].name, "c")


def test_pad_shared_with_another_user_is_kept_for_it():
    def case(b, x):
        padded = dsl.pad(x, (1, 1, 1, 1))
        return [dsl.conv2d(padded, 4, 3, padding=1) + dsl.sigmoid(padded)]
    result = run_pass("fold_pad", build(case))
    assert sorted(op_names(result.graph)) == ["add", "conv2d", "pad", "sigmoid"]
    conv = next(n for n in result.graph.nodes if n.op_name == "conv2d")
    assert conv.op.padding == (2, 2, 2, 2) and conv.inputs[0].name == "input"


PAD_MISSES = {
    "non-zero fill into conv": lambda b, x: [dsl.conv2d(dsl.pad(x, (1, 1, 1, 1), value=1.0), 2, 3)],
    "zero fill into max pool": lambda b, x: [dsl.max_pool2d(dsl.pad(x, (1, 1, 1, 1)), 3)],
    "channel pad": lambda b, x: [dsl.conv2d(dsl.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0))), 2, 3)],
    "pad wider than the window": lambda b, x: [dsl.max_pool2d(
        dsl.pad(x, (2, 2, 2, 2), value=-math.inf), 2)],
    "avg pool not counting its own padding": lambda b, x: [dsl.avg_pool2d(
        dsl.pad(x, (1, 1, 1, 1)), 3, 1, padding=1)],
}


@pytest.mark.parametrize("case", PAD_MISSES)
def test_fold_pad_near_misses(case):
    g = build(PAD_MISSES[case])
    result = run_pass("fold_pad", g)
    assert result.graph is g
    assert result.stats["misses"]["pad into padding"]


# ---- fold_batch_norm -----------------------------------------------------------------------------
BN_HITS = {
    "conv": lambda b, x: [dsl.batch_norm(dsl.conv2d(x, 6, 3, padding=1, name="layer"), name="bn")],
    "conv without bias": lambda b, x: [dsl.batch_norm(dsl.conv2d(x, 6, 3, bias=False, name="layer"),
                                                      name="bn")],
    "grouped conv": lambda b, x: [dsl.batch_norm(dsl.conv2d(x, 8, 3, groups=2, name="layer"),
                                                 name="bn")],
    "depthwise conv": lambda b, x: [dsl.batch_norm(dsl.conv2d(x, 4, 3, groups=4, name="layer"),
                                                   name="bn")],
    "conv_transpose": lambda b, x: [dsl.batch_norm(dsl.conv_transpose2d(x, 6, 3, stride=2,
                                                                        name="layer"), name="bn")],
    "grouped conv_transpose": lambda b, x: [dsl.batch_norm(
        dsl.conv_transpose2d(x, 6, 2, stride=2, groups=2, name="layer"), name="bn")],
    "linear": lambda b, x: [dsl.batch_norm(dsl.linear(dsl.flatten(x), 5, name="layer"), name="bn")],
}


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-5), ("float64", 1e-12)])
@pytest.mark.parametrize("case", BN_HITS)
def test_fold_batch_norm(case, dtype, rtol):
    g = build(BN_HITS[case], dtype=dtype)
    result = run_pass("fold_batch_norm", g, rtol=rtol)
    assert "batch_norm" not in op_names(result.graph)
    layer = next(n for n in result.graph.nodes if n.op_name != "flatten")
    assert layer.provenance == ("layer", "bn")
    assert result.graph.num_params() <= g.num_params() + 6     # a bias may appear


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("case", ["conv", "grouped conv_transpose", "linear"])
def test_folded_weights_are_float64_products_rounded_once(case, dtype):
    g = build(BN_HITS[case], dtype=dtype)
    result = run_pass("fold_batch_norm", g, rtol=1e-2)
    layer, bn = g.node("layer"), g.node("bn")
    gamma, _, _, var = (v.data.astype(np.float64) for v in bn.inputs[1:])
    scale = gamma / np.sqrt(var + bn.op.epsilon)
    weight = layer.inputs[1].data.astype(np.float64)
    if layer.op_name == "conv_transpose2d":      # [in, out / groups, kh, kw]
        groups, (cin, per_group) = layer.op.groups, weight.shape[:2]
        expected = (weight.reshape(groups, cin // groups, per_group, *weight.shape[2:])
                    * scale.reshape(groups, 1, per_group, 1, 1)).reshape(weight.shape)
    else:
        expected = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    folded = next(n for n in result.graph.nodes if n.op_name == layer.op_name)
    assert folded.inputs[1].dtype == dtype
    np.testing.assert_array_equal(folded.inputs[1].data, expected.astype(dtype))


BN_MISSES = {
    "conv output used twice": lambda b, x: (lambda c: [dsl.batch_norm(c) + c])(dsl.conv2d(x, 4, 1)),
    "batch_norm after relu": lambda b, x: [dsl.batch_norm(dsl.relu(dsl.conv2d(x, 4, 1)))],
    "computed weight": lambda b, x: [dsl.batch_norm(b.apply(go.ops.Conv2d(), [
        x, dsl.reshape(dsl.concat([dsl.global_avg_pool2d(x)] * 4), (4, 4, 1, 1))]))],
    "linear on 3-d input": lambda b, x: [dsl.batch_norm(dsl.linear(dsl.reshape(x, (1, 4, 49)), 3))],
}


@pytest.mark.parametrize("case", BN_MISSES)
def test_fold_batch_norm_near_misses(case):
    g = build(BN_MISSES[case])
    result = run_pass("fold_batch_norm", g)
    assert result.graph is g
    assert bool(result.stats["misses"]) == (case != "batch_norm after relu")   # near misses only


def test_fold_batch_norm_leaves_the_original_weights_alone():
    g = build(BN_HITS["conv"])
    weight = g.node("layer").inputs[1].data.copy()
    run_pass("fold_batch_norm", g)
    np.testing.assert_array_equal(g.node("layer").inputs[1].data, weight)
