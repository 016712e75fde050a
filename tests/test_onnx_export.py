"""Export: every op of ours -> a valid ONNX model (onnx.checker full check, strict shape
inference) that onnxruntime runs with our interpreter's outputs, and imports back unchanged;
every zoo model round trips the same way."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphopt as go
from graphopt import dsl
from graphopt.compare import onnxruntime_outputs
from graphopt.frontends.onnx import load_onnx, save_onnx
from graphopt.frontends.onnx_export import EXPORTERS


def build(name, shape, body, dtype="float32"):
    with dsl.Builder(name, seed=1) as b:
        x = b.input("x", shape, dtype)
        return b.output(body(x))


# One row per registered op: (op, graph builder).
ROWS = [
    ("conv2d", lambda: build("conv", (1, 3, 9, 9), lambda x: dsl.conv2d(
        x, 4, 3, stride=2, padding=(1, 0, 2, 1), dilation=(1, 2), name="conv1"))),
    ("conv_transpose2d", lambda: build("deconv", (1, 4, 5, 5), lambda x: dsl.conv_transpose2d(
        x, 2, 3, stride=2, padding=1, output_padding=1, groups=2, name="up"))),
    ("batch_norm", lambda: build("bn", (2, 3, 4, 4), lambda x: dsl.batch_norm(x, 1e-3))),
    ("identity", lambda: build("identity", (2, 6), lambda x: dsl.relu(dsl.identity(x)))),
    # An input returned as an output gets an identity node that carries the output's name.
    ("identity", lambda: build("input_as_output", (2, 6), lambda x: x)),
    ("relu", lambda: build("relu", (2, 6), dsl.relu)),
    ("clip", lambda: build("clip", (2, 6), lambda x: dsl.clip(dsl.relu6(x), max=4.0))),
    ("leaky_relu", lambda: build("leaky", (2, 6), lambda x: dsl.leaky_relu(x, 0.2))),
    ("sigmoid", lambda: build("sigmoid", (2, 6), dsl.sigmoid)),
    ("tanh", lambda: build("tanh", (2, 6), dsl.tanh)),
    ("softmax", lambda: build("softmax", (2, 3, 4), lambda x: dsl.softmax(x, axis=1))),
    ("dropout", lambda: build("dropout", (2, 6), lambda x: dsl.relu(dsl.dropout(x, 0.3)))),
    ("dropout", lambda: build("dropout0", (2, 6), lambda x: dsl.relu(dsl.dropout(x, 0.0)))),
    ("max_pool2d", lambda: build("maxpool", (1, 2, 9, 8), lambda x: dsl.max_pool2d(
        x, 3, 2, padding=1, ceil_mode=True))),
    ("avg_pool2d", lambda: build("avgpool", (1, 2, 9, 8), lambda x: dsl.avg_pool2d(
        x, 3, 2, padding=1, count_include_pad=True))),
    ("global_avg_pool2d", lambda: build("gap", (2, 3, 5, 4), dsl.global_avg_pool2d)),
    ("global_max_pool2d", lambda: build("gmp", (2, 3, 5, 4), dsl.global_max_pool2d)),
    ("lrn", lambda: build("lrn", (1, 6, 3, 3), lambda x: dsl.lrn(x, 3, 1e-3, 0.7, 1.5))),
    ("linear", lambda: build("fc", (2, 8), lambda x: dsl.linear(x, 5, name="fc"))),
    ("matmul", lambda: build("matmul", (2, 3, 4), lambda x: dsl.matmul(
        x, dsl.current().constant("w", np.ones((4, 2), np.float32))))),
    ("add", lambda: build("add", (2, 3), lambda x: x + 1.5)),
    ("sub", lambda: build("sub", (2, 3), lambda x: x - 0.5)),
    ("mul", lambda: build("mul", (2, 3), lambda x: x * 2.0)),
    ("div", lambda: build("div", (2, 3), lambda x: x / 4.0)),
    ("concat", lambda: build("concat", (1, 2, 3, 3), lambda x: dsl.concat(
        [x, dsl.relu(x)], axis=1))),
    ("flatten", lambda: build("flatten", (2, 3, 4), lambda x: dsl.flatten(x, 2))),
    ("reshape", lambda: build("reshape", (2, 3, 4), lambda x: dsl.reshape(x, (4, -1)))),
    ("transpose", lambda: build("transpose", (2, 3, 4), lambda x: dsl.transpose(x, (2, 0, 1)))),
    ("pad", lambda: build("pad", (1, 2, 3, 4), lambda x: dsl.pad(dsl.pad(dsl.pad(
        x, (1, 0, 2, 1), value=0.5), (1, 3, 2, 0), mode="reflect"), (2, 0, 1, 4), mode="edge"))),
    ("pad", lambda: build("pad_wrap", (1, 2, 3, 4), lambda x: dsl.pad(x, (4, 1, 2, 6),
                                                                      mode="wrap"))),
    ("resize", lambda: build("resize", (1, 2, 3, 4), lambda x: dsl.resize(
        dsl.resize(x, scale=2), size=(5, 7), mode="bilinear"))),
    ("cast", lambda: cast_graph()),
]


def apply(op, *inputs):
    return dsl.current().apply(op, list(inputs))


def constant(name, data):
    return dsl.current().constant(name, np.asarray(data))


ops = go.ops
ROWS += [
    ("hard_sigmoid", lambda: build("hsig", (2, 6), lambda x: apply(ops.HardSigmoid(0.25, 0.375),
                                                                    x))),
    ("hard_swish", lambda: build("hswish", (2, 6), lambda x: apply(ops.HardSwish(), x))),
    ("gelu", lambda: build("gelu", (2, 6), lambda x: apply(ops.Gelu("tanh"), x))),
    ("exp", lambda: build("exp", (2, 6), lambda x: apply(ops.Exp(), x))),
    ("log", lambda: build("log", (2, 6), lambda x: apply(ops.Log(), apply(ops.Exp(), x)))),
    ("sqrt", lambda: build("sqrt", (2, 6), lambda x: apply(ops.Sqrt(), apply(ops.Exp(), x)))),
    ("erf", lambda: build("erf", (2, 6), lambda x: apply(ops.Erf(), x))),
    ("pow", lambda: build("pow", (2, 6), lambda x: apply(ops.Pow(), x, constant(
        "exponent", np.float32(3))))),
    ("where", lambda: build("where", (2, 3), lambda x: apply(ops.Where(), constant(
        "condition", np.array([True, False, True])), x, constant("other", np.float32(-1))))),
    ("compare", lambda: build("compare", (2, 3), lambda x: apply(ops.Where(), apply(
        ops.Compare("less_equal"), x, constant("zero", np.float32(0))), x,
        constant("other", np.float32(0))))),
    ("reduce_mean", lambda: build("mean", (2, 3, 4), lambda x: apply(ops.ReduceMean((-1,),
                                                                                    False), x))),
    ("reduce_sum", lambda: build("sum", (2, 3, 4), lambda x: apply(ops.ReduceSum((0, 2)), x))),
    ("reduce_max", lambda: build("max", (2, 3, 4), lambda x: apply(ops.ReduceMax(), x))),
    ("reduce_min", lambda: build("min", (2, 3, 4), lambda x: apply(ops.ReduceMin((1,)), x))),
    # Beside an op of opset 20 the reductions take their axes as inputs.
    ("reduce_mean", lambda: build("reductions_opset20", (2, 3, 4), lambda x: apply(
        ops.ReduceL2((0,)), apply(ops.ReduceMean((-1,)), apply(ops.Gelu(), x))))),
    ("reduce_prod", lambda: build("prod", (2, 3, 4), lambda x: apply(ops.ReduceProd((0, 2)),
                                                                      x))),
    ("reduce_l1", lambda: build("l1", (2, 3, 4), lambda x: apply(ops.ReduceL1((-1,), False),
                                                                  x))),
    ("reduce_l2", lambda: build("l2", (2, 3, 4), lambda x: apply(ops.ReduceL2(), x))),
    ("reduce_sum_square", lambda: build("sumsq", (2, 3, 4), lambda x: apply(
        ops.ReduceSumSquare((1, 2)), x))),
    ("reduce_log_sum_exp", lambda: build("lse", (2, 3, 4), lambda x: apply(
        ops.ReduceLogSumExp((0,), False), x))),
    ("max_pool2d_indices", lambda: build("pool_indices", (1, 2, 7, 6), lambda x: apply(
        ops.MaxPool2dIndices(3, 2, padding=1, ceil_mode=True, storage_order=1), x))),
    ("max_unpool2d", lambda: build("unpool", (2, 3, 6, 6), lambda x: dsl.max_unpool2d(
        *dsl.max_pool2d(x, 2, name="pool", return_indices=True), 2, name="unpool"))),
    ("max_unpool2d", lambda: build("unpool_size", (1, 2, 7, 7), lambda x: dsl.max_unpool2d(
        *dsl.max_pool2d(x, 3, 2, return_indices=True), 3, 2, output_size=(7, 7)))),
    ("instance_norm", lambda: build("in", (1, 3, 4, 5), lambda x: apply(
        ops.InstanceNorm(1e-3), x, constant("scale", np.arange(3, dtype=np.float32)),
        constant("bias", np.ones(3, np.float32))))),
    ("layer_norm", lambda: build("ln", (2, 3, 4), lambda x: apply(
        ops.LayerNorm(-1, 1e-5), x, constant("scale", np.arange(4, dtype=np.float32)),
        constant("bias", np.ones(4, np.float32))))),
    ("expand", lambda: build("expand", (3, 1), lambda x: apply(ops.Expand((2, 3, 4)), x))),
    ("tile", lambda: build("tile", (2, 3), lambda x: apply(ops.Tile((2, 1)), x))),
    ("slice", lambda: build("slice", (2, 3, 5), lambda x: apply(
        ops.Slice((-1, 1), (-2**63, 3), (2, 1), (-2, 1)), x))),
    ("gather", lambda: build("gather", (2, 5), lambda x: apply(
        ops.Gather(1), x, constant("indices", np.array([[4, 0], [-1, 2]], np.int64))))),
    ("elu", lambda: build("elu", (2, 6), lambda x: apply(ops.Elu(0.5), x))),
    ("selu", lambda: build("selu", (2, 6), lambda x: apply(ops.Selu(1.5, 2.0), x))),
    ("softplus", lambda: build("softplus", (2, 6), lambda x: apply(ops.Softplus(), x))),
    ("softsign", lambda: build("softsign", (2, 6), lambda x: apply(ops.Softsign(), x))),
    ("mish", lambda: build("mish", (2, 6), lambda x: apply(ops.Mish(), x))),
    ("thresholded_relu", lambda: build("thresholded", (2, 6), lambda x: apply(
        ops.ThresholdedRelu(0.25), x))),
    ("abs", lambda: build("abs", (2, 6), lambda x: apply(ops.Abs(), x))),
    ("neg", lambda: build("neg", (2, 6), lambda x: apply(ops.Neg(), x))),
    ("reciprocal", lambda: build("reciprocal", (2, 6), lambda x: apply(
        ops.Reciprocal(), apply(ops.Exp(), x)))),
    ("maximum", lambda: build("maximum", (2, 6), lambda x: apply(ops.Maximum(), x, constant(
        "floor", np.float32(0.25))))),
    ("minimum", lambda: build("minimum", (2, 6), lambda x: apply(ops.Minimum(), x, apply(
        ops.Neg(), x)))),
    ("prelu", lambda: build("prelu", (2, 3, 4), lambda x: dsl.prelu(x, 3))),
    ("celu", lambda: build("celu", (2, 6), lambda x: dsl.celu(x, 0.5))),
    ("log_softmax", lambda: build("log_softmax", (2, 6), lambda x: dsl.log_softmax(x))),
    ("sign", lambda: build("sign", (2, 6), lambda x: dsl.sign(x))),
    ("floor", lambda: build("floor", (2, 6), lambda x: dsl.floor(x))),
    ("ceil", lambda: build("ceil", (2, 6), lambda x: dsl.ceil(x))),
    ("round", lambda: build("round", (2, 6), lambda x: dsl.round(x))),
    ("logical", lambda: build("logical", (2, 3), lambda x: apply(ops.Where(), apply(
        ops.Logical("or"), apply(ops.Not(), apply(ops.Compare("greater"), x, constant(
            "zero", np.float32(0)))), constant("mask", np.array([True, False, False]))), x,
        constant("other", np.float32(0))))),
    ("not", lambda: build("not", (2, 3), lambda x: apply(ops.Where(), apply(ops.Not(), apply(
        ops.Compare("less"), x, constant("one", np.float32(1)))), x, x))),
]
# Rows whose op first appears in an opset above 13.
OPSETS = {"hard_swish": 14, "layer_norm": 17, "gelu": 20, "mish": 18}
# Rows (by graph name) whose op form needs a higher opset than the op's other forms.
FORM_OPSETS = {"pad_wrap": 19, "reductions_opset20": 20}


def cast_graph():
    """float32 -> float16 -> float32: rounds the input to float16's precision."""
    graph = go.Graph("cast")
    x = graph.add_input("x", go.TensorType((2, 6)))
    half = graph.add_node(go.ops.Cast("float16"), [x], name="to_half").output
    graph.set_outputs([graph.add_node(go.ops.Cast("float32"), [half], name="to_float").output])
    return graph


