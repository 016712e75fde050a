"""The quantized ops beyond their rows in test_ops.py: the lowering computes in integers, the
CPU target passes leave integer convolutions alone, the integers do not depend on the
interpreter's precision, and malformed quantized nodes are refused naming what is wrong."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt import ops
from graphopt.ir import Graph, TensorType
from graphopt.targets.tvm.compile import TargetContext
from graphopt.targets.tvm.lower import to_relax
from graphopt.targets.tvm.passes import select_conv_algorithm
from graphopt.targets.tvm.schedules.common import VectorShape

from conftest import input_feeds, one_node_graph
from test_ops import ROWS

F32 = np.float32


def qlinear_conv_operands(channels=8, out_channels=8, w_zp=0, x_zp=128):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (1, channels, 8, 8)).astype(np.uint8)], [
        F32(0.02), np.uint8(x_zp), rng.integers(-128, 128, (out_channels, channels, 3, 3))
        .astype(np.int8), np.full(out_channels, 0.005, F32), np.int8(w_zp), F32(0.3),
        np.uint8(100), np.zeros(out_channels, np.int32)]


def relax_calls(module, name: str) -> list:
    """Every call of the Relax op `name` in `module`'s main function."""
    from tvm import relax
    found = []
    relax.analysis.post_order_visit(module["main"], lambda e: found.append(e) if isinstance(
        e, relax.Call) and getattr(e.op, "name", None) == name else None)
    return found


@pytest.mark.parametrize("w_zp, x_zp", [(0, 128), (5, 0), (5, 128)],
                         ids=["x-zero-point", "w-zero-point", "both"])
def test_integer_convolution_lowers_to_a_conv2d_on_int8_with_int32_accumulators(w_zp, x_zp):
    inputs, constants = qlinear_conv_operands(w_zp=w_zp, x_zp=x_zp)
    graph = one_node_graph(ops.QLinearConv2d(ops.Conv2d(padding=1)), inputs, constants)
    module = to_relax(graph)
    convs = relax_calls(module, "relax.nn.conv2d")
    # the convolution, plus the window sums of x a nonzero w_zero_point needs
    assert len(convs) == (2 if w_zp else 1)
    for conv in convs:
        assert [str(a.ty.dtype) for a in conv.args] in (["uint8", "int8"], ["uint8", "uint8"])
        assert str(conv.attrs.out_dtype) == "int32"
    x = convs[0].args[0]
    assert tuple(int(d) for d in x.ty.shape) == (1, 8, 10, 10)   # padded with x_zero_point


@pytest.mark.parametrize("w_zp", [0, 5])
@pytest.mark.parametrize("channels, out_channels, groups, stride",
                         [(1, 8, 1, 2), (4, 8, 4, 1)], ids=["one-channel", "depthwise-x2"])
def test_a_convolution_of_single_products_lowers_without_a_reduction(channels, out_channels,
                                                                      groups, stride, w_zp):
    """A 1x1 kernel over one input channel per group sums one product per output: lowered
    elementwise (TVM's CUDA schedules inlined the epilogue into its unit-extent reduction and
    failed to build), and exact: TVM's own CPU build against the interpreter."""
    import tvm
    from tvm import relax
    inputs, constants = qlinear_conv_operands(channels, out_channels, w_zp=w_zp)
    constants[2] = constants[2][:, :1, :1, :1].copy()
    graph = one_node_graph(ops.QLinearConv2d(ops.Conv2d(stride=stride, groups=groups)), inputs,
                           constants)
    module = to_relax(graph)
    assert not relax_calls(module, "relax.nn.conv2d")
    vm = relax.VirtualMachine(tvm.compile(module, target="llvm"), tvm.cpu())
    found = vm["main"](tvm.runtime.tensor(inputs[0])).numpy()
    expected = go.interpret(graph, {graph.inputs[0].name: inputs[0]})[graph.output_names[0]]
    np.testing.assert_array_equal(found, expected)


def test_integer_matmul_lowers_to_a_matmul_on_int8_with_int32_accumulators():
    rng = np.random.default_rng(1)
    graph = one_node_graph(ops.QLinearMatmul(), [rng.integers(-128, 128, (4, 6)).astype(np.int8)],
                           [F32(0.1), np.int8(3), rng.integers(-128, 128, (6, 5)).astype(np.int8),
                            F32(0.05), np.int8(0), F32(0.2), np.int8(0)])
    [matmul] = relax_calls(to_relax(graph), "relax.matmul")
    assert [str(a.ty.dtype) for a in matmul.args] == ["int8", "int8"]
    assert str(matmul.attrs.out_dtype) == "int32"


def test_conv_algorithm_selection_gives_integer_convolutions_integer_kernels():
    """A 3x3 convolution the CPU pass sends to Winograd (or oneDNN) in float gets the CPU's
    int8 dot-product kernel when it is a quantized one (AVX2 here: vpmaddwd on 8 lanes), and
    stays as written when it is a bare ConvInteger."""
    inputs, constants = qlinear_conv_operands(channels=64, out_channels=64)
    quantized = one_node_graph(ops.QLinearConv2d(ops.Conv2d(padding=1)), inputs, constants)
    integer = one_node_graph(ops.Conv2dInteger(ops.Conv2d(padding=1)), inputs,
                             [constants[2], constants[1], constants[4]])
    rng = np.random.default_rng(2)
    floating = one_node_graph(ops.Conv2d(padding=1), [rng.standard_normal((1, 64, 8, 8), F32)],
                              [rng.standard_normal((64, 64, 3, 3), F32)])
    for kernels, algorithm in (("tvm", "winograd"), ("onednn", "onednn")):
        select = select_conv_algorithm(TargetContext("cpu", VectorShape(8, 12), kernels, True))
        assert select(floating).graph.nodes[0].op.algorithm == algorithm
        conv = select(quantized).graph.nodes[0].op.conv
        assert (conv.algorithm, conv.weight_block) == ("pmaddwd", 8)
        assert not select(integer).changed


