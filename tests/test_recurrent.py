"""lstm and gru beyond the op table (tests/test_ops.py checks them against onnxruntime): bad
attributes and shapes named by node and op, half precision, the DSL layers and CUDA lowering."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt import ops
from graphopt.errors import GraphoptError, ShapeError
from graphopt.frontends import dsl
from graphopt.ir import TensorType


def normal(*shape, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 0.5).astype(np.float32)


def lstm_graph(x_shape=(4, 2, 3), hidden=5, dtype="float32", **options):
    with dsl.Builder("lstm", seed=1) as b:
        x = b.input("x", x_shape, dtype)
        y, h, c = dsl.lstm(x, hidden, name="lstm", **options)
        return b.output(y, h, c, names=["y", "y_h", "y_c"])


@pytest.mark.parametrize("build, error, message", [
    (lambda: ops.Lstm("sideways"), ShapeError, "expected direction among forward, reverse, "
                                               "bidirectional, found 'sideways'"),
    (lambda: ops.Gru(activations=(("Sigmoid", 0, 0),)), ShapeError,
     "expected 2 activations \\(one per function and direction\\), found 1"),
    (lambda: ops.Lstm(activations=(("Swish", 0, 0),) * 3), ShapeError,
     "expected an activation among Sigmoid, Tanh, Relu"),
    (lambda: ops.Lstm(clip=0.0), ShapeError, "expected a positive clip, found 0.0"),
    (lambda: ops.Gru(layout=2), ShapeError, "expected layout 0 or 1, found 2"),
    (lambda: ops.ArgMax(keepdims=2), ShapeError, "expected True or False for keepdims"),
], ids=["direction", "activation-count", "activation-name", "clip", "layout", "keepdims"])
def test_bad_attributes_are_shape_errors(build, error, message):
    with pytest.raises(error, match=message):
        build()


@pytest.mark.parametrize("options, message", [
    (dict(x_shape=(4, 3)), r"node 'lstm' \(lstm\): expected X of rank 3, found float32\[4,3\]"),
    (dict(sequence_lens=(4, 5)), r"node 'lstm' \(lstm\): expected sequence_lens of 2 lengths in "
                                 r"\[1, 4\], found \[4, 5\]"),
    (dict(sequence_lens=(4,)), r"expected sequence_lens of 2 lengths"),
    (dict(dtype="int32"), r"node 'lstm' \(lstm\): expected a floating-point input, found "
                          r"int32\[4,2,3\]"),
], ids=["rank", "length-past-the-sequence", "lengths-per-batch", "integer-input"])
def test_dsl_shape_errors_name_the_node_and_op(options, message):
    with pytest.raises(ShapeError, match=message):
        lstm_graph(**options)


def test_wrong_initial_state_and_shared_weight_shapes_are_named():
    with pytest.raises(ShapeError, match=r"node 'lstm' \(lstm\): expected initial_h of shape "
                                         r"\(1, 2, 5\), found float32\[1, ?2, ?4\]"):
        with dsl.Builder("bad", seed=0) as b:
            x = b.input("x", (4, 2, 3))
            dsl.lstm(x, 5, initial_h=dsl.parameter("h0", (1, 2, 4)), name="lstm")
            b.output(x)
    with pytest.raises(ShapeError, match=r"node 'second' \(lstm\): expected W of shape "
                                         r"\(1, 20, 6\), found the tensor 'first.W' of shape "
                                         r"\(1, 20, 3\)"):
        with dsl.Builder("bad", seed=0) as b:
            x = b.input("x", (4, 2, 3))
            y, _, _ = dsl.lstm(x, 5, name="first")
            dsl.lstm(dsl.concat([x, x], axis=2), 5, weight=dsl.inputs_of(y)[1], name="second")
            b.output(x)


def test_interpreter_input_errors_name_the_node():
    g = lstm_graph()
    with pytest.raises(GraphoptError, match="x"):
        go.interpret(g, {"x": normal(4, 2, 4)})


def test_float64_interpreter_agrees_with_float32():
    g = lstm_graph(direction="bidirectional", sequence_lens=(4, 2))
    x = normal(4, 2, 3)
    y32, y64 = go.interpret(g, {"x": x}), go.interpret(g, {"x": x}, dtype=np.float64)
    for name in y32:
        assert y64[name].dtype == np.float64
        np.testing.assert_allclose(y32[name], y64[name], rtol=1e-5, atol=1e-6)
    # past each sequence's length Y is zero and the state stays the last valid one
    assert not y64["y"][2:, :, 1].any()
    np.testing.assert_array_equal(y64["y_h"][0, 1], y64["y"][1, 0, 1])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_computes_in_float32_and_rounds_once(dtype):
    op = ops.Gru("bidirectional")
    x, w, r = normal(3, 2, 4), normal(2, 18, 4, seed=1), normal(2, 18, 6, seed=2)
    half = [a.astype(dtype) for a in (x, w, r)]
    expected = op.run(*[a.astype(np.float32) for a in half])
    found = op.run(*half)
    for f, e in zip(found, expected):
        assert str(f.dtype) == dtype
        np.testing.assert_array_equal(f, e.astype(dtype))
    g = go.Graph("half")
    inputs = [g.add_input("x", TensorType.of(half[0]))] + [g.add_constant(n, a) for n, a in
                                                             zip("wr", half[1:])]
    g.set_outputs(g.add_node(op, inputs, name="gru").outputs)
    compiled = go.compile(g, "cpu").run({"x": half[0]})
    tolerance = 1e-2 if dtype == "float16" else 5e-2
    for f, e in zip(compiled.values(), expected):
        np.testing.assert_allclose(np.asarray(f).astype(np.float32), e, atol=tolerance)


def test_macs_count_both_products_of_every_step_and_direction():
    g = lstm_graph(direction="bidirectional")
    node = g.node("lstm")
    steps, batch, features, hidden, directions = 4, 2, 3, 5, 2
    assert go.analysis.node_macs(node) == steps * batch * directions * 4 * hidden * (
        features + hidden)


def test_lowering_unrolls_the_steps_over_one_input_projection():
    """One matmul for the input projection of all steps per direction, then one recurrent
    matmul per step (the Relax module before TVM's passes)."""
    from graphopt.targets.tvm.lower import to_relax
    g = lstm_graph(x_shape=(6, 2, 3), direction="bidirectional")
    text = to_relax(g).script()
    assert text.count("R.matmul") == 2 * (1 + 6)


@pytest.mark.parametrize("kind, options, dtype", [
    ("lstm", {"direction": "bidirectional", "sequence_lens": [5, 3, 4], "clip": 3.0},
     "float32"),
    ("gru", {"layout": 1, "linear_before_reset": False}, "float32"),
    ("gru", {"direction": "reverse"}, "float32"),
    ("lstm", {}, "bfloat16"),
    ("gru", {"direction": "bidirectional"}, "float16"),
])
def test_cpu_products_run_on_packed_weights(kind, options, dtype):
    """With constant weights the CPU target records a weight block on the layer, the products
    by W^T and R^T run on the dense rule's packed kernel (a GRU's R^T sliced as a constant;
    half-precision weights widened at lowering: cast at every run before, NIC's decoder in
    bfloat16 8x slower), and the outputs match the interpreter."""
    layout = options.get("layout", 0)
    with dsl.Builder(f"{kind}_packed", seed=4) as b:
        x = b.input("x", (3, 5, 6) if layout else (5, 3, 6))
        outputs = getattr(dsl, kind)(x, 24, **options)
        g = b.output(*outputs)
    if dtype != "float32":
        g = go.quantize(g, dtype).graph
    model = go.compile(g, "cpu")
    layer = next(n for n in model.graph.nodes if n.op_name == kind)
    assert layer.op.weight_block > 0
    assert [r for k, r in model.schedules.items() if "matmul" in k] and all(
        r == "dense" for k, r in model.schedules.items() if "matmul" in k), model.schedules
    feeds = {"x": np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)}
    report = go.compare(g, model, feeds)
    assert report.ok, str(report)


def test_compiles_for_cuda_with_every_kernel_scheduled():
    g = lstm_graph(direction="bidirectional", sequence_lens=(4, 3))
    report = go.compile(g, target="cuda").schedule_report
    assert "none" not in report.rules.values()
    assert report.naive_heavy_kernels == [], str(report)