def fused_conv_graph():
    graph = go.Graph("fused")
    x = graph.add_input("x", go.TensorType((1, 3, 6, 6)))
    rng = np.random.default_rng(0)
    w = graph.add_constant("conv.weight", rng.standard_normal((3, 3, 3, 3)).astype(np.float32))
    b = graph.add_constant("conv.bias", rng.standard_normal(3).astype(np.float32))
    op = go.ops.OPS["fused_conv2d"](conv=go.ops.Conv2d(padding=1), activation=go.ops.Clip(0.0, 6.0),
                                    has_residual=True)
    graph.set_outputs([graph.add_node(op, [x, w, b, x], name="conv").output])
    return graph


def quantized_graph(name, op, operands):
    """A graph of one `op` node; `operands` in the op's input order, (name, TensorType) for a
    graph input, (name, array) for a constant."""
    graph = go.Graph(name)
    values = [graph.add_input(n, v) if isinstance(v, go.TensorType) else
              graph.add_constant(n, np.asarray(v)) for n, v in operands]
    graph.set_outputs([graph.add_node(op, values, name=name).output])
    return graph


def int8s(shape, dtype="int8", seed=3):
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(info.min, int(info.max) + 1, shape).astype(dtype)


def qlinear_conv_graph(activation=None, residual=False):
    """qlinear_conv2d (u8 x, s8 w per output channel, int32 bias) with its epilogue."""
    op = go.ops.QLinearConv2d(go.ops.Conv2d(padding=1), activation, has_residual=residual)
    f32, u8 = np.float32, np.uint8
    operands = [("x", go.TensorType((1, 3, 6, 6), "uint8")), ("x_scale", f32(0.02)),
                ("x_zero_point", u8(128)), ("w", int8s((4, 3, 3, 3))),
                ("w_scale", np.array([0.004, 0.006, 0.005, 0.008], f32)),
                ("w_zero_point", np.int8(0)), ("y_scale", f32(0.3)), ("y_zero_point", u8(100)),
                ("bias", np.array([-900, 0, 1200, 40], np.int32))]
    if residual:
        operands += [("residual", go.TensorType((1, 4, 6, 6), "uint8")),
                     ("residual_scale", f32(0.25)), ("residual_zero_point", u8(120))]
    return quantized_graph("qconv", op, operands)