QUANTIZED_ROWS = [r for r in ROWS if r.op.name in ("qlinear_conv2d", "qlinear_matmul",
                                                   "conv2d_integer", "matmul_integer")]


@pytest.mark.parametrize("row", QUANTIZED_ROWS, ids=[r.id for r in QUANTIZED_ROWS])
def test_integer_results_do_not_depend_on_the_interpreter_precision(row):
    """Integer in, integer out: the float64 mode widens the scales, the requantize still
    computes in float32 as the op defines it."""
    graph, feeds = row.graph(), input_feeds(row.id, row.inputs)
    out = f"{row.id}.out"
    np.testing.assert_array_equal(go.interpret(graph, feeds, dtype=np.float64)[out],
                                  go.interpret(graph, feeds)[out])


def test_quantized_ops_report_parameters_and_macs():
    inputs, constants = qlinear_conv_operands()
    graph = one_node_graph(ops.QLinearConv2d(ops.Conv2d(padding=1)), inputs, constants)
    node = graph.nodes[0]
    from graphopt.analysis import node_macs, node_params
    assert node_macs(node) == 8 * 8 * 8 * 8 * 3 * 3
    assert node_params(node) == 8 * 8 * 3 * 3 + 8   # weight and bias; scales are buffers


@pytest.mark.parametrize("make, message", [
    (lambda: ops.QLinearConv2d(activation=ops.LeakyRelu()), "expected activation relu, clip"),
    (lambda: ops.Conv2dInteger(ops.Conv2d(algorithm="winograd", weight_block=16, output_tile=2)),
     "without target decisions"),
    (lambda: ops.QuantizeLinear(block_size=-2), "non-negative block_size"),
    (lambda: ops.DequantizeLinear(axis=1.5), "integer axis"),
    (lambda: ops.QLinearConv2d(has_bias=2), "True or False"),
])
def test_bad_attributes_are_refused(make, message):
    with pytest.raises(go.ShapeError, match=message):
        make()


def node_error(op, types) -> str:
    graph = Graph("bad")
    values = [graph.add_input(f"in{i}", t) for i, t in enumerate(types)]
    with pytest.raises(go.ShapeError) as info:
        graph.add_node(op, values, name="q")
    assert info.value.node == "q" and info.value.op == op.name
    return info.value.detail


def T(shape, dtype="float32"):
    return TensorType(shape, dtype)


@pytest.mark.parametrize("op, types, message", [
    (ops.QuantizeLinear(), [T((2, 3)), T(()), T((), "int32")],
     r"zero_point of dtype int8 or uint8, found int32\[\]"),
    (ops.QuantizeLinear(), [T((2, 3)), T((), "float16"), T((), "int8")],
     "scale of x's dtype float32, found float16"),
    (ops.QuantizeLinear(axis=1), [T((2, 3)), T((2,)), T((2,), "int8")],
     r"scale of shape \(3,\) \(axis 1 of float32\[2,3\]\), found float32\[2\]"),
    (ops.QuantizeLinear(axis=1, block_size=2), [T((2, 5)), T((2, 2)), T((2, 2), "uint8")],
     r"scale of shape \(2, 3\) \(axis 1, blocks of 2"),
    (ops.DequantizeLinear(), [T((4,), "int8"), T(()), T((), "uint8")],
     "zero point of x's dtype int8, found uint8"),
    (ops.DequantizeLinear(axis=0), [T((4,), "int8"), T((4,)), T((1,), "int8")],
     r"zero point of the scale's shape \(4,\), found int8\[1\]"),
    (ops.Conv2dInteger(), [T((1, 3, 5, 5)), T((4, 3, 3, 3), "int8"), T((), "uint8"),
                           T((), "int8")], r"input x of dtype int8 or uint8, found float32"),
    (ops.Conv2dInteger(), [T((1, 3, 5, 5), "uint8"), T((4, 3, 3, 3), "int8"), T((), "uint8"),
                           T((3,), "int8")], r"w_zero_point as a scalar or shape \(4,\)"),
    (ops.MatmulInteger(), [T((3, 4), "uint8"), T((5, 2), "int8"), T((), "uint8"),
                           T((), "int8")], "matching inner dimensions"),
    (ops.QLinearConv2d(), [T((1, 3, 5, 5), "uint8"), T(()), T((), "uint8"),
                           T((4, 3, 3, 3), "int8"), T((4,)), T((4,), "int8"), T(()),
                           T((), "uint8"), T((4,))], r"int32 bias of shape \(4,\), found float32"),
    (ops.QLinearConv2d(has_bias=False), [T((1, 3, 5, 5), "uint8"), T(()), T((), "uint8"),
                                          T((4, 3, 3, 3), "int8"), T((4,), "float16"),
                                          T((4,), "int8"), T(()), T((), "uint8")],
     r"w_scale of dtype float32, found float16\[4\]"),
    (ops.QLinearConv2d(has_bias=False, has_residual=True),
     [T((1, 3, 5, 5), "uint8"), T(()), T((), "uint8"), T((4, 3, 3, 3), "int8"), T(()),
      T((), "int8"), T(()), T((), "uint8"), T((1, 4, 5, 5), "uint8"), T(()), T((), "uint8")],
     r"residual of the output's shape \(1, 4, 3, 3\), found uint8\[1,4,5,5\]"),
])
def test_malformed_quantized_nodes_name_expected_and_found(op, types, message):
    import re
    assert re.search(message, node_error(op, types))
