"""tabulate_quantized_activations: elementwise float chains between a per-tensor dequantize of
uint8 values and a per-tensor quantize become one table_lookup, which computes what the chain
computes in the interpreter exactly, interpreted and compiled; chains it cannot tabulate stay."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt import dsl, ops
from graphopt.passes import PASSES

TABULATE = PASSES["tabulate_quantized_activations"]
SHAPE = (1, 4, 8, 8)      # 256 elements: every uint8 code once


def every_code() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).permutation(256).astype(np.uint8).reshape(SHAPE)}


def chain_graph(body, x_dtype="uint8", scale=np.float32(0.05), zero_point=128,
                out_scale=np.float32(0.03), out_zero_point=20):
    """x (uint8) -> dequantize_linear -> body(float value) -> quantize_linear (uint8)."""
    graph = go.Graph("chain")
    x = graph.add_input("x", go.TensorType(SHAPE, x_dtype))
    s = graph.add_constant("x.scale", np.asarray(scale, np.float32))
    z = graph.add_constant("x.zero_point", np.asarray(zero_point, x_dtype))
    real = graph.add_node(ops.DequantizeLinear(), [x, s, z], name="dequantize").output
    y = body(graph, real)
    ys = graph.add_constant("y.scale", np.asarray(out_scale, np.float32))
    yz = graph.add_constant("y.zero_point", np.asarray(out_zero_point, np.uint8))
    graph.set_outputs([graph.add_node(ops.QuantizeLinear(), [y, ys, yz], name="quantize").output])
    return graph


def silu(graph, real):
    sig = graph.add_node(ops.Sigmoid(), [real], name="silu.sigmoid").output
    return graph.add_node(ops.Mul(), [real, sig], name="silu").output


def hard_swish_plus_half(graph, real):
    y = graph.add_node(ops.HardSwish(), [real], name="hswish").output
    half = graph.add_constant("half", np.asarray(0.5, np.float32))
    return graph.add_node(ops.Add(), [y, half], name="plus_half").output


def op_names(graph) -> list[str]:
    return [n.op_name for n in graph.topological_order()]


@pytest.mark.parametrize("body", [silu, hard_swish_plus_half, lambda g, r: r],
                         ids=["silu", "hard_swish-plus-scalar", "requantize"])
def test_chains_become_one_lookup_that_computes_the_same(body):
    graph = chain_graph(body)
    result = go.optimize(graph)
    assert op_names(result.graph) == ["table_lookup"], op_names(result.graph)
    feeds, out = every_code(), graph.output_names[0]
    assert result.graph.output_names == [out]
    expected = go.interpret(graph, feeds)[out]
    np.testing.assert_array_equal(go.interpret(result.graph, feeds)[out], expected)
    np.testing.assert_array_equal(go.compile(graph, bounds_check=True).run(feeds)[out], expected)


def test_the_lookup_replaces_the_chain_in_a_quantized_model():
    """SiLU after a conv, quantized: the compiled model runs a table_lookup and matches the
    interpreter's run of the quantized graph layer by layer."""
    with dsl.Builder("silu_block", seed=0) as b:
        x = b.input("input", (1, 8, 12, 12))
        y = dsl.silu(dsl.conv2d(x, 16, 3, padding=1))
        graph = b.output(dsl.conv2d(y, 8, 1))
    rng = np.random.default_rng(1)
    feeds = [{"input": rng.standard_normal(x.shape).astype(np.float32)} for _ in range(2)]
    quantized = go.quantize(graph, go.calibrate(graph, feeds)).graph
    model = go.compile(quantized)
    assert "table_lookup" in op_names(model.graph)
    assert not {"sigmoid", "mul"} & set(op_names(model.graph))
    assert go.compare(quantized, model, feeds[0]).ok


def per_channel_dequantize():
    graph = chain_graph(silu)
    node = next(n for n in graph.nodes if n.op_name == "dequantize_linear")
    scale = graph.add_constant("x.scales", np.full(SHAPE[1], 0.05, np.float32))
    zero_point = graph.add_constant("x.zero_points", np.full(SHAPE[1], 128, np.uint8))
    real = graph.add_node(ops.DequantizeLinear(axis=1), [node.inputs[0], scale, zero_point],
                          name="dequantize_per_channel").output
    graph.replace_all_uses(node.output, real)
    graph.remove_node(node)
    return graph