def quantized_rows():
    f32 = np.float32
    tt = go.TensorType
    return [
        ("quantize_linear", lambda: quantized_graph("quantize", go.ops.QuantizeLinear(axis=1), [
            ("x", tt((2, 3, 4, 4))), ("scale", np.array([0.01, 0.02, 0.05], f32)),
            ("zero_point", np.array([0, 128, 250], np.uint8))])),
        ("dequantize_linear", lambda: quantized_graph("dequantize", go.ops.DequantizeLinear(), [
            ("x", tt((2, 5), "int8")), ("scale", f32(0.1)), ("zero_point", np.int8(-3))])),
        ("conv2d_integer", lambda: quantized_graph(
            "conv", go.ops.Conv2dInteger(go.ops.Conv2d(stride=2, padding=(1, 0, 1, 1))), [
                ("x", tt((1, 3, 6, 6), "uint8")), ("w", int8s((4, 3, 3, 3))),
                ("x_zero_point", np.uint8(128)), ("w_zero_point", np.int8(0))])),
        ("matmul_integer", lambda: quantized_graph("matmul", go.ops.MatmulInteger(), [
            ("a", tt((2, 3, 6), "int8")), ("b", int8s((6, 5), "uint8")),
            ("a_zero_point", np.int8(1)), ("b_zero_point", np.arange(5, dtype=np.uint8))])),
        ("qlinear_matmul", lambda: quantized_graph("qmatmul", go.ops.QLinearMatmul(), [
            ("a", tt((3, 6), "int8")), ("a_scale", f32(0.05)), ("a_zero_point", np.int8(2)),
            ("b", int8s((6, 4))), ("b_scale", np.array([0.01, 0.02, 0.03, 0.04], f32)),
            ("b_zero_point", np.zeros(4, np.int8)), ("y_scale", f32(0.2)),
            ("y_zero_point", np.int8(-1))])),
        ("qlinear_conv2d", qlinear_conv_graph),
    ]


