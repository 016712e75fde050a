"""Property tests on random small CNNs (convs with and without bias / batch norm / activations,
pads, pools, residual adds, concats, duplicated branches, identities, constant subgraphs, a
linear head, several outputs): after every pass and after the default pipeline the graph
verifies, computes what the original computes, and running it again changes nothing."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphopt as go
from graphopt import dsl
from graphopt.passes import DEFAULT_PIPELINE, PASSES, optimize, probe_inputs


def _conv(b, x, draw, strided=True):
    kernel = draw(st.sampled_from([1, 3]))
    stride = 2 if strided and min(x.shape[2:]) >= 4 and draw(st.booleans()) else 1
    y = dsl.conv2d(x, draw(st.integers(1, 5)), kernel, stride=stride,
                   padding=kernel // 2, bias=draw(st.booleans()))
    if draw(st.booleans()):
        y = dsl.batch_norm(y)
    return _activation(y, draw) if draw(st.booleans()) else y


def _activation(x, draw):
    kind = draw(st.sampled_from(["relu", "relu6", "leaky_relu", "sigmoid"]))
    return {"relu": dsl.relu, "relu6": dsl.relu6, "sigmoid": dsl.sigmoid,
            "leaky_relu": lambda t: dsl.leaky_relu(t, 0.1)}[kind](x)


def _residual(b, x, values, draw):
    partners = [v for v in values if v.shape == x.shape]
    y = dsl.batch_norm(dsl.conv2d(x, x.shape[1], 3, padding=1, bias=draw(st.booleans())))
    y = dsl.add(y, draw(st.sampled_from(partners))) if draw(st.booleans()) else \
        dsl.add(draw(st.sampled_from(partners)), y)
    return dsl.relu(y) if draw(st.booleans()) else y


def _concat(b, x, values, draw):
    same = [v for v in values if v.shape[2:] == x.shape[2:]]
    return dsl.concat([x, _conv(b, draw(st.sampled_from(same)), draw, strided=False)])


def _pad_conv(b, x, values, draw):
    channels = draw(st.integers(1, 4))
    return dsl.conv2d(dsl.pad(x, (2, 1, 1, 1)), channels, 3, bias=draw(st.booleans()))


def _pad_pool(b, x, values, draw):
    if draw(st.booleans()):
        return dsl.max_pool2d(dsl.pad(x, (1, 1, 1, 1), value=-math.inf), 3, 1)
    return dsl.avg_pool2d(dsl.pad(x, (0, 1, 1, 1)), 2, 1)


def _pool(b, x, values, draw):
    if min(x.shape[2:]) >= 2 and draw(st.booleans()):
        return dsl.max_pool2d(x, 2, ceil_mode=draw(st.booleans()))
    return dsl.avg_pool2d(x, 3, 1, padding=1, count_include_pad=draw(st.booleans()))


def _deconv(b, x, values, draw):
    if max(x.shape[2:]) > 5:
        return dsl.relu(x)
    groups = 2 if x.shape[1] % 2 == 0 and draw(st.booleans()) else 1
    return dsl.batch_norm(dsl.conv_transpose2d(x, 2 * groups, 2, stride=2, groups=groups))


def _duplicates(b, x, values, draw):
    return dsl.add(dsl.relu(x), dsl.relu(x))


def _identities(b, x, values, draw):
    y = dsl.dropout(dsl.reshape(x, x.shape))
    y = dsl.transpose(dsl.transpose(y, (0, 2, 3, 1)), (0, 3, 1, 2))
    return y * 1.0 + 0.0


def _constants(b, x, values, draw):
    c = b.constant("c", np.linspace(-1, 1, x.shape[1], dtype="float32").reshape(1, -1, 1, 1))
    return x * (c + c)


def _channel_bias(b, x, values, draw):
    y = dsl.conv2d(x, draw(st.integers(1, 4)), 3, padding=1, bias=False)
    c = b.constant("shift", np.arange(y.shape[1], dtype="float32").reshape(-1, 1, 1))
    return _activation(y + c, draw)


STEPS = [lambda b, x, values, draw: _conv(b, x, draw), _residual, _concat, _pad_conv, _pad_pool,
         _pool, _deconv, _duplicates, _identities, _constants, _channel_bias,
         lambda b, x, values, draw: dsl.batch_norm(x),
         lambda b, x, values, draw: _activation(x, draw)]


@st.composite
def cnn_graphs(draw):
    channels, size = draw(st.integers(1, 4)), draw(st.integers(3, 8))
    with dsl.Builder("random_cnn", seed=draw(st.integers(0, 1000))) as b:
        x = b.input("input", (1, channels, size, size))
        values = [x]
        for step in draw(st.lists(st.sampled_from(STEPS), min_size=3, max_size=8)):
            x = step(b, x, values, draw)
            values.append(x)
        outputs = [x]
        if draw(st.booleans()):
            head = dsl.linear(dsl.flatten(dsl.global_avg_pool2d(x)), 3)
            outputs = [dsl.batch_norm(head) if draw(st.booleans()) else head]
        inner = [v for v in values[1:-1] if v.value.producer is not None]
        if inner and draw(st.booleans()):
            outputs.append(draw(st.sampled_from(inner)))
        return b.output(*outputs)


def assert_equivalent(original, optimized):
    go.verify(optimized)
    assert optimized.output_names == original.output_names
    report = go.compare(original, optimized, probe_inputs(original))
    assert report.ok, f"{report}\n{original!r}\n{optimized!r}"


SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", DEFAULT_PIPELINE)   # the exact passes (not lossy ones)
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(graph=cnn_graphs())
def test_each_pass_keeps_the_graph_equivalent_and_is_idempotent(name, graph):
    result = PASSES[name](graph)
    assert_equivalent(graph, result.graph)
    again = PASSES[name](result.graph)
    assert not again.changed and again.graph is result.graph


@SETTINGS
@given(graph=cnn_graphs())
def test_default_pipeline_keeps_the_graph_equivalent_and_reaches_a_fixed_point(graph):
    res = optimize(graph, check=True)
    assert_equivalent(graph, res.graph)
    assert len(res.graph.nodes) <= len(graph.nodes)
    assert not optimize(res.graph).changed
    assert go.compare(graph, res.graph, probe_inputs(graph), per_layer=True).first_divergent is None