def read_elsewhere():
    graph = chain_graph(silu)
    sig = next(n for n in graph.nodes if n.op_name == "sigmoid").output
    graph.set_outputs([*graph.outputs, sig])
    return graph


def two_sources():
    def body(graph, real):
        other = graph.add_input("other", go.TensorType(SHAPE, "float32"))
        return graph.add_node(ops.Mul(), [real, other], name="times_other").output
    return chain_graph(body)


def per_channel_constant():
    def body(graph, real):
        bias = graph.add_constant("bias", np.ones((1, SHAPE[1], 1, 1), np.float32))
        return graph.add_node(ops.Add(), [real, bias], name="plus_bias").output
    return chain_graph(body)


def softmax_inside():
    return chain_graph(lambda g, r: g.add_node(ops.Softmax(axis=1), [r], name="softmax").output)


@pytest.mark.parametrize("make", [per_channel_dequantize, read_elsewhere, two_sources,
                                  per_channel_constant, softmax_inside,
                                  lambda: chain_graph(silu, x_dtype="int8", zero_point=0)],
                         ids=["per-channel-scale", "sigmoid-also-an-output", "two-sources",
                              "per-channel-constant", "softmax-not-elementwise", "int8-input"])
def test_chains_it_cannot_tabulate_stay(make):
    graph = make()
    result = TABULATE(graph)
    assert not result.changed
    assert "table_lookup" not in op_names(result.graph)


def test_kept_nodes_stay_in_the_quantized_graph():
    """go.quantize's keep list: its chains stay float nodes of the quantized graph."""
    from graphopt.passes.tabulate_quantized_activations import tabulating
    graph = chain_graph(silu)
    result = tabulating(frozenset({"silu"}))(graph)
    assert not result.changed
    reasons = {r for misses in result.stats["misses"].values() for _, r in misses}
    assert reasons == {"silu is kept in float32 (keep list)"}, reasons
    assert tabulating(frozenset({"relu"}))(graph).changed


def float_chain_graph(body, readers=1):
    """x (uint8) -> dequantize_linear -> body(float value), the float result a graph output
    and, with `readers` 2, also scaled by another input."""
    graph = go.Graph("float_chain")
    x = graph.add_input("x", go.TensorType(SHAPE, "uint8"))
    s = graph.add_constant("x.scale", np.asarray(0.05, np.float32))
    z = graph.add_constant("x.zero_point", np.asarray(128, np.uint8))
    real = graph.add_node(ops.DequantizeLinear(), [x, s, z], name="dequantize").output
    y = body(graph, real)
    outputs = [y]
    if readers == 2:
        other = graph.add_input("other", go.TensorType(SHAPE, "float32"))
        outputs.append(graph.add_node(ops.Mul(), [y, other], name="scaled").output)
    graph.set_outputs(outputs)
    return graph


@pytest.mark.parametrize("readers", [1, 2], ids=["output", "output-and-scaled"])
def test_float_chains_with_a_costly_op_become_a_table_of_floats(readers):
    """A SiLU whose float result is read as it is (a graph output, another product): one
    lookup in a float32 table, exact against the interpreter, interpreted and compiled."""
    graph = float_chain_graph(silu, readers)
    result = TABULATE(graph)
    lookups = [n for n in result.graph.nodes if n.op_name == "table_lookup"]
    assert len(lookups) == 1 and lookups[0].output.dtype == "float32"
    assert not {"sigmoid", "dequantize_linear"} & set(op_names(result.graph))
    feeds = every_code()
    if readers == 2:
        feeds["other"] = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    expected = go.interpret(graph, feeds)
    for got in (go.interpret(result.graph, feeds),
                go.compile(result.graph, bounds_check=True).run(feeds)):
        for name in graph.output_names:
            np.testing.assert_array_equal(got[name], expected[name])


def test_cheap_float_chains_stay():
    """A dequantize and a relu cost less than a lookup: no table."""
    relu = lambda g, r: g.add_node(ops.Relu(), [r], name="relu").output  # noqa: E731
    assert not TABULATE(float_chain_graph(relu)).changed