ROWS += quantized_rows()


def recurrent_graph(name, layer, outputs):
    """A recurrent layer on x [4, 2, 3] with each of its outputs a graph output."""
    with dsl.Builder(name, seed=1) as b:
        x = b.input("x", (4, 2, 3))
        return b.output(*layer(x), names=outputs)


ROWS += [
    ("lstm", lambda: recurrent_graph("lstm", lambda x: dsl.lstm(
        x, 5, "bidirectional", initial_h=dsl.parameter("h0", (2, 2, 5)), sequence_lens=(4, 2),
        activations=(("HardSigmoid", 0.3, 0.4), ("Tanh", 0, 0), ("Elu", 0.9, 0)) * 2,
        clip=2.0, name="lstm"), ["y", "y_h", "y_c"])),
    ("gru", lambda: recurrent_graph("gru", lambda x: dsl.gru(
        x, 4, "reverse", linear_before_reset=False, bias=False, name="gru"), ["y", "y_h"])),
    ("argmax", lambda: build("argmax", (3, 5), lambda x: dsl.argmax(x, axis=1, keepdims=True))),
    ("argmin", lambda: build("argmin", (3, 5), lambda x: apply(ops.ArgMin(0, False, True), x))),
    ("cumsum", lambda: build("cumsum", (3, 5), lambda x: dsl.cumsum(x, -1, exclusive=True,
                                                                    reverse=True))),
]


