"""fold_constants, eliminate_dead_code, eliminate_common_subexpressions, remove_identities: one
row per case, hits and near misses; every result verifies and computes what the original does."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt import dsl
from graphopt.passes import PASSES, probe_inputs


def run_pass(name: str, graph, rtol: float | None = None):
    """Run one pass; its result must verify, keep the output names and compute the same."""
    result = PASSES[name](graph)
    go.verify(result.graph)
    report = go.compare(graph, result.graph, probe_inputs(graph), tolerance=rtol)
    assert report.ok, str(report)
    assert result.graph.output_names == graph.output_names
    return result


def op_names(graph) -> list[str]:
    return [n.op_name for n in graph.topological_order()]


def build(fn, shape=(1, 3, 6, 6), dtype="float32"):
    """The graph returning `fn(builder, input)` (a list of tensors)."""
    with dsl.Builder("case", seed=0) as b:
        return b.output(*fn(b, b.input("input", shape, dtype)))


# ---- fold_constants ------------------------------------------------------------------------------
def reshaped_weight(b, x):
    w = b.constant("w", np.arange(12, dtype="float32").reshape(3, 4))
    return [dsl.matmul(dsl.reshape(x, (36, 3)), dsl.transpose(dsl.reshape(w, (4, 3)), (1, 0)))]


def constant_chain(b, x):
    c = b.constant("c", np.full((1, 3, 1, 1), 2.0, "float32"))
    return [x + (c * c + c)]


def half_constant(b, x):
    return [x * b.constant("c", np.float32(3.0))]


def constant_output(b, x):
    c = b.constant("c", np.ones((1, 3, 1, 1), "float32"))
    return [dsl.relu(x), dsl.relu(c, name="const_relu")]


@pytest.mark.parametrize("case, changed, ops_after", [
    (reshaped_weight, True, ["reshape", "matmul"]),
    (constant_chain, True, ["add"]),
    (half_constant, False, ["mul"]),
    (constant_output, False, ["relu", "relu"]),      # a graph output stays a node output
])
def test_fold_constants(case, changed, ops_after):
    result = run_pass("fold_constants", build(case))
    assert result.changed == changed
    assert op_names(result.graph) == ops_after


# ---- eliminate_dead_code -------------------------------------------------------------------------
def test_dead_branches_and_their_constants_are_removed():
    with dsl.Builder("case", seed=0) as b:
        x = b.input("input", (1, 3, 6, 6))
        dsl.conv2d(dsl.sigmoid(x), 4, 3, name="unused_conv")
        g = b.output(dsl.relu(x))
    result = run_pass("eliminate_dead_code", g)
    assert op_names(result.graph) == ["relu"] and not result.graph.constants
    assert result.stats == {"nodes removed": 2, "constants removed": 2}
    assert run_pass("eliminate_dead_code", result.graph).graph is result.graph


# ---- eliminate_common_subexpressions -------------------------------------------------------------
def repeated_relu(b, x):
    return [dsl.relu(x) + dsl.relu(x)]


def swapped_add(b, x):
    y = dsl.sigmoid(x)
    return [dsl.add(x, y) * dsl.add(y, x)]


def equal_constants(b, x):
    return [x * b.constant("a", np.float32(2.0)) + x * b.constant("b", np.float32(2.0))]


def constants_alike_in_sampled_elements(b, x):
    """Equal in the evenly spaced elements that group constants (`sample_digest`), unequal in
    one element between them: compared whole, they stay two."""
    a = np.zeros((16, 3, 6, 6), "float32")
    other = a.copy()
    other.flat[1] = 1.0
    return [x * b.constant("a", a) + x * b.constant("b", other)]


def equal_large_constants(b, x):
    data = np.random.default_rng(0).standard_normal((16, 3, 6, 6)).astype("float32")
    return [x * b.constant("a", data) + x * b.constant("b", data.copy())]


def different_attrs(b, x):
    return [dsl.leaky_relu(x, 0.1) + dsl.leaky_relu(x, 0.2)]


def different_weights(b, x):
    return [dsl.conv2d(x, 2, 1) + dsl.conv2d(x, 2, 1)]


def twin_outputs(b, x):
    return [dsl.relu(x), dsl.relu(x)]


@pytest.mark.parametrize("case, changed, ops_after", [
    (repeated_relu, True, ["relu", "add"]),
    (swapped_add, True, ["sigmoid", "add", "mul"]),
    (equal_constants, True, ["mul", "add"]),
    (equal_large_constants, True, ["mul", "add"]),
    (constants_alike_in_sampled_elements, False, ["mul", "mul", "add"]),
    (different_attrs, False, ["leaky_relu", "leaky_relu", "add"]),
    (different_weights, False, ["conv2d", "conv2d", "add"]),
    (twin_outputs, False, ["relu", "relu"]),          # both names must survive
])
def test_eliminate_common_subexpressions(case, changed, ops_after):
    result = run_pass("eliminate_common_subexpressions", build(case))
    assert result.changed == changed
    assert op_names(result.graph) == ops_after


# ---- remove_identities ---------------------------------------------------------------------------
IDENTITY_CASES = {
    "identity": lambda b, x: [dsl.relu(dsl.identity(x))],
    "dropout": lambda b, x: [dsl.relu(dsl.dropout(x, 0.3))],
    "same-shape reshape": lambda b, x: [dsl.relu(dsl.reshape(x, x.shape))],
    "identity transpose": lambda b, x: [dsl.relu(dsl.transpose(x, (0, 1, 2, 3)))],
    "transpose pair": lambda b, x: [dsl.relu(dsl.transpose(dsl.transpose(x, (0, 2, 3, 1)),
                                                           (0, 3, 1, 2)))],
    "zero pad": lambda b, x: [dsl.relu(dsl.pad(x, (0, 0, 0, 0)))],
    "unbounded clip": lambda b, x: [dsl.relu(dsl.clip(x))],
    "single concat": lambda b, x: [dsl.relu(dsl.concat([x]))],
    "1x1 pool": lambda b, x: [dsl.relu(dsl.max_pool2d(x, 1, 1))],
    "x + 0": lambda b, x: [dsl.relu(0.0 + x)],
    "x * 1": lambda b, x: [dsl.relu(x * 1.0)],
    "x / 1 - 0": lambda b, x: [dsl.relu(x / 1.0 - 0.0)],
    "dropout output": lambda b, x: [dsl.dropout(dsl.relu(x))],
    "identity output": lambda b, x: [dsl.identity(dsl.relu(x))],
}


@pytest.mark.parametrize("case", IDENTITY_CASES)
def test_identities_are_removed(case):
    result = run_pass("remove_identities", build(IDENTITY_CASES[case]))
    assert result.changed and op_names(result.graph) == ["relu"]


def test_reshape_chains_collapse_to_one_reshape():
    g = build(lambda b, x: [dsl.relu(dsl.reshape(dsl.flatten(dsl.reshape(x, (3, 36))), (6, 18)))])
    result = run_pass("remove_identities", g)
    assert op_names(result.graph) == ["reshape", "relu"]
    assert result.graph.topological_order()[0].provenance[-1] == g.topological_order()[2].name


NOT_IDENTITY = {
    "broadcasting + 0": lambda b, x: [dsl.relu(x + b.constant("z", np.zeros((2, 3, 6, 6), "f4")))],
    "x + 1": lambda b, x: [dsl.relu(x + 1.0)],
    "real transpose": lambda b, x: [dsl.relu(dsl.transpose(x, (0, 1, 3, 2)))],
    "real pad": lambda b, x: [dsl.relu(dsl.pad(x, (1, 0, 0, 0)))],
    "input as output": lambda b, x: [dsl.dropout(x)],     # the output needs its own node
    "input returned": lambda b, x: [x],                    # the builder's identity node stays
}


@pytest.mark.parametrize("case", NOT_IDENTITY)
def test_near_identities_stay(case):
    g = build(NOT_IDENTITY[case])
    result = run_pass("remove_identities", g)
    assert not result.changed and result.graph is g
