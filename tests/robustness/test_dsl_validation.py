"""Bad model definitions give a ShapeError naming the node, the op and the user's line, never a
bare ValueError/TypeError/ZeroDivisionError/OverflowError from inside, a silently changed value
(a NaN constant for `x + None`, a dimension of 8.7 truncated to 8) or a layer that compiles to a
library that cannot load (zero output channels). Attributes are checked where each op is
defined, so hand-built graphs and ONNX imports get the same errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt as go
from graphopt import dsl, ops
from graphopt.analysis import node_macs
from graphopt.errors import GraphoptError, ShapeError
from graphopt.ir import Graph, TensorType

HERE = __file__


def build(layer, shape=(1, 3, 8, 8), dtype="float32"):
    with dsl.Builder("bad", seed=0) as b:
        x = b.input("input", shape, dtype)
        return b.output(layer(x))


# (id, layer, input shape, node and op the error names, message pattern)
LAYERS = [
    ("conv_rank2", lambda x: dsl.conv2d(x, 4, 3), (3, 8), "conv", "conv2d",
     r"expected input x of rank 4, found float32\[3,8\]"),
    ("conv_kernel0", lambda x: dsl.conv2d(x, 4, 0), None, "conv", "conv2d",
     r"expected a weight with no zero dimension, found float32\[4,3,0,0\]"),
    ("conv_groups0", lambda x: dsl.conv2d(x, 4, 3, groups=0), None, "conv", "conv2d",
     r"expected positive stride/dilation/groups"),
    ("conv_stride_float", lambda x: dsl.conv2d(x, 4, 3, stride=1.5), None, "conv", "conv2d",
     r"expected stride as an int or an \(h, w\) pair, found 1.5"),
    ("conv_stride_pair_float", lambda x: dsl.conv2d(x, 4, 3, stride=(1, 1.5)), None, "conv",
     "conv2d", r"expected an integer stride, found 1.5"),
    ("conv_padding_bogus", lambda x: dsl.conv2d(x, 4, 3, padding="bogus"), None, "conv",
     "conv2d", r"expected padding as an int, .* 'same' or 'valid', found 'bogus'"),
    ("conv_padding_same_on_rank3", lambda x: dsl.conv2d(x, 4, 3, padding="same"), (3, 8, 8),
     "conv", "conv2d", r"expected input x of rank 4, found float32\[3,8,8\]"),
    ("conv_padding_negative", lambda x: dsl.conv2d(x, 4, 3, padding=-1), None, "conv", "conv2d",
     r"non-negative padding"),
    ("conv_dilation0", lambda x: dsl.conv2d(x, 4, 3, dilation=0), None, "conv", "conv2d",
     r"expected positive stride/dilation/groups"),
    ("conv_out0", lambda x: dsl.conv2d(x, 0, 3), None, "conv", "conv2d",
     r"expected a positive out_channels, found 0"),
    ("conv_out_negative", lambda x: dsl.conv2d(x, -2, 3), None, "conv", "conv2d",
     r"expected a positive out_channels, found -2"),
    ("conv_out_float", lambda x: dsl.conv2d(x, 4.5, 3), None, "conv", "conv2d",
     r"expected an integer out_channels, found 4.5"),
    ("conv_kernel_bool", lambda x: dsl.conv2d(x, 4, True), None, "conv", "conv2d",
     r"expected kernel as an int or an \(h, w\) pair, found True"),
    ("conv_no_input_channels", lambda x: dsl.conv2d(x, 4, 3), (1, 0, 8, 8), "conv", "conv2d",
     r"expected a weight with no zero dimension"),
    ("conv_padded_by_1e9", lambda x: dsl.conv2d(x, 4, 3, padding=10 ** 9), None, "conv",
     "conv2d", r"holds ~10\*\*19 elements; graphopt refuses shapes beyond 2\*\*40"),
    ("deconv_out0", lambda x: dsl.conv_transpose2d(x, 0, 3), None, "deconv", "conv_transpose2d",
     r"expected a positive out_channels"),
    # torch's transposed convolutions and pools take no named padding either
    ("deconv_padding_same", lambda x: dsl.conv_transpose2d(x, 4, 3, padding="same"), None,
     "deconv", "conv_transpose2d", r"expected padding as an int, .* found 'same'"),
    ("max_pool_padding_same", lambda x: dsl.max_pool2d(x, 3, padding="same"), None,
     "max_pool2d", "max_pool2d", r"expected padding as an int, .* found 'same'"),
    ("avg_pool_padding_valid", lambda x: dsl.avg_pool2d(x, 3, padding="valid"), None,
     "avg_pool2d", "avg_pool2d", r"expected padding as an int, .* found 'valid'"),
    ("deconv_groups0", lambda x: dsl.conv_transpose2d(x, 4, 3, groups=0), None, "deconv",
     "conv_transpose2d", r"expected positive stride/dilation/groups"),
    ("linear_out0", lambda x: dsl.linear(dsl.flatten(x), 0), None, "fc", "linear",
     r"expected a positive out_features, found 0"),
    ("linear_out_float", lambda x: dsl.linear(dsl.flatten(x), 2.5), None, "fc", "linear",
     r"expected an integer out_features, found 2.5"),
    ("linear_no_input_features", lambda x: dsl.linear(x, 4), (1, 0), "fc", "linear",
     r"expected a weight with no zero dimension, found float32\[4,0\]"),
    ("batch_norm_negative_eps", lambda x: dsl.batch_norm(x, -1.0), None, "bn", "batch_norm",
     r"expected a non-negative epsilon"),
    ("batch_norm_eps_str", lambda x: dsl.batch_norm(x, "1e-5"), None, "bn", "batch_norm",
     r"expected a number for epsilon, found '1e-5'"),
    ("max_pool_kernel0", lambda x: dsl.max_pool2d(x, 0), None, "max_pool2d", "max_pool2d",
     r"expected positive kernel/stride/dilation"),
    ("max_pool_stride0", lambda x: dsl.max_pool2d(x, 2, stride=0), None, "max_pool2d",
     "max_pool2d", r"expected positive kernel/stride/dilation"),
    ("max_pool_dilation0", lambda x: dsl.max_pool2d(x, 2, dilation=0), None, "max_pool2d",
     "max_pool2d", r"expected positive kernel/stride/dilation"),
    ("max_pool_padding_negative", lambda x: dsl.max_pool2d(x, 2, padding=-1), None,
     "max_pool2d", "max_pool2d", r"non-negative padding"),
    ("max_pool_kernel_float", lambda x: dsl.max_pool2d(x, 1.5), None, "max_pool2d",
     "max_pool2d", r"expected kernel as an int or an \(h, w\) pair, found 1.5"),
    ("max_pool_ceil_mode_str", lambda x: dsl.max_pool2d(x, 2, ceil_mode="yes"), None,
     "max_pool2d", "max_pool2d", r"expected True or False for ceil_mode"),
    ("avg_pool_kernel0", lambda x: dsl.avg_pool2d(x, 0), None, "avg_pool2d", "avg_pool2d",
     r"expected positive kernel/stride/dilation"),
    ("lrn_size_float", lambda x: dsl.lrn(x, size=2.5), None, "lrn", "lrn",
     r"expected an integer size, found 2.5"),
    ("lrn_alpha_nan", lambda x: dsl.lrn(x, alpha=math.nan), None, "lrn", "lrn",
     r"expected a finite number for alpha, found nan"),
    ("leaky_relu_alpha_none", lambda x: dsl.leaky_relu(x, None), None, "leaky_relu",
     "leaky_relu", r"expected a number for alpha, found None"),
    ("clip_nan", lambda x: dsl.clip(x, math.nan, 1.0), None, "clip", "clip",
     r"expected a number for min, found nan"),
    ("clip_str", lambda x: dsl.clip(x, "0", 1.0), None, "clip", "clip",
     r"expected a number for min, found '0'"),
    ("dropout_ratio_str", lambda x: dsl.dropout(x, "0.5"), None, "dropout", "dropout",
     r"expected a number for ratio"),
    ("softmax_axis_float", lambda x: dsl.softmax(x, 1.5), None, "softmax", "softmax",
     r"expected an integer axis, found 1.5"),
    ("flatten_axis_float", lambda x: dsl.flatten(x, 1.5), None, "flatten", "flatten",
     r"expected an integer axis, found 1.5"),
    ("flatten_axis_out_of_range", lambda x: dsl.flatten(x, 9), None, "flatten", "flatten",
     r"expected axis in \[-4, 4\], found 9"),
    ("reshape_float", lambda x: dsl.reshape(x, (1.5, -1)), None, "reshape", "reshape",
     r"expected an integer shape, found 1.5"),
    ("reshape_int", lambda x: dsl.reshape(x, 192), None, "reshape", "reshape",
     r"expected shape as a sequence of ints, found 192"),
    ("reshape_two_unknowns", lambda x: dsl.reshape(x, (-1, -1)), None, "reshape", "reshape",
     r"at most one -1"),
    ("transpose_float", lambda x: dsl.transpose(x, (0, 1, 2, 2.5)), None, "transpose",
     "transpose", r"expected an integer perm, found 2.5"),
    ("concat_axis_out_of_range", lambda x: dsl.concat([x, x], 4), None, "concat", "concat",
     r"expected axis in \[-4, 4\), found 4"),
    ("concat_axis_float", lambda x: dsl.concat([x, x], 1.0), None, "concat", "concat",
     r"expected an integer axis, found 1.0"),
    ("pad_float", lambda x: dsl.pad(x, (1.5, 0, 0, 0)), None, "pad", "pad",
     r"expected pads as one \(before, after\) pair per axis"),
    ("pad_negative", lambda x: dsl.pad(x, (-1, 0, 0, 0)), None, "pad", "pad",
     r"expected non-negative pads"),
    ("resize_scale_inf", lambda x: dsl.resize(x, scale=math.inf), None, "resize", "resize",
     r"expected a positive finite scale"),
    ("resize_scale_nan", lambda x: dsl.resize(x, scale=math.nan), None, "resize", "resize",
     r"expected a positive finite scale"),
    ("resize_scale_huge", lambda x: dsl.resize(x, scale=1e300), None, "resize", "resize",
     r"graphopt refuses shapes beyond 2\*\*40"),
    ("resize_size_float", lambda x: dsl.resize(x, size=(1.5, 4)), None, "resize", "resize",
     r"expected an integer size, found 1.5"),
    ("resize_size0", lambda x: dsl.resize(x, size=(0, 4)), None, "resize", "resize",
     r"expected a positive size, found \(0, 4\)"),
    ("add_none", lambda x: x + None, None, "add", "add",
     r"expected a tensor or a number as operand, found None"),
    ("add_str", lambda x: x + "1", None, "add", "add",
     r"expected a tensor or a number as operand, found '1'"),
    ("mul_object", lambda x: x * object(), None, "mul", "mul",
     r"expected a tensor or a number as operand"),
    ("add_bool", lambda x: x + True, None, "add", "add", r"expected the operand as float32"),
    ("add_fraction_to_ints", lambda x: x + 1.5, "int32", "add", "add",
     r"expected integer values for the operand \(int32\)"),
    ("add_out_of_int8_range", lambda x: x + 300, "int8", "add", "add",
     r"expected the operand within the int8 range \[-128, 127\], found \[300, 300\]"),
    ("add_overflowing_float32", lambda x: x - 1e300, None, "sub", "sub",
     r"expected the operand within the float32 range, found values that overflow it"),
]


@pytest.mark.parametrize("row", LAYERS, ids=[r[0] for r in LAYERS])
def test_bad_layers_raise_shape_errors_naming_node_op_and_line(row):
    _, layer, shape, node, op, pattern = row
    dtype = shape if isinstance(shape, str) else "float32"
    shape = (1, 3, 8, 8) if shape is None or isinstance(shape, str) else shape
    with pytest.raises(ShapeError, match=pattern) as info:
        build(layer, shape, dtype)
    assert (info.value.node, info.value.op) == (node, op), str(info.value)
    assert f"(at {HERE}:" in str(info.value)


@pytest.mark.parametrize("shape, pattern", [
    ((1, 3, 8.7, 8), r"expected an integer dimension in shape \(1, 3, 8.7, 8\), found 8.7"),
    ((1, 3, True, 8), r"found the bool True"),
    ((1, 3, -8, 8), r"negative dimension"),
    ((1, 3, "8", 8), r"found '8'"),
    (8, r"expected a shape as a sequence of dimensions, found 8"),
    ("1388", r"expected a shape as a sequence of dimensions, found '1388'"),
    ((1 << 21, 1 << 20), r"holds 2199023255552 elements; graphopt refuses shapes beyond 2\*\*40"),
])
def test_input_shapes_are_exact_non_negative_ints(shape, pattern):
    with pytest.raises(ShapeError, match=pattern) as info:
        build(dsl.relu, shape)
    assert str(info.value).startswith("input 'input': ")


def test_numbers_that_fit_the_dtype_are_accepted():
    graph = build(lambda x: (x + 2) * np.float64(0.5) - np.array([1, 2, 3], np.int64)
                  .reshape(1, 3, 1, 1))
    out = go.interpret(graph, {"input": np.ones((1, 3, 8, 8), np.float32)})["output"]
    assert out.dtype == np.float32 and out[0, :, 0, 0].tolist() == [0.5, -0.5, -1.5]
    assert build(lambda x: x + 3, dtype="int8").nodes


def test_given_weights_are_checked_like_operands():
    with pytest.raises(ShapeError, match=r"node 'conv' \(conv2d\): expected weight as float32 "
                                         r"numbers, found <U1"):
        build(lambda x: dsl.conv2d(x, 1, 1, weight=np.full((1, 3, 1, 1), "a")))
    with pytest.raises(ShapeError, match=r"expected bias within the float32 range"):
        build(lambda x: dsl.conv2d(x, 1, 1, bias_value=np.array([1e300])))


def test_non_tensors_as_layer_inputs_are_refused():
    with dsl.Builder("bad") as b:
        x = b.input("input", (1, 3, 8, 8))
        with pytest.raises(ShapeError, match=r"node 'conv' \(conv2d\): expected a DSL tensor as "
                                             r"input, found ndarray"):
            dsl.conv2d(np.zeros((1, 3, 8, 8), np.float32), 4, 3, name="conv")
        with pytest.raises(GraphoptError, match=r"expected DSL tensors as inputs, found ndarray"):
            dsl.relu(np.zeros(3))
        with pytest.raises(GraphoptError, match=r"expected a DSL tensor among the operands"):
            dsl.add(1, 2)
        b.output(x)


def scoped_twice(b, x):
    with b.scope("block"):
        y = dsl.relu(x, name="act")
    with b.scope("block"):
        dsl.relu(y, name="act")


# (id, what the user writes inside `with dsl.Builder("misused") as b`, x being its input, error)
MISUSES = [
    ("two_layers_one_name", lambda b, x: dsl.conv2d(dsl.conv2d(x, 4, 3, name="c"), 4, 3, name="c"),
     r"node 'c' \(conv2d\): the name 'c' \(at .*test_dsl_validation.py:\d+\) is taken by "
     r"node 'c' \(conv2d, written at .*test_dsl_validation.py:\d+\): give each layer its own name"),
    ("relu_named_like_a_conv", lambda b, x: dsl.relu(dsl.conv2d(x, 4, 3, name="c"), name="c"),
     r"node 'c' \(relu\): the name 'c' .* is taken by node 'c' \(conv2d"),
    ("add_named_like_a_relu", lambda b, x: dsl.add(dsl.relu(x, name="r"), x, name="r"),
     r"node 'r' \(add\): the name 'r' .* is taken by node 'r' \(relu"),
    ("one_name_in_one_scope", scoped_twice, r"node 'block.act' \(relu\): the name 'block.act'"),
    ("layer_named_like_the_input", lambda b, x: dsl.batch_norm(x, name="input"),
     r"node 'input' \(batch_norm\): the name 'input' .* is taken by the graph input 'input'"),
    ("no_output", lambda b, x: dsl.relu(x),
     r"graph 'misused' has no outputs: call `b.output\(...\)` inside the `with "
     r"dsl.Builder\(...\)` block \(at .*test_dsl_validation.py:\d+\)"),
]


@pytest.mark.parametrize("misuse, pattern", [row[1:] for row in MISUSES],
                         ids=[row[0] for row in MISUSES])
def test_builder_misuse_is_a_clear_error(misuse, pattern):
    with pytest.raises(GraphoptError, match=pattern):
        with dsl.Builder("misused", seed=0) as b:
            misuse(b, b.input("input", (1, 3, 8, 8)))


# (id, what the user writes after the `with dsl.Builder("finished") as b` block, error)
LATE = [
    ("relu", lambda b, x: dsl.relu(x),
     r"relu: layer relu called after the `with dsl.Builder\('finished'\)` block ended \(at "
     r".*test_dsl_validation.py:\d+\); the graph is finished: write every layer inside"),
    ("conv2d", lambda b, x: dsl.conv2d(x, 4, 3), r"conv2d: layer conv2d called after the"),
    ("add", lambda b, x: x + 1, r"add: layer add called after the"),
    ("input", lambda b, x: b.input("late", (1,)), r"input 'late' added after the"),
    ("output", lambda b, x: b.output(x, names=["again"]), r"`b.output\(...\)` called after the"),
]


@pytest.mark.parametrize("late, pattern", [row[1:] for row in LATE], ids=[row[0] for row in LATE])
def test_a_layer_after_the_block_is_refused_and_the_graph_kept(late, pattern):
    with dsl.Builder("finished") as b:
        x = b.input("input", (1, 3, 8, 8))
        graph = b.output(dsl.relu(x))
    with pytest.raises(GraphoptError, match=pattern):
        late(b, x)
    assert [n.op_name for n in graph.nodes] == ["relu"] and graph.output_names == ["output"]
    assert set(graph.constants) == set()
    go.verify(graph)


def test_a_bad_seed_is_refused():
    with pytest.raises(GraphoptError, match=r"expected a non-negative int seed, found 'a'"):
        dsl.Builder("bad", seed="a")


# ---- the same checks without the DSL --------------------------------------------------------
@pytest.mark.parametrize("make, pattern", [
    (lambda: ops.Conv2d(stride=1.5), r"expected stride as an int or an \(h, w\) pair"),
    (lambda: ops.Conv2d(groups=0), r"expected positive stride/dilation/groups"),
    (lambda: ops.Conv2d(groups=1.0), r"expected an integer groups, found 1.0"),
    (lambda: ops.Conv2d(padding="same"), r"expected padding as an int, \(h, w\) or"),
    (lambda: ops.MaxPool2d(kernel=(2, 0)), r"expected positive kernel/stride/dilation"),
    (lambda: ops.Reshape((2, 2.0)), r"expected an integer shape, found 2.0"),
    (lambda: ops.Resize((4, 4.5)), r"expected an integer size, found 4.5"),
    (lambda: ops.Linear(weight_block=-16), r"expected a non-negative weight_block"),
    (lambda: ops.Pad(((0, 0), (1, None))), r"expected an integer pad, found None"),
    (lambda: ops.Softmax(None), r"expected an integer axis, found None"),
    (lambda: ops.Lrn(size=0), r"expected size >= 1, found 0"),
])
def test_ops_validate_their_attributes(make, pattern):
    with pytest.raises(ShapeError, match=pattern):
        make()


def test_tensor_sizes_are_exact_and_bounded():
    assert TensorType((1 << 20, 1 << 20)).numel == 1 << 40
    assert TensorType((1 << 20, 1 << 20)).nbytes == 4 << 40
    assert isinstance(TensorType((np.int64(3), 4)).numel, int)
    with pytest.raises(ShapeError, match=r"holds ~10\*\*19 elements"):
        TensorType((1 << 32, 1 << 32))
    with pytest.raises(ShapeError, match=r"shape \(0, 2199023255552\)"):
        TensorType((0, 1 << 41))
    g = Graph("g")
    x = g.add_input("x", TensorType((1 << 20, 1 << 20)))
    assert g.add_node(ops.Reshape((-1,)), [x]).output.shape == (1 << 40,)


def test_macs_are_exact_python_ints():
    """A 1x1 convolution with 2**20 channels over a 1024x1024 map: 2**60 MACs, exactly (shapes
    as graph inputs, so nothing is allocated)."""
    g = Graph("g")
    x = g.add_input("x", TensorType((1, 1 << 20, 1 << 10, 1 << 10)))
    w = g.add_input("w", TensorType((1 << 20, 1 << 20, 1, 1)))
    node = g.add_node(ops.Conv2d(), [x, w])
    assert node_macs(node) == 1 << 60 and isinstance(node_macs(node), int)


def test_onnx_attributes_get_the_same_errors():
    w = numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", group=0)
    graph = helper.make_graph([conv], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
                              [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ShapeError, match=r"node 'conv' \(Conv\): expected positive "
                                         r"stride/dilation/groups"):
        go.load_onnx(model)