def table_lookup_graph():
    return quantized_graph("lookup", go.ops.TableLookup(), [
        ("x", go.TensorType((2, 3, 4), "uint8")),
        ("table", np.random.default_rng(0).permutation(256).astype(np.uint8))])


# Ops that export as a chain of ONNX ops (fusion ops as their unfused chain, the table lookup
# as Cast then Gather) import back as that chain (same numbers): op -> (graph, ONNX ops).
NOT_STRUCTURAL = {"fused_conv2d": (fused_conv_graph, ["Conv", "Add", "Clip"]),
                  "table_lookup": (table_lookup_graph, ["Cast", "Gather"])}


def structure(graph):
    """What must survive a round trip: every node's name, op (with attributes) and the names of
    the values it reads and writes, plus the graph's inputs, outputs and constants."""
    nodes = [(n.name, n.op, [v.name for v in n.inputs], [v.name for v in n.outputs])
             for n in graph.topological_order()]
    constants = {name: c.data.tobytes() for name, c in graph.constants.items()}
    return (nodes, constants, [(v.name, v.type) for v in graph.inputs],
            [(v.name, v.type) for v in graph.outputs])


def random_inputs(graph, seed=0):
    """Standard-normal values; (u)int8 inputs over their whole range."""
    rng = np.random.default_rng(seed)
    def draw(v):
        if v.dtype in ("int8", "uint8"):
            return int8s(v.shape, v.dtype, seed=rng)
        return rng.standard_normal(v.shape).astype(v.dtype)
    return {v.name: draw(v) for v in graph.inputs}


def check_exported(graph, rtol=1e-5, atol=1e-5):
    model = save_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    feeds = random_inputs(graph)
    expected = go.interpret(graph, feeds)
    outputs = onnxruntime_outputs(model, feeds)   # int8 operands unsigned: exact without VNNI
    assert list(outputs) == graph.output_names
    for name, found in outputs.items():
        scale = max(1.0, float(np.abs(expected[name]).max()))
        np.testing.assert_allclose(found, expected[name], rtol=rtol, atol=atol * scale,
                                   err_msg=name)
    return model


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_op_exports_runs_in_onnxruntime_and_round_trips(row):
    op, make = row
    graph = make()
    assert op in {n.op_name for n in graph.nodes}
    model = check_exported(graph)
    assert model.opset_import[0].version == FORM_OPSETS.get(graph.name, OPSETS.get(op, 13))
    assert structure(load_onnx(model)) == structure(graph)


def test_every_op_has_an_exporter_and_a_row():
    assert set(go.ops.OPS) == set(EXPORTERS)
    assert set(go.ops.OPS) == {op for op, _ in ROWS} | set(NOT_STRUCTURAL)


def test_integer_dropout_exports_as_identity():
    # ONNX Dropout takes floats only; at inference both are the identity.
    graph = build("dropout_int", (2, 6), lambda x: dsl.flatten(dsl.dropout(x)), "int32")
    model = check_exported(graph)
    assert [n.op_type for n in model.graph.node] == ["Identity", "Flatten"]
    assert [n.op_name for n in load_onnx(model).nodes] == ["identity", "flatten"]


@pytest.mark.parametrize("op", sorted(NOT_STRUCTURAL))
def test_op_exports_as_its_chain(op):
    make_graph, op_types = NOT_STRUCTURAL[op]
    graph = make_graph()
    model = check_exported(graph)
    assert [n.op_type for n in model.graph.node] == op_types
    assert model.graph.node[-1].name == graph.nodes[-1].name
    again = load_onnx(model)
    x = random_inputs(graph)
    assert again.output_names == graph.output_names
    out = graph.output_names[0]
    np.testing.assert_allclose(go.interpret(again, x)[out], go.interpret(graph, x)[out], rtol=1e-6)


def test_qlinear_conv2d_activation_exports_as_a_clip_on_the_integers():
    graph = qlinear_conv_graph(go.ops.Clip(0.0, 6.0))
    model = check_exported(graph)   # exact: QLinearConv, then the clamp relu6 leaves
    assert [n.op_type for n in model.graph.node] == ["QLinearConv", "Clip"]
    bounds = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer
              if t.name in model.graph.node[1].input]
    assert [b.item() for b in bounds] == [100, 120]   # y_zero_point, + round(6 / 0.3)
    again = load_onnx(model)
    assert [n.op_name for n in again.topological_order()] == ["qlinear_conv2d", "clip"]
    x = random_inputs(graph)
    out = graph.output_names[0]
    np.testing.assert_array_equal(go.interpret(again, x)[out], go.interpret(graph, x)[out])


def test_qlinear_conv2d_residual_exports_as_its_qdq_chain():
    """The real-valued chain: ONNX Runtime computes it in float32, within one step of the
    integer computation; it imports back as that chain."""
    graph = qlinear_conv_graph(go.ops.Relu(), residual=True)
    model = save_onnx(graph)
    assert [n.op_type for n in model.graph.node] == [
        "Expand", "DequantizeLinear", "DequantizeLinear", "Mul", "DequantizeLinear", "Conv",
        "DequantizeLinear", "Add", "Relu", "QuantizeLinear"]
    x = random_inputs(graph)
    out = graph.output_names[0]
    expected = go.interpret(graph, x)[out].astype(np.int64)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    [found] = session.run(None, x)
    assert found.dtype == np.uint8 and np.abs(found - expected).max() <= 1
    assert len(np.unique(expected)) > 20   # not a saturated output
    again = load_onnx(model)
    assert sorted(n.op_name for n in again.nodes) == [
        "add", "conv2d", "dequantize_linear", "dequantize_linear", "dequantize_linear",
        "dequantize_linear", "quantize_linear", "relu"]
    assert np.abs(go.interpret(again, x)[out] - expected).max() <= 1


@pytest.mark.parametrize("op, opset", [(go.ops.QuantizeLinear(axis=1, block_size=2), 21),
                                       (go.ops.DequantizeLinear(axis=1, block_size=2), 21)])
def test_blocked_quantization_needs_opset_21(op, opset):
    x = go.TensorType((2, 5)) if op.name == "quantize_linear" else go.TensorType((2, 5), "int8")
    zero_points = int8s((2, 3), "int8")
    graph = quantized_graph("blocked", op, [("x", x), ("scale", np.full((2, 3), 0.05, np.float32)),
                                            ("zero_point", zero_points)])
    model = check_exported(graph)
    assert model.opset_import[0].version == opset
    assert structure(load_onnx(model)) == structure(graph)


def test_dilated_average_pool_needs_opset_19():
    graph = build("avg_dilated", (1, 1, 9, 9), lambda x: dsl.current().apply(
        go.ops.AvgPool2d(3, 1, 0, 2), [x]))
    assert check_exported(graph).opset_import[0].version == 19


def test_linear_on_rank_3_exports_through_matmul():
    graph = build("fc3", (2, 3, 8), lambda x: dsl.linear(x, 5, name="fc"))
    model = check_exported(graph)
    assert [n.op_type for n in model.graph.node] == ["Transpose", "MatMul", "Add"]
    again = load_onnx(model)
    x = random_inputs(graph)
    np.testing.assert_allclose(go.interpret(again, x)["output"], go.interpret(graph, x)["output"],
                               rtol=1e-6)


def test_save_to_path_and_load_back(tmp_path):
    graph = go.zoo.lenet5()
    path = tmp_path / "lenet.onnx"
    go.save_onnx(graph, path)
    assert structure(go.load_onnx(path)) == structure(graph)


SMALL = {"image_size": 64}
TINY = {"image_size": 32}
# One small model per structure the others lack: squeeze-excite with hard-swish and hard-sigmoid,
# SiLU, channel split and shuffle, dense concatenation, YOLO's upsample and in-graph box decoding.
ZOO_DEFAULT = {"lenet5": {}, "googlenet": SMALL, "resnet18": SMALL, "deep_convnet": {},
               "fcn": {}, "dcgan_generator": {}, "mobilenet_v3_small": TINY,
               "efficientnet_b0": TINY, "shufflenet_v2_x1_0": TINY, "densenet121": TINY,
               "dqn": {}, "yolov3_tiny": {"image_size": 64},
               "style_transfer": {"image_size": 24},
               "nic_captioning": {"image_size": 32, "vocab_size": 100},
               "segnet": {"image_size": 48, "width": 8},
               "deeplabv3_mobilenet_v3_large": {"image_size": 32, "num_classes": 5}}
ZOO_SLOW = {"alexnet": {}, "vgg11": {}, "vgg16": {}, "resnet50": {}, "mobilenet_v2": {},
            "mobilenet_v3_large": {}, "squeezenet1_1": {}, "regnet_x_400mf": {},
            "inception_v3": {}}


# Nodes of constant-only arithmetic that the import folds into one constant (as fold_constants
# would): nic_captioning's start-word embedding, a row of its word table broadcast to the batch.
FOLDED_ON_IMPORT = {"nic_captioning": {"decoder.start", "decoder.start_words",
                                       "decoder.step0.input"}}


def check_zoo(name, options):
    graph = go.zoo.get(name, **options)
    model = check_exported(graph, rtol=1e-4, atol=1e-5)
    back = load_onnx(model)
    if name not in FOLDED_ON_IMPORT:
        assert structure(back) == structure(graph)
        return
    assert {n.name for n in graph.nodes} - {n.name for n in back.nodes} == FOLDED_ON_IMPORT[name]
    assert structure(load_onnx(save_onnx(back))) == structure(back)   # then it round trips
    feeds = random_inputs(graph)
    np.testing.assert_array_equal(go.interpret(back, feeds)["output"],
                                  go.interpret(graph, feeds)["output"])


def test_zoo_lists_are_complete():
    assert set(ZOO_DEFAULT) | set(ZOO_SLOW) == set(go.zoo.MODELS)


@pytest.mark.parametrize("name", sorted(ZOO_DEFAULT))
def test_zoo_model_round_trips(name):
    check_zoo(name, ZOO_DEFAULT[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO_SLOW))
def test_big_zoo_model_round_trips(name):
    check_zoo(name, ZOO_SLOW[name])


def test_cli_convert_and_show(tmp_path, capsys):
    from graphopt.cli import main
    source, target = tmp_path / "lenet.onnx", tmp_path / "converted.onnx"
    go.save_onnx(go.zoo.lenet5(), source)
    assert main(["-q", "convert", str(source), str(target)]) == 0
    assert structure(go.load_onnx(target)) == structure(go.zoo.lenet5())
    assert main(["-q", "show", str(target)]) == 0
    assert "total: 12 nodes" in capsys.readouterr().out
    (tmp_path / "broken.onnx").write_bytes(source.read_bytes()[:100])
    assert main(["-q", "show", str(tmp_path / "broken.onnx")]) == 2
    assert "not a valid ONNX model" in capsys.readouterr().err
