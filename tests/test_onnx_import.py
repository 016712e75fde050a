"""The ONNX conversion table, one row per table entry and form, each checked against onnx's own
reference evaluator; plus naming, folding of exporter shape chains, opset upgrade and errors."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt as go
from graphopt.compare import onnxruntime_outputs
from graphopt.errors import ModelFormatError, UnsupportedOpError
from graphopt.frontends.onnx import load_onnx
from graphopt.frontends.onnx_import import DeclaredShapeWarning
from graphopt.frontends.onnx_ops import TABLE

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def make_model(nodes, inputs, outputs, initializers=None, opset=17, value_info=()):
    """inputs: name -> shape (float32); outputs: names; initializers: name -> array."""
    graph = helper.make_graph(
        nodes, "case",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        initializer=[numpy_helper.from_array(np.asarray(a), n)
                     for n, a in (initializers or {}).items()],
        value_info=list(value_info))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(model)   # fills in the output types


def node(op_type, inputs, outputs=("y",), **attrs):
    return helper.make_node(op_type, list(inputs), list(outputs), name=f"{op_type.lower()}_node",
                            **attrs)


def I(*values):
    return np.array(values, np.int64)


def F(*values):
    return np.array(values, np.float32)


# (id, ONNX op covered, nodes, inputs {name: shape}, initializers, expected graphopt ops)
ROWS = [
    ("conv_pads_bias", "Conv", [node("Conv", ["x", "w", "b"], pads=[1, 0, 2, 1], strides=[2, 1])],
     {"x": (1, 3, 9, 8)}, {"w": rand(4, 3, 3, 3), "b": rand(4)}, ["conv2d"]),
    ("conv_same_upper", "Conv", [node("Conv", ["x", "w"], auto_pad="SAME_UPPER", strides=[2, 2])],
     {"x": (1, 2, 7, 8)}, {"w": rand(3, 2, 3, 2)}, ["conv2d"]),
    ("conv_same_lower", "Conv", [node("Conv", ["x", "w"], auto_pad="SAME_LOWER", strides=[2, 3])],
     {"x": (1, 2, 7, 6)}, {"w": rand(3, 2, 2, 2)}, ["conv2d"]),
    ("conv_valid_group", "Conv", [node("Conv", ["x", "w"], auto_pad="VALID", group=2)],
     {"x": (2, 4, 6, 6)}, {"w": rand(6, 2, 3, 3)}, ["conv2d"]),
    ("conv_1d", "Conv", [node("Conv", ["x", "w", "b"], pads=[1, 1], strides=[2])],
     {"x": (1, 3, 10)}, {"w": rand(5, 3, 3), "b": rand(5)}, ["reshape", "conv2d", "reshape"]),
    ("conv_transpose", "ConvTranspose",
     [node("ConvTranspose", ["x", "w", "b"], strides=[2, 2], pads=[1, 1, 1, 1],
           output_padding=[1, 0])],
     {"x": (1, 3, 4, 5)}, {"w": rand(3, 2, 3, 3), "b": rand(2)}, ["conv_transpose2d"]),
    ("conv_transpose_output_shape", "ConvTranspose",
     [node("ConvTranspose", ["x", "w"], strides=[3, 2], output_shape=[10, 8])],
     {"x": (1, 1, 3, 3)}, {"w": rand(1, 2, 3, 3)}, ["conv_transpose2d"]),
    ("batch_norm", "BatchNormalization",
     [node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)],
     {"x": (2, 3, 4, 4)},
     {"s": rand(3), "b": rand(3), "m": rand(3), "v": np.abs(rand(3)) + 0.5}, ["batch_norm"]),
    ("relu", "Relu", [node("Relu", ["x"])], {"x": (2, 5)}, {}, ["relu"]),
    ("sigmoid", "Sigmoid", [node("Sigmoid", ["x"])], {"x": (2, 5)}, {}, ["sigmoid"]),
    ("tanh", "Tanh", [node("Tanh", ["x"])], {"x": (2, 5)}, {}, ["tanh"]),
    ("leaky_relu", "LeakyRelu", [node("LeakyRelu", ["x"], alpha=0.2)], {"x": (2, 5)}, {},
     ["leaky_relu"]),
    ("softmax_axis1", "Softmax", [node("Softmax", ["x"], axis=1)], {"x": (2, 5, 3)}, {},
     ["softmax"]),
    ("clip_min_max_inputs", "Clip", [node("Clip", ["x", "lo", "hi"])], {"x": (3, 4)},
     {"lo": F(-0.5)[0], "hi": F(0.7)[0]}, ["clip"]),
    ("clip_max_only", "Clip", [node("Clip", ["x", "", "hi"])], {"x": (3, 4)}, {"hi": F(0.1)[0]},
     ["clip"]),
    ("dropout_ratio", "Dropout", [node("Dropout", ["x", "r"])], {"x": (3, 4)},
     {"r": F(0.25)[0]}, ["dropout"]),
    ("identity", "Identity", [node("Identity", ["x"])], {"x": (3, 4)}, {}, ["identity"]),
    ("max_pool_ceil_pads", "MaxPool",
     [node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)],
     {"x": (1, 2, 8, 7)}, {}, ["max_pool2d"]),
    ("max_pool_same_upper", "MaxPool",
     [node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER")],
     {"x": (1, 2, 7, 7)}, {}, ["max_pool2d"]),
    ("avg_pool_count_pad", "AveragePool",
     [node("AveragePool", ["x"], kernel_shape=[3, 2], pads=[1, 0, 1, 1], count_include_pad=1)],
     {"x": (1, 2, 6, 6)}, {}, ["avg_pool2d"]),
    ("avg_pool_1d", "AveragePool", [node("AveragePool", ["x"], kernel_shape=[3], strides=[2])],
     {"x": (1, 2, 9)}, {}, ["reshape", "avg_pool2d", "reshape"]),
    ("global_avg_pool", "GlobalAveragePool", [node("GlobalAveragePool", ["x"])],
     {"x": (2, 3, 5, 4)}, {}, ["global_avg_pool2d"]),
    ("global_max_pool", "GlobalMaxPool", [node("GlobalMaxPool", ["x"])], {"x": (2, 3, 5, 4)}, {},
     ["global_max_pool2d"]),
    ("lrn", "LRN", [node("LRN", ["x"], size=3, alpha=1e-3, beta=0.7, bias=1.5)],
     {"x": (1, 6, 3, 3)}, {}, ["lrn"]),
    ("gemm_linear", "Gemm", [node("Gemm", ["x", "w", "b"], transB=1)], {"x": (2, 6)},
     {"w": rand(4, 6), "b": rand(4)}, ["linear"]),
    ("gemm_weight_not_transposed", "Gemm", [node("Gemm", ["x", "w", "b"])], {"x": (2, 6)},
     {"w": rand(6, 4), "b": rand(4)}, ["linear"]),
    ("gemm_trans_a_alpha_beta", "Gemm",
     [node("Gemm", ["a", "w", "c"], transA=1, transB=1, alpha=0.5, beta=2.0)], {"a": (6, 3)},
     {"w": rand(4, 6), "c": rand(3, 4)}, ["transpose", "matmul", "mul", "add"]),
    ("gemm_dynamic_b_scalar_bias", "Gemm", [node("Gemm", ["a", "b", "c"], transB=1)],
     {"a": (3, 5), "b": (2, 5)}, {"c": F(0.5)}, ["transpose", "matmul", "add"]),
    ("matmul_batched", "MatMul", [node("MatMul", ["a", "b"])], {"a": (2, 3, 4), "b": (4, 5)}, {},
     ["matmul"]),
    ("add_broadcast_constant", "Add", [node("Add", ["x", "c"])], {"x": (2, 3, 4)},
     {"c": rand(3, 1)}, ["add"]),
    ("sub", "Sub", [node("Sub", ["x", "z"])], {"x": (2, 3), "z": (2, 3)}, {}, ["sub"]),
    ("mul", "Mul", [node("Mul", ["x", "z"])], {"x": (2, 3), "z": (1, 3)}, {}, ["mul"]),
    ("div", "Div", [node("Div", ["x", "c"])], {"x": (2, 3)}, {"c": F(2.0, 4.0, -8.0)}, ["div"]),
    ("sum_three", "Sum", [node("Sum", ["x", "z", "c"])], {"x": (2, 3), "z": (2, 3)},
     {"c": rand(3)}, ["add", "add"]),
    ("reduce_mean_spatial", "ReduceMean", [node("ReduceMean", ["x", "a"], keepdims=0)],
     {"x": (2, 3, 4, 5)}, {"a": I(-1, 2)}, ["global_avg_pool2d", "reshape"]),
    ("reduce_max_spatial_attr", "ReduceMax", [node("ReduceMax", ["x"], axes=[2, 3])],
     {"x": (2, 3, 4, 5)}, {}, ["global_max_pool2d"]),
    ("concat", "Concat", [node("Concat", ["x", "z"], axis=-1)], {"x": (2, 3), "z": (2, 2)}, {},
     ["concat"]),
    ("flatten_axis2", "Flatten", [node("Flatten", ["x"], axis=2)], {"x": (2, 3, 4, 5)}, {},
     ["flatten"]),
    ("reshape_zero_minus_one", "Reshape", [node("Reshape", ["x", "s"])], {"x": (2, 3, 4)},
     {"s": I(0, -1, 2)}, ["reshape"]),
    ("transpose_default", "Transpose", [node("Transpose", ["x"])], {"x": (2, 3, 4)}, {},
     ["transpose"]),
    ("transpose_perm", "Transpose", [node("Transpose", ["x"], perm=[0, 2, 1])], {"x": (2, 3, 4)},
     {}, ["transpose"]),
    ("unsqueeze", "Unsqueeze", [node("Unsqueeze", ["x", "a"])], {"x": (2, 3)}, {"a": I(0, -1)},
     ["reshape"]),
    ("squeeze", "Squeeze", [node("Squeeze", ["x", "a"])], {"x": (2, 1, 3, 1)}, {"a": I(1)},
     ["reshape"]),
    ("pad_constant_value", "Pad", [node("Pad", ["x", "p", "v"], mode="constant")],
     {"x": (1, 2, 3, 3)}, {"p": I(0, 0, 1, 2, 0, 0, 2, 0), "v": F(1.5)[0]}, ["pad"]),
    ("pad_reflect", "Pad", [node("Pad", ["x", "p"], mode="reflect")],
     {"x": (1, 2, 4, 5)}, {"p": I(0, 0, 3, 2, 0, 0, 1, 4)}, ["pad"]),
    ("pad_edge", "Pad", [node("Pad", ["x", "p"], mode="edge")],
     {"x": (1, 2, 3, 3)}, {"p": I(0, 1, 2, 0, 0, 0, 1, 3)}, ["pad"]),
    ("resize_nearest_scales_torch", "Resize",
     [node("Resize", ["x", "", "sc"], mode="nearest", coordinate_transformation_mode="asymmetric",
           nearest_mode="floor")],
     {"x": (1, 2, 3, 4)}, {"sc": F(1, 1, 2, 2)}, ["resize"]),
    ("resize_linear_pytorch_half_pixel", "Resize",
     [node("Resize", ["x", "", "", "sz"], mode="linear",
           coordinate_transformation_mode="pytorch_half_pixel")],
     {"x": (1, 2, 4, 4)}, {"sz": I(1, 2, 7, 9)}, ["resize"]),
    ("resize_linear_align_corners", "Resize",
     [node("Resize", ["x", "", "sc"], mode="linear",
           coordinate_transformation_mode="align_corners")],
     {"x": (1, 1, 3, 3)}, {"sc": F(1, 1, 2, 2)}, ["resize"]),
    ("constant_feeds_add", "Constant",
     [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(rand(1, 4), "k")),
      node("Add", ["x", "k"])], {"x": (3, 4)}, {}, ["add"]),
    # A round trip through each half dtype (onnxruntime computes Cast -> op -> Cast in float32).
    ("cast_float16", "Cast",
     [helper.make_node("Cast", ["x"], ["h"], name="to_half", to=TensorProto.FLOAT16),
      node("Cast", ["h"], to=TensorProto.FLOAT)], {"x": (2, 5)}, {}, ["cast", "cast"]),
    ("cast_bfloat16", "Cast",
     [helper.make_node("Cast", ["x"], ["h"], name="to_bfloat16", to=TensorProto.BFLOAT16),
      node("Cast", ["h"], to=TensorProto.FLOAT)], {"x": (2, 5)}, {}, ["cast", "cast"]),
]


BIG = np.iinfo(np.int64).max
ROWS += [
    ("hard_sigmoid_torch", "HardSigmoid", [node("HardSigmoid", ["x"], alpha=1 / 6)],
     {"x": (2, 5)}, {}, ["hard_sigmoid"]),
    ("hard_swish", "HardSwish", [node("HardSwish", ["x"])], {"x": (2, 5)}, {}, ["hard_swish"]),
    ("gelu_tanh", "Gelu", [node("Gelu", ["x"], approximate="tanh")], {"x": (2, 5)}, {},
     ["gelu"]),
    ("swish_alpha", "Swish", [node("Swish", ["x"], alpha=1.5)], {"x": (2, 5)}, {},
     ["mul", "sigmoid", "mul"]),
    ("exp", "Exp", [node("Exp", ["x"])], {"x": (2, 5)}, {}, ["exp"]),
    ("log_of_exp", "Log", [helper.make_node("Exp", ["x"], ["e"], name="exp"),
                           node("Log", ["e"])], {"x": (2, 5)}, {}, ["exp", "log"]),
    ("sqrt_of_exp", "Sqrt", [helper.make_node("Exp", ["x"], ["e"], name="exp"),
                             node("Sqrt", ["e"])], {"x": (2, 5)}, {}, ["exp", "sqrt"]),
    ("erf", "Erf", [node("Erf", ["x"])], {"x": (2, 5)}, {}, ["erf"]),
    ("elu", "Elu", [node("Elu", ["x"], alpha=0.5)], {"x": (2, 5)}, {}, ["elu"]),
    ("selu", "Selu", [node("Selu", ["x"])], {"x": (2, 5)}, {}, ["selu"]),
    ("softplus", "Softplus", [node("Softplus", ["x"])], {"x": (2, 5)}, {}, ["softplus"]),
    ("softsign", "Softsign", [node("Softsign", ["x"])], {"x": (2, 5)}, {}, ["softsign"]),
    ("mish", "Mish", [node("Mish", ["x"])], {"x": (2, 5)}, {}, ["mish"]),
    ("thresholded_relu", "ThresholdedRelu", [node("ThresholdedRelu", ["x"], alpha=0.5)],
     {"x": (2, 5)}, {}, ["thresholded_relu"]),
    ("abs", "Abs", [node("Abs", ["x"])], {"x": (2, 5)}, {}, ["abs"]),
    ("neg", "Neg", [node("Neg", ["x"])], {"x": (2, 5)}, {}, ["neg"]),
    ("reciprocal_of_exp", "Reciprocal", [helper.make_node("Exp", ["x"], ["e"], name="exp"),
                                         node("Reciprocal", ["e"])], {"x": (2, 5)}, {},
     ["exp", "reciprocal"]),
    ("max_of_three", "Max", [node("Max", ["x", "z", "w"])],
     {"x": (2, 5), "z": (5,), "w": (2, 1)}, {}, ["maximum", "maximum"]),
    ("min_of_one", "Min", [node("Min", ["x"])], {"x": (2, 5)}, {}, ["identity"]),
    ("prelu", "PRelu", [node("PRelu", ["x", "slope"])], {"x": (2, 3, 4)},
     {"slope": F(0.1, 0.2, 0.3).reshape(3, 1)}, ["prelu"]),
    ("celu", "Celu", [node("Celu", ["x"], alpha=0.5)], {"x": (2, 5)}, {}, ["celu"]),
    ("log_softmax", "LogSoftmax", [node("LogSoftmax", ["x"], axis=0)], {"x": (2, 5)}, {},
     ["log_softmax"]),
    ("sign", "Sign", [node("Sign", ["x"])], {"x": (2, 5)}, {}, ["sign"]),
    ("floor", "Floor", [node("Floor", ["x"])], {"x": (2, 5)}, {}, ["floor"]),
    ("ceil", "Ceil", [node("Ceil", ["x"])], {"x": (2, 5)}, {}, ["ceil"]),
    ("round", "Round", [node("Round", ["x"])], {"x": (2, 5)}, {}, ["round"]),
    ("and", "And", [helper.make_node("Greater", ["x", "z"], ["c"], name="greater"),
                    helper.make_node("And", ["c", "m"], ["a"], name="and"),
                    node("Where", ["a", "x", "z"])], {"x": (2, 3), "z": (3,)},
     {"m": np.array([True, False, True])}, ["compare", "logical", "where"]),
    ("xor_not", "Xor", [helper.make_node("Greater", ["x", "z"], ["c"], name="greater"),
                        helper.make_node("Not", ["c"], ["n"], name="not"),
                        helper.make_node("Xor", ["n", "m"], ["a"], name="xor"),
                        node("Where", ["a", "x", "z"])], {"x": (2, 3), "z": (3,)},
     {"m": np.array([[True], [False]])}, ["compare", "not", "logical", "where"]),
    ("not", "Not", [helper.make_node("Less", ["x", "z"], ["c"], name="less"),
                    helper.make_node("Not", ["c"], ["n"], name="not"),
                    node("Where", ["n", "x", "z"])], {"x": (2, 3), "z": (3,)}, {},
     ["compare", "not", "where"]),
    ("hardshrink", "Or",   # what torch.onnx.export writes for nn.Hardshrink(0.5)
     [helper.make_node("Greater", ["x", "half"], ["above"], name="above"),
      helper.make_node("Less", ["x", "minus_half"], ["below"], name="below"),
      helper.make_node("Or", ["above", "below"], ["kept"], name="or"),
      helper.make_node("Not", ["kept"], ["dropped"], name="not"),
      helper.make_node("Xor", ["kept", "dropped"], ["true"], name="xor"),
      helper.make_node("And", ["kept", "true"], ["mask"], name="and"),
      node("Where", ["mask", "x", "zero"])], {"x": (2, 5)},
     {"half": F(0.5)[0], "minus_half": F(-0.5)[0], "zero": F(0)[0]},
     ["compare", "compare", "logical", "not", "logical", "logical", "where"]),
    ("pixel_shuffle", "DepthToSpace", [node("DepthToSpace", ["x"], blocksize=2)],
     {"x": (2, 8, 3, 5)}, {}, ["reshape", "transpose", "reshape"]),
    ("depth_to_space_crd", "DepthToSpace", [node("DepthToSpace", ["x"], blocksize=2,
                                                  mode="CRD")],
     {"x": (1, 12, 2, 3)}, {}, ["reshape", "transpose", "reshape"]),
    ("space_to_depth", "SpaceToDepth", [node("SpaceToDepth", ["x"], blocksize=3)],
     {"x": (2, 2, 6, 3)}, {}, ["reshape", "transpose", "reshape"]),
    ("pow_int_exponent", "Pow", [node("Pow", ["x", "p"])], {"x": (2, 5)}, {"p": I(2)},
     ["pow"]),
    ("pow_runtime_exponent", "Pow", [node("Pow", ["x", "z"])], {"x": (2, 5), "z": (5,)}, {},
     ["pow"]),
    ("where", "Where", [node("Where", ["c", "x", "z"])], {"x": (2, 3), "z": (3,)},
     {"c": np.array([[True], [False]])}, ["where"]),
    ("relu_by_where", "Greater",
     [helper.make_node("Greater", ["x", "zero"], ["positive"], name="greater"),
      node("Where", ["positive", "x", "zero"])], {"x": (2, 3)}, {"zero": F(0)[0]},
     ["compare", "where"]),
    ("less", "Less", [helper.make_node("Less", ["x", "z"], ["c"], name="less"),
                      node("Where", ["c", "x", "z"])], {"x": (2, 3), "z": (3,)}, {},
     ["compare", "where"]),
    ("equal", "Equal", [helper.make_node("Equal", ["x", "x"], ["c"], name="equal"),
                        node("Where", ["c", "x", "z"])], {"x": (2, 3), "z": (3,)}, {},
     ["compare", "where"]),
    ("greater_or_equal", "GreaterOrEqual",
     [helper.make_node("GreaterOrEqual", ["x", "z"], ["c"], name="ge"),
      node("Where", ["c", "x", "z"])], {"x": (2, 3), "z": (3,)}, {}, ["compare", "where"]),
    ("less_or_equal", "LessOrEqual",
     [helper.make_node("LessOrEqual", ["x", "z"], ["c"], name="le"),
      node("Where", ["c", "x", "z"])], {"x": (2, 3), "z": (3,)}, {}, ["compare", "where"]),
    ("reduce_mean_last_axis", "ReduceMean", [node("ReduceMean", ["x", "a"])], {"x": (2, 3, 4)},
     {"a": I(-1)}, ["reduce_mean"]),
    ("reduce_sum_all", "ReduceSum", [node("ReduceSum", ["x"], keepdims=0)], {"x": (2, 3, 4)},
     {}, ["reduce_sum"]),
    ("reduce_sum_noop", "ReduceSum", [node("ReduceSum", ["x"], noop_with_empty_axes=1)],
     {"x": (2, 3)}, {}, ["identity"]),
    ("reduce_max_axes_attr", "ReduceMax", [node("ReduceMax", ["x"], axes=[0, 2], keepdims=0)],
     {"x": (2, 3, 4)}, {}, ["reduce_max"]),
    ("instance_norm", "InstanceNormalization",
     [node("InstanceNormalization", ["x", "s", "b"], epsilon=1e-3)], {"x": (2, 3, 4, 5)},
     {"s": rand(3), "b": rand(3)}, ["instance_norm"]),
    ("layer_norm", "LayerNormalization",
     [node("LayerNormalization", ["x", "s", "b"], epsilon=1e-6)], {"x": (2, 3, 8)},
     {"s": rand(8), "b": rand(8)}, ["layer_norm"]),
    ("layer_norm_axis1_no_bias", "LayerNormalization",
     [node("LayerNormalization", ["x", "s"], axis=1)], {"x": (2, 3, 4)}, {"s": rand(1, 4)},
     ["layer_norm"]),
    ("expand", "Expand", [node("Expand", ["x", "s"])], {"x": (3, 1)}, {"s": I(2, 1, 4)},
     ["expand"]),
    ("tile", "Tile", [node("Tile", ["x", "r"])], {"x": (2, 3)}, {"r": I(1, 3)}, ["tile"]),
    ("slice_torch_to_end", "Slice", [node("Slice", ["x", "s", "e", "a"])], {"x": (2, 6, 4)},
     {"s": I(2), "e": I(BIG), "a": I(1)}, ["slice"]),
    ("slice_reverse_step", "Slice", [node("Slice", ["x", "s", "e", "a", "st"])],
     {"x": (2, 6, 4)}, {"s": I(-1, 3), "e": I(-BIG - 1, 0), "a": I(1, 2), "st": I(-2, -1)},
     ["slice"]),
    ("split_sizes", "Split",
     [helper.make_node("Split", ["x", "sp"], ["a", "b"], name="split", axis=1),
      node("Sub", ["a", "b"])], {"x": (2, 6, 3)}, {"sp": I(3, 3)}, ["slice", "slice", "sub"]),
    ("gather_scalar_index", "Gather", [node("Gather", ["x", "i"], axis=1)], {"x": (2, 5, 3)},
     {"i": I(-1)[0]}, ["gather"]),
    ("lstm_bidirectional_initial_h", "LSTM",
     [node("LSTM", ["x", "w", "r", "b", "", "h"], ["", "y"], hidden_size=4,
           direction="bidirectional")], {"x": (3, 2, 5)},
     {"w": rand(2, 16, 5), "r": rand(2, 16, 4), "b": rand(2, 32), "h": rand(2, 2, 4)}, ["lstm"]),
    ("lstm_sequence_lens_no_bias", "LSTM",
     [node("LSTM", ["x", "w", "r", "", "lens"], ["y"], hidden_size=4, clip=3.0)],
     {"x": (3, 2, 5)}, {"w": rand(1, 16, 5), "r": rand(1, 16, 4), "lens": np.array([3, 1],
                                                                                    np.int32)},
     ["lstm"]),
    ("gru_reverse_linear_before_reset", "GRU",
     [node("GRU", ["x", "w", "r", "b"], ["", "y"], hidden_size=4, linear_before_reset=1,
           direction="reverse", activations=["HardSigmoid", "Tanh"], activation_alpha=[0.3],
           activation_beta=[0.6])],
     {"x": (3, 2, 5)}, {"w": rand(1, 12, 5), "r": rand(1, 12, 4), "b": rand(1, 24)}, ["gru"]),
    ("argmax_cast", "ArgMax", [node("ArgMax", ["x"], ["i"], axis=1, keepdims=0),
                               node("Cast", ["i"], to=TensorProto.FLOAT)], {"x": (3, 5, 2)}, {},
     ["argmax", "cast"]),
    ("argmin_last_index", "ArgMin", [node("ArgMin", ["x"], ["i"], axis=-1, select_last_index=1),
                                     node("Cast", ["i"], to=TensorProto.FLOAT)], {"x": (3, 5)},
     {}, ["argmin", "cast"]),
    ("cumsum_reverse", "CumSum", [node("CumSum", ["x", "a"], reverse=1, exclusive=1)],
     {"x": (3, 5)}, {"a": I(-1)[0]}, ["cumsum"]),
    # 3-D pools whose window spans two runs of axes run in 2-D (torch's LocalResponseNorm)
    ("average_pool_3d_over_channels", "AveragePool",
     [node("AveragePool", ["x"], kernel_shape=[3, 1, 1], pads=[1, 0, 0, 1, 0, 0])],
     {"x": (2, 1, 6, 4, 5)}, {}, ["reshape", "avg_pool2d", "reshape"]),
    ("max_pool_3d_unit_depth", "MaxPool",
     [node("MaxPool", ["x"], kernel_shape=[1, 2, 3], strides=[1, 2, 2], ceil_mode=1)],
     {"x": (1, 2, 3, 7, 8)}, {}, ["reshape", "max_pool2d", "reshape"]),
    # MaxPool's Indices output alone (its values unread) and beside the values.
    ("max_pool_indices", "MaxPool",
     [node("MaxPool", ["x"], ["v", "i"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
      node("Cast", ["i"], to=TensorProto.FLOAT)], {"x": (2, 3, 7, 8)}, {},
     ["max_pool2d_indices", "cast"]),
    ("max_pool_indices_storage_order", "MaxPool",
     [node("MaxPool", ["x"], ["v", "i"], kernel_shape=[2, 2], strides=[2, 2], storage_order=1),
      helper.make_node("Cast", ["i"], ["f"], to=TensorProto.FLOAT),
      helper.make_node("Add", ["v", "f"], ["y"])], {"x": (1, 2, 6, 5)}, {},
     ["max_pool2d", "max_pool2d_indices", "cast", "add"]),
    ("max_pool_indices_1d", "MaxPool",
     [node("MaxPool", ["x"], ["v", "i"], kernel_shape=[3], strides=[2]),
      node("Cast", ["i"], to=TensorProto.FLOAT)], {"x": (2, 3, 9)}, {},
     ["reshape", "max_pool2d", "max_pool2d_indices", "reshape", "reshape", "cast"]),
    ("max_unpool", "MaxUnpool",
     [node("MaxPool", ["x"], ["v", "i"], kernel_shape=[2, 2], strides=[2, 2]),
      node("MaxUnpool", ["v", "i"], kernel_shape=[2, 2], strides=[2, 2])], {"x": (2, 3, 6, 8)},
     {}, ["max_pool2d", "max_pool2d_indices", "max_unpool2d"]),
    ("reduce_min_axes_attr", "ReduceMin", [node("ReduceMin", ["x"], axes=[0, 2], keepdims=0)],
     {"x": (3, 4, 5)}, {}, ["reduce_min"]),
    ("reduce_prod", "ReduceProd", [node("ReduceProd", ["x"], axes=[-1])], {"x": (3, 4, 5)}, {},
     ["reduce_prod"]),
    ("reduce_l1_all", "ReduceL1", [node("ReduceL1", ["x"], keepdims=0)], {"x": (3, 4, 5)}, {},
     ["reduce_l1"]),
    ("reduce_l2", "ReduceL2", [node("ReduceL2", ["x"], axes=[1])], {"x": (2, 3, 4, 4)}, {},
     ["reduce_l2"]),
    ("reduce_sum_square", "ReduceSumSquare", [node("ReduceSumSquare", ["x"], axes=[1, 2])],
     {"x": (2, 3, 4)}, {}, ["reduce_sum_square"]),
    ("reduce_log_sum_exp", "ReduceLogSumExp", [node("ReduceLogSumExp", ["x"], axes=[1])],
     {"x": (2, 5, 3)}, {}, ["reduce_log_sum_exp"]),
    ("reduce_min_axes_input", "ReduceMin", [node("ReduceMin", ["x", "axes"], keepdims=1)],
     {"x": (2, 3, 4, 4)}, {"axes": I(2, 3)}, ["reduce_min"]),
    ("pad_wrap", "Pad", [node("Pad", ["x", "p"], mode="wrap")], {"x": (1, 2, 3, 4)},
     {"p": I(0, 0, 4, 1, 0, 0, 2, 6)}, ["pad"]),
]
# Rows that need a newer opset than 17 (axes as an input, newer ops).
OPSET = {"reduce_mean_spatial": 18, "reduce_mean_last_axis": 18, "reduce_max_axes_attr": 17,
         "reduce_min_axes_input": 18, "pad_wrap": 19,
         "gelu_tanh": 20, "swish_alpha": 24, "mish": 18}


def reference_outputs(model, feeds):
    # onnxruntime, not onnx.reference: the latter's LRN disagrees with the ONNX formula. int8
    # operands run unsigned, so that integer products are exact on CPUs without VNNI too.
    return onnxruntime_outputs(model, feeds)


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_conversion_matches_onnx_reference(row):
    row_id, _, nodes, inputs, initializers, expected_ops = row
    model = make_model(nodes, inputs, ["y"], initializers, opset=OPSET.get(row_id, 17))
    graph = load_onnx(model)
    assert [n.op_name for n in graph.topological_order()] == expected_ops
    feeds = {name: rand(*shape) for name, shape in inputs.items()}
    expected = reference_outputs(model, feeds)
    found = go.interpret(graph, feeds)
    np.testing.assert_allclose(found["y"], expected["y"], rtol=1e-5, atol=1e-5)


def int8s(*shape, dtype="int8"):
    """Integers over the whole range of `dtype`."""
    info = np.iinfo(dtype)
    return RNG.integers(info.min, int(info.max) + 1, shape).astype(dtype)


def U8(*values):
    return np.array(values, np.uint8)


def I8(*values):
    return np.array(values, np.int8)


# Quantized ops, on typed inputs: (id, ONNX op covered, nodes, feeds {name: array}, initializers,
# output dtype, expected graphopt ops, opset), each checked against onnxruntime exactly.
QUANTIZED_ROWS = [
    ("quantize_per_axis", "QuantizeLinear", [node("QuantizeLinear", ["x", "s", "z"], axis=1)],
     {"x": rand(2, 3, 4) * 40}, {"s": F(0.1, 0.5, 2.0), "z": U8(0, 128, 250)}, "uint8",
     ["quantize_linear"], 13),
    ("quantize_without_zero_point", "QuantizeLinear", [node("QuantizeLinear", ["x", "s"])],
     {"x": rand(3, 5) * 40}, {"s": F(0.25)[0]}, "uint8", ["quantize_linear"], 19),
    ("quantize_output_dtype", "QuantizeLinear",
     [node("QuantizeLinear", ["x", "s"], output_dtype=TensorProto.INT8)],
     {"x": rand(3, 5) * 40}, {"s": F(0.25)[0]}, "int8", ["quantize_linear"], 21),
    ("quantize_blocked", "QuantizeLinear",
     [node("QuantizeLinear", ["x", "s", "z"], axis=0, block_size=2)],
     {"x": rand(5, 3) * 40}, {"s": np.abs(rand(3, 3)) + 0.1, "z": int8s(3, 3)}, "int8",
     ["quantize_linear"], 21),
    ("dequantize_int32_without_zero_point", "DequantizeLinear",
     [node("DequantizeLinear", ["x", "s"])],
     {"x": RNG.integers(-10**6, 10**6, (2, 6)).astype(np.int32)}, {"s": F(1e-4)[0]},
     "float32", ["dequantize_linear"], 13),
    ("dequantize_per_axis", "DequantizeLinear", [node("DequantizeLinear", ["x", "s", "z"])],
     {"x": int8s(2, 3, 4, dtype="uint8")}, {"s": F(0.1, 0.5, 2.0), "z": U8(0, 128, 255)},
     "float32", ["dequantize_linear"], 13),
    ("conv_integer_pads_stride", "ConvInteger",
     [node("ConvInteger", ["x", "w", "xz"], pads=[1, 0, 2, 1], strides=[2, 1])],
     {"x": int8s(1, 3, 7, 6, dtype="uint8")}, {"w": int8s(4, 3, 3, 3), "xz": U8(128)[0]},
     "int32", ["conv2d_integer"], 13),
    ("conv_integer_1d_group", "ConvInteger",
     [node("ConvInteger", ["x", "w", "xz", "wz"], group=2, auto_pad="SAME_UPPER")],
     {"x": int8s(1, 4, 9)}, {"w": int8s(4, 2, 3, dtype="uint8"), "xz": I8(-3)[0],
                             "wz": U8(7)[0]},
     "int32", ["reshape", "conv2d_integer", "reshape"], 13),
    ("matmul_integer_per_column", "MatMulInteger",
     [node("MatMulInteger", ["a", "b", "az", "bz"])],
     {"a": int8s(2, 3, 6, dtype="uint8")}, {"b": int8s(6, 4), "az": U8(128)[0],
                                          "bz": I8(0, 1, -1, 100)},
     "int32", ["matmul_integer"], 13),
    ("qlinear_conv_bias_per_channel", "QLinearConv",
     [node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
           auto_pad="SAME_UPPER", strides=[2, 2])],
     {"x": int8s(1, 3, 7, 7, dtype="uint8")},
     {"xs": F(0.02)[0], "xz": U8(128)[0], "w": int8s(4, 3, 3, 3),
      "ws": F(0.004, 0.006, 0.005, 0.01), "wz": I8(0, 0, 0, 0), "ys": F(0.3)[0], "yz": U8(100)[0],
      "b": RNG.integers(-2000, 2000, 4).astype(np.int32)},
     "uint8", ["qlinear_conv2d"], 13),
    ("qlinear_conv_int8_group", "QLinearConv",
     [node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], group=2,
           pads=[1, 1, 1, 1])],
     {"x": int8s(1, 4, 5, 5)},
     {"xs": F(0.05)[0], "xz": I8(1)[0], "w": int8s(2, 2, 3, 3), "ws": F(0.01)[0],
      "wz": I8(0)[0], "ys": F(0.4)[0], "yz": I8(-2)[0]},
     "int8", ["qlinear_conv2d"], 13),
    # quantize_static's QDQ form of a constant pad value (a ZeroPad2d): known at import
    ("pad_value_quantized_and_dequantized", "Pad",
     [node("QuantizeLinear", ["v", "s", "z"], ["vq"]),
      node("DequantizeLinear", ["vq", "s", "z"], ["vd"]),
      node("Pad", ["x", "p", "vd"], mode="constant")],
     {"x": rand(1, 2, 3, 3)}, {"v": F(0.7)[0], "s": F(0.1)[0], "z": U8(3)[0],
                               "p": I(0, 0, 1, 2, 0, 0, 2, 0)},
     "float32", ["pad"], 13),
    ("qlinear_matmul_per_column", "QLinearMatMul",
     [node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"])],
     {"a": int8s(2, 3, 6, dtype="uint8")},
     {"as": F(0.03)[0], "az": U8(120)[0], "b": int8s(6, 4), "bs": F(0.01, 0.02, 0.03, 0.04),
      "bz": I8(0, 0, 0, 0), "ys": F(0.2)[0], "yz": U8(130)[0]},
     "uint8", ["qlinear_matmul"], 13),
]


def make_typed_model(nodes, feeds, initializers, out_dtype, opset, out_shape=None):
    graph = helper.make_graph(
        nodes, "case",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in feeds.items()],
        [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(out_dtype)),
                                       out_shape)],
        initializer=[numpy_helper.from_array(np.asarray(a), n) for n, a in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(model)   # fills in the output's shape if unknown


@pytest.mark.parametrize("row", QUANTIZED_ROWS, ids=[r[0] for r in QUANTIZED_ROWS])
def test_quantized_conversion_matches_onnxruntime(row):
    _, _, nodes, feeds, initializers, out_dtype, expected_ops, opset = row
    model = make_typed_model(nodes, feeds, initializers, out_dtype, opset)
    graph = load_onnx(model)
    assert [n.op_name for n in graph.topological_order()] == expected_ops
    model.ir_version = min(model.ir_version, 10)   # what this onnxruntime reads
    expected = reference_outputs(model, feeds)["y"]
    found = go.interpret(graph, feeds)["y"]
    assert found.dtype == expected.dtype
    np.testing.assert_array_equal(found, expected)


@pytest.mark.parametrize("nodes, x, initializers, opset, out, message", [
    ([node("QuantizeLinear", ["x", "s"])], rand(4).astype(np.float16), {"s": np.float16(0.5)},
     23, ("uint8", [4]), "QuantizeLinear .division in float16"),
    ([node("QuantizeLinear", ["x", "s"], output_dtype=TensorProto.INT16)], rand(4),
     {"s": F(0.5)[0]}, 21, ("int16", [4]), "output dtype int16"),
    ([node("MatMulInteger", ["x", "b", "az"])], int8s(3, 4), {"b": int8s(4, 2), "az": I8(1, 2, 3)},
     13, ("int32", [3, 2]), r"a_zero_point of shape \(3,\)"),
    ([node("QLinearMatMul", ["x", "as", "az", "b", "bs", "bz", "ys", "yz"])], int8s(4),
     {"as": F(0.1)[0], "az": I8(0)[0], "b": int8s(4, 2), "bs": F(0.1)[0], "bz": I8(0)[0],
      "ys": F(0.1)[0], "yz": I8(0)[0]}, 13, ("int8", [2]), "1-D operand"),
], ids=["float16-division", "int16-output", "per-row-zero-point", "1-d-operand"])
def test_unsupported_quantized_forms_are_named(nodes, x, initializers, opset, out, message):
    model = make_typed_model(nodes, {"x": x}, initializers, out[0], opset, out[1])
    with pytest.raises(UnsupportedOpError, match=message):
        load_onnx(model)


def test_quantize_output_dtype_must_agree_with_the_zero_point():
    model = make_typed_model(
        [node("QuantizeLinear", ["x", "s", "z"], output_dtype=TensorProto.INT8)],
        {"x": rand(4)}, {"s": F(0.5)[0], "z": U8(3)[0]}, "int8", 21, [4])
    with pytest.raises(ModelFormatError, match="output_dtype int8 differs from the zero point's "
                                               "dtype uint8"):
        load_onnx(model)


def test_every_table_entry_has_a_row():
    covered = {row[1] for row in ROWS} | {row[1] for row in QUANTIZED_ROWS}
    assert set(TABLE) <= covered, f"no test row for {sorted(set(TABLE) - covered)}"


def test_names_are_kept():
    model = make_model([helper.make_node("Conv", ["x", "layer1.conv.weight"], ["layer1.out"],
                                         name="layer1/conv", pads=[1, 1, 1, 1]),
                        helper.make_node("Relu", ["layer1.out"], ["y"], name="layer1/relu")],
                       {"x": (1, 2, 5, 5)}, ["y"], {"layer1.conv.weight": rand(3, 2, 3, 3)})
    graph = load_onnx(model)
    assert [n.name for n in graph.nodes] == ["layer1/conv", "layer1/relu"]
    assert list(graph.constants) == ["layer1.conv.weight"]
    assert graph.node("layer1/conv").output.name == "layer1.out"
    assert graph.input_names == ["x"] and graph.output_names == ["y"]


def torch_style_flatten_chain():
    """What torch.onnx.export writes for `x.reshape(x.size(0), -1)`."""
    return [
        helper.make_node("Shape", ["x"], ["shape"], name="/Shape"),
        helper.make_node("Constant", [], ["zero"], name="/Constant",
                         value=numpy_helper.from_array(np.array(0, np.int64))),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], name="/Gather", axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes"], ["batch1"], name="/Unsqueeze"),
        helper.make_node("Concat", ["batch1", "minus_one"], ["target"], name="/Concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="/Reshape"),
    ]


def test_shape_gather_unsqueeze_concat_reshape_chain_folds_to_a_static_reshape():
    model = make_model(torch_style_flatten_chain(), {"x": (2, 3, 4, 4)}, ["y"],
                       {"axes": I(0), "minus_one": I(-1)})
    graph = load_onnx(model)
    assert [n.op_name for n in graph.nodes] == ["reshape"]
    assert graph.outputs[0].shape == (2, 48)
    assert not graph.constants   # the chain's constants were used up by folding
    x = rand(2, 3, 4, 4)
    np.testing.assert_array_equal(go.interpret(graph, {"x": x})["y"], x.reshape(2, -1))


def test_old_opset_is_upgraded():
    # Opset 10 Clip takes min/max as attributes; the version converter moves them to inputs.
    model = make_model([node("Clip", ["x"], min=-0.2, max=0.3)], {"x": (4, 4)}, ["y"], opset=10)
    graph = load_onnx(model)
    assert graph.nodes[0].op == go.ops.Clip(-0.2, 0.3)
    x = rand(4, 4)
    np.testing.assert_allclose(go.interpret(graph, {"x": x})["y"], np.clip(x, -0.2, 0.3))


def test_symbolic_batch_needs_input_shapes():
    model = make_model([node("Relu", ["x"])], {"x": ("batch", 3)}, ["y"])
    with pytest.raises(ModelFormatError, match="symbolic dimensions.*batch"):
        load_onnx(model)
    graph = load_onnx(model, input_shapes={"x": (5, 3)})
    assert graph.inputs[0].shape == (5, 3)


def test_unsupported_ops_are_all_listed_with_counts():
    model = make_model([helper.make_node("Sin", ["x"], ["b"], name="sin1"),
                        helper.make_node("Sin", ["b"], ["c"], name="sin2"),
                        helper.make_node("Pad", ["x", "p"], ["d"], name="pad1"),
                        helper.make_node("Cos", ["d"], ["e"], name="cos1"),
                        node("Add", ["c", "e"], ["y"])],
                       {"x": (2, 3)}, [], {"p": I(0, -1, 0, 1)}, opset=19)
    model.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]))
    with pytest.raises(UnsupportedOpError) as info:
        load_onnx(model)
    message = str(info.value)
    assert "3 unsupported" in message
    assert "Sin: 2 nodes [sin1, sin2]" in message
    assert "Cos: 1 node [cos1]" in message
    assert "Pad (negative pads (cropping)): 1 node [pad1]" in message


def test_unsupported_list_names_root_causes_domains_and_forms_after_a_failure():
    """After an unsupported node, the nodes that use its output are converted on a stand-in of
    the type ONNX's shape inference gives it: a shape chain folds (no Gather, Concat or Reshape
    listed), a supported op's unsupported form is named, a custom-domain op keeps its domain, and
    past a value of unknown type only ops with no graphopt form at all are listed."""
    nodes = [helper.make_node("Sin", ["x"], ["s"], name="sin"),
             *[helper.make_node(n.op_type, [{"x": "s"}.get(i, i) for i in n.input],
                                [{"y": "flat"}.get(o, o) for o in n.output], name=n.name,
                                **{a.name: helper.get_attribute_value(a) for a in n.attribute})
               for n in torch_style_flatten_chain()],
             helper.make_node("Pad", ["flat", "p"], ["padded"], name="pad"),
             helper.make_node("Frob", ["s"], ["frobbed"], name="frob", domain="com.example"),
             helper.make_node("Shape", ["frobbed"], ["frob_shape"], name="frob_shape"),
             helper.make_node("ConstantOfShape", ["frob_shape"], ["zeros"], name="zeros"),
             helper.make_node("Cos", ["zeros"], ["y"], name="cos")]
    graph = helper.make_graph(
        nodes, "case", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 3, 4, 4))],
        [helper.make_tensor_value_info("padded", TensorProto.FLOAT, (2, 50)),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, (2, 3, 4, 4))],
        initializer=[numpy_helper.from_array(a, n) for n, a in
                     {"axes": I(0), "minus_one": I(-1), "p": I(0, -1, 0, 3)}.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    with pytest.raises(UnsupportedOpError) as info:
        load_onnx(model)
    message = str(info.value)
    assert "4 unsupported" in message, message
    for part in ("Sin: 1 node [sin]", "Pad (negative pads (cropping)): 1 node [pad]",
                 "com.example.Frob: 1 node [frob]", "Cos: 1 node [cos]"):
        assert part in message, message
    for op in ("Gather", "Concat", "Reshape", "ConstantOfShape", "Unsqueeze"):
        assert op not in message, message


def test_runtime_shape_input_is_unsupported_form():
    model = make_model([node("Reshape", ["x", "s"])], {"x": (2, 3)}, [])
    model.graph.input.append(helper.make_tensor_value_info("s", TensorProto.INT64, [2]))
    model.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2]))
    with pytest.raises(UnsupportedOpError, match=r"shape \(input 1\) must be a constant"):
        load_onnx(model)
    graph = load_onnx(model, constant_inputs={"s": I(3, 2)})
    assert graph.output_names == ["y"] and graph.outputs[0].shape == (3, 2)


def shape_test_if(width, then_op="Relu", opset=17):
    """y = If(x.shape[3] == 5, then_op(h), Neg(h)) with h = Sigmoid(x), which both branches read
    from the main graph; the If is listed before the nodes it depends on."""
    def branch(op, out):
        return helper.make_graph([helper.make_node(op, ["h"], [out], name=op.lower())], op, [],
                                 [helper.make_tensor_value_info(out, TensorProto.FLOAT,
                                                                (2, 3, 4, width))])
    nodes = [helper.make_node("If", ["c"], ["y"], name="if", then_branch=branch(then_op, "t"),
                              else_branch=branch("Neg", "e")),
             helper.make_node("Sigmoid", ["x"], ["h"], name="sigmoid"),
             helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "three"], ["d"], name="width"),
             helper.make_node("Equal", ["d", "five"], ["c"], name="equal")]
    return make_model(nodes, {"x": (2, 3, 4, width)}, ["y"], {"three": I(3)[0], "five": I(5)[0]},
                      opset=opset)


@pytest.mark.parametrize("width", [5, 6])
def test_if_on_a_known_condition_imports_its_branch(width):
    """Exporters test shapes with an If (torch's LocalResponseNorm): the branch the shapes pick
    is imported, after the nodes its branch reads, even when the model lists it before them."""
    graph = load_onnx(shape_test_if(width))
    assert [n.op_name for n in graph.topological_order()] == \
        ["sigmoid", "relu" if width == 5 else "neg", "identity"]    # (y names the branch's t)
    x = rand(2, 3, 4, width)
    h = 1 / (1 + np.exp(-x))
    expected = np.maximum(h, 0) if width == 5 else -h
    np.testing.assert_allclose(go.interpret(graph, {"x": x})["y"], expected, rtol=1e-6)


def runtime_if(shape=(1,), else_width=5):
    """shape_test_if(5) whose condition is a graph input `c` of `shape`; its else branch's
    output declared `else_width` wide (another width: a Slice of the Neg)."""
    model = shape_test_if(5)
    del model.graph.node[2:]
    model.graph.input.append(helper.make_tensor_value_info("c", TensorProto.BOOL, shape))
    if else_width != 5:
        branch = next(a.g for a in model.graph.node[0].attribute if a.name == "else_branch")
        branch.node.append(helper.make_node("Slice", ["e", "zero", "end", "three"], ["cut"]))
        branch.initializer.extend([numpy_helper.from_array(I(0), "zero"),
                                   numpy_helper.from_array(I(else_width), "end")])
        del branch.output[:]
        branch.output.append(helper.make_tensor_value_info("cut", TensorProto.FLOAT,
                                                           (2, 3, 4, else_width)))
    return model


@pytest.mark.parametrize("shape", [(), (1,)])
def test_if_on_a_runtime_condition_selects_between_both_branches(shape):
    """Both branches are computed and a Where picks each output, as onnxruntime's If would."""
    graph = load_onnx(runtime_if(shape))
    assert sorted(n.op_name for n in graph.nodes) == ["neg", "relu", "reshape", "sigmoid",
                                                      "where"]
    session = ort.InferenceSession(runtime_if(shape).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    compiled = go.compile(graph)
    for value in (True, False):
        feeds = {"x": rand(2, 3, 4, 5), "c": np.full(shape, value)}
        expected = session.run(None, feeds)[0]
        np.testing.assert_allclose(go.interpret(graph, feeds)["y"], expected, rtol=1e-6)
        np.testing.assert_allclose(compiled.run(feeds)["y"], expected, rtol=1e-6)


def test_if_on_a_runtime_condition_or_with_an_unsupported_branch_is_named():
    with pytest.raises(UnsupportedOpError, match=r"If \(branches whose output 0 differs "
                       r"\(float32\[2,3,4,5\] and float32\[2,3,4,3\]\)"):
        load_onnx(runtime_if(else_width=3))
    with pytest.raises(UnsupportedOpError) as info:   # the root cause: the branch's Sin
        load_onnx(shape_test_if(5, then_op="Sin"))
    assert "1 unsupported" in str(info.value) and "Sin: 1 node [if/sin]" in str(info.value)
    model = shape_test_if(5)     # a condition computed from an unsupported node: that node
    del model.graph.node[2:]
    model.graph.node.extend([helper.make_node("Sin", ["x"], ["s"], name="sin"),
                             helper.make_node("ReduceMax", ["s"], ["m"], keepdims=0),
                             helper.make_node("Greater", ["m", "zero"], ["c"])])
    model.graph.initializer.append(numpy_helper.from_array(np.float32(0), "zero"))
    with pytest.raises(UnsupportedOpError) as info:
        load_onnx(model)
    assert "1 unsupported" in str(info.value) and "Sin: 1 node [sin]" in str(info.value)


def test_load_from_path_and_bytes(tmp_path):
    model = make_model([node("Relu", ["x"])], {"x": (2, 3)}, ["y"])
    path = tmp_path / "relu.onnx"
    onnx.save_model(model, path)
    for source in (path, str(path), path.read_bytes(), model):
        assert [n.op_name for n in go.load_onnx(source).nodes] == ["relu"]


def valid_at(row, opset) -> bool:
    try:
        onnx.checker.check_model(make_model(row[2], row[3], ["y"], row[4], opset=opset))
        return True
    except onnx.checker.ValidationError:
        return False   # the form changed in that opset (an attribute became an input, ...)


# onnxruntime 1.32 finds no Swish kernel when the model's opset is past 24.
NOT_SWEPT = {"swish_alpha"}
SWEEP = [(row, opset) for row in ROWS if row[0] not in NOT_SWEPT
         for opset in (13, 19, onnx.defs.onnx_opset_version())
         if opset != OPSET.get(row[0], 17) and valid_at(row, opset)]


@pytest.mark.parametrize("row, opset", SWEEP, ids=[f"{r[0]}-opset{o}" for r, o in SWEEP])
def test_conversion_across_opsets(row, opset):
    """The same forms from opset 13 to the newest the onnx package defines."""
    row_id, _, nodes, inputs, initializers, expected_ops = row
    model = make_model(nodes, inputs, ["y"], initializers, opset=opset)
    graph = load_onnx(model)
    assert [n.op_name for n in graph.topological_order()] == expected_ops
    feeds = {name: rand(*shape) for name, shape in inputs.items()}
    np.testing.assert_allclose(go.interpret(graph, feeds)["y"], reference_outputs(model, feeds)["y"],
                               rtol=1e-5, atol=1e-5)


# ---- declared shapes: ONNX Runtime's rule (warn, use the inferred shape) ------------------------
def declared(name, dims):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def conv_relu_model(value_info=(), output_dims=None):
    model = make_model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                        helper.make_node("Relu", ["c"], ["y"], name="relu")],
                       {"x": (1, 3, 6, 8)}, [], {"w": rand(8, 3, 3, 3)})
    model.graph.output.append(declared("y", output_dims))
    model.graph.value_info.extend(value_info)
    return model


def test_minus_one_and_named_declared_dims_are_symbolic():
    """What onnx's version converter writes for a PaddleOCR model (-1 for unknown sizes)."""
    import warnings
    model = conv_relu_model([declared("c", [-1, 8, "h", None])], [-1, 8, "?", "?"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graph = load_onnx(model)
    assert graph.outputs[0].shape == (1, 8, 6, 8)


@pytest.mark.parametrize("value_info, output_dims, message", [
    ([declared("c", [1, 8, 24, 96])], [1, 8, 6, 8],
     r"node 'conv' \(conv2d\): 'c' is declared with shape \[1, 8, 24, 96\] but computes "
     r"float32\[1,8,6,8\]; using the computed shape"),
    ([], [1, 9, 6], r"node 'relu' \(relu\): 'y' is declared with shape \[1, 9, 6\] but computes "
                    r"float32\[1,8,6,8\]"),
], ids=["value_info", "graph_output_rank"])
def test_declared_shape_that_disagrees_warns_and_is_inferred(value_info, output_dims, message):
    model = conv_relu_model(value_info, output_dims)
    with pytest.warns(DeclaredShapeWarning, match=message):
        graph = load_onnx(model)
    assert graph.outputs[0].shape == (1, 8, 6, 8)
    feeds = {"x": rand(1, 3, 6, 8)}   # onnxruntime warns too, and computes the same
    np.testing.assert_allclose(go.interpret(graph, feeds)["y"],
                               reference_outputs(model, feeds)["y"], rtol=1e-5, atol=1e-5)


def test_minus_one_input_dim_is_symbolic():
    model = make_model([node("Relu", ["x"])], {"x": (-1, 3)}, ["y"])
    with pytest.raises(ModelFormatError, match=r"symbolic dimensions \['\?'\]"):
        load_onnx(model)
    assert load_onnx(model, input_shapes={"x": (2, 3)}).outputs[0].shape == (2, 3)


@pytest.mark.parametrize("nodes, inputs, initializers, error, message", [
    ([helper.make_node("Split", ["x", "s"], ["a", "b"], name="split", axis=1),
      node("Add", ["a", "b"])], {"x": (2, 6)}, {"s": I(2, 3)}, ModelFormatError,
     r"node 'split' \(Split\): cannot split axis 1 of float32\[2,6\] into 2 outputs of sizes "
     r"\[2, 3\]"),
    ([node("Slice", ["x", "s", "e", "a", "st"])], {"x": (2, 6)},
     {"s": I(0), "e": I(4), "a": I(1), "st": I(0)}, go.ShapeError,
     r"node 'slice_node' \(slice\): expected non-zero steps, found \(0,\)"),
    ([node("LayerNormalization", ["x", "s"])], {"x": (2, 6)}, {"s": rand(4)}, go.ShapeError,
     r"node 'layernormalization_node' \(layer_norm\): expected scale broadcastable to \(6,\)"),
    ([node("ReduceSum", ["x", "a"])], {"x": (2, 6)}, {"a": I(2)}, go.ShapeError,
     r"node 'reducesum_node' \(reduce_sum\): expected axes in \[-2, 2\), found \[2\]"),
    ([node("Gather", ["x", "i"], axis=2)], {"x": (2, 6)}, {"i": I(0)}, go.ShapeError,
     r"node 'gather_node' \(gather\): expected axis in \[-2, 2\), found 2"),
], ids=["split-sizes", "slice-step-0", "layer-norm-scale", "reduce-axis", "gather-axis"])
def test_malformed_new_op_forms_name_the_node(nodes, inputs, initializers, error, message):
    graph = helper.make_graph(
        nodes, "case",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[numpy_helper.from_array(np.asarray(a), n) for n, a in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(error, match=message):
        load_onnx(model)


def test_gather_index_out_of_range_is_an_input_error():
    model = make_model([node("Gather", ["x", "i"], axis=1)], {"x": (2, 5)}, ["y"],
                       {"i": I(1)[0]})
    model.graph.node[0].input[1] = "index"
    model.graph.input.append(helper.make_tensor_value_info("index", TensorProto.INT64, []))
    model.graph.initializer.pop()
    graph = load_onnx(model)
    with pytest.raises(go.InputError, match=r"node '.*' \(gather\): gather index 5 is out of "
                                            r"range \[-5, 5\) for axis 1 of float32\[2,5\]"):
        go.interpret(graph, {"x": rand(2, 5), "index": np.array(5)})


def recurrent_model(attrs, inputs=("x", "w", "r"), runtime=(), w_rows=16):
    """One LSTM node on x [3, 2, 5] with hidden size 4; `runtime` inputs are graph inputs."""
    arrays = {"w": rand(1, w_rows, 5), "r": rand(1, 16, 4), "lens": np.array([3, 2], np.int32)}
    graph = helper.make_graph(
        [helper.make_node("LSTM", list(inputs), ["", "y"], name="lstm",
                          **{"hidden_size": 4, **attrs})],
        "case", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (3, 2, 5))] +
        [helper.make_tensor_value_info(n, TensorProto.INT32, (2,)) for n in runtime],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 2, 4))],
        initializer=[numpy_helper.from_array(a, n) for n, a in arrays.items()
                     if n in inputs and n not in runtime])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("attrs, inputs, runtime, message", [
    ({}, ("x", "w", "r", "", "lens"), ("lens",),
     r"LSTM \(sequence_lens computed at run time \(graphopt needs them constant\)\): 1 node "
     r"\[lstm\]"),
    ({"activations": ["Sigmoid", "Gelu", "Tanh"]}, ("x", "w", "r"), (),
     r"LSTM \(activations \['Sigmoid', 'Gelu', 'Tanh'\]: expected an activation among Sigmoid, "
     r"Tanh, Relu, Affine"),
    ({"activations": ["Affine", "Tanh", "Tanh"]}, ("x", "w", "r"), (),
     r"LSTM \(activations \['Affine', 'Tanh', 'Tanh'\]: expected activation_alpha for Affine, "
     r"which has no default\)"),
], ids=["runtime-sequence-lens", "unknown-activation", "affine-without-alpha"])
def test_unsupported_recurrent_forms_are_named(attrs, inputs, runtime, message):
    with pytest.raises(UnsupportedOpError, match=message):
        load_onnx(recurrent_model(attrs, inputs, runtime))


@pytest.mark.parametrize("attrs, w_rows, error, message", [
    ({"hidden_size": 5}, 16, ModelFormatError, r"node 'lstm' \(LSTM\): hidden_size=5 but R is "
                                               r"float32\[1,16,4\]"),
    ({}, 12, go.ShapeError, r"node 'lstm' \(lstm\): expected W of shape \(1, 16, 5\) \(X "
                            r"float32\[3,2,5\], hidden size 4\), found float32\[1,12,5\]"),
    ({"direction": "sideways"}, 16, go.ShapeError, r"node 'lstm' \(LSTM\): expected direction "
                                                   r"among forward, reverse, bidirectional"),
], ids=["hidden-size", "weight-shape", "direction"])
def test_malformed_recurrent_nodes_name_the_node(attrs, w_rows, error, message):
    model = recurrent_model(attrs, w_rows=w_rows)
    with pytest.raises(error, match=message):
        load_onnx(model)


def torch_recurrent(kind, options):
    """A plain-torch nn.LSTM / nn.GRU (5 features, hidden size 6) and the indexing of its
    outputs that torch.onnx.export writes as Gather / Slice / Squeeze: the last step of Y plus
    the last layer's final hidden state."""
    torch = pytest.importorskip("torch")

    class Recurrent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(torch.nn, kind)(5, 6, **options)

        def forward(self, x):
            y, state = self.rnn(x)
            h = state[0] if isinstance(state, tuple) else state
            last = y[:, -1] if options.get("batch_first") else y[-1]
            return last + h[-1].repeat(1, last.shape[-1] // h.shape[-1])

    torch.manual_seed(0)
    return Recurrent().eval()


@pytest.mark.parametrize("kind, options", [
    ("LSTM", {}),
    ("LSTM", {"num_layers": 2, "bidirectional": True}),
    ("LSTM", {"batch_first": True, "bias": False}),
    ("GRU", {}),
    ("GRU", {"batch_first": True, "bidirectional": True}),
], ids=["lstm", "lstm-2-layers-bidirectional", "lstm-batch-first-no-bias", "gru",
        "gru-batch-first-bidirectional"])
def test_torch_exported_recurrent_layers_import(kind, options):
    """torch.onnx.export (TorchScript; the dynamo exporter needs onnxscript) of nn.LSTM / nn.GRU:
    imported, interpreted and compiled, equal to torch and onnxruntime."""
    import io
    import torch
    model = torch_recurrent(kind, options)
    x = torch.randn(4, 3, 5)
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["input"],
                      output_names=["output"], opset_version=17)
    proto = onnx.load_from_string(buffer.getvalue())
    assert kind in {n.op_type for n in proto.graph.node}
    graph = load_onnx(proto)
    assert kind.lower() in {n.op_name for n in graph.nodes}
    with torch.no_grad():
        expected = model(x).numpy()
    found = go.interpret(graph, {"input": x.numpy()})["output"]
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(found, reference_outputs(proto, {"input": x.numpy()})["output"],
                               rtol=1e-5, atol=1e-6)
    if options.get("bidirectional"):   # one compile per kind: the others lower the same way
        compiled = go.compile(graph, "cpu").run({"input": x.numpy()})["output"]
        np.testing.assert_allclose(compiled, found, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["max_pool_indices", "reduce_log_sum_exp", "amin", "prod",
                                  "norm_l2", "norm_l1", "local_response_norm"])
def test_torch_exported_pooling_indices_and_reductions_import(name):
    """torch.onnx.export (TorchScript) of max_pool2d(return_indices=True) (MaxPool's Indices,
    then the Slice / Sub that makes them per-plane, as torch's), of the reductions it writes
    as ReduceLogSumExp, ReduceMin, ReduceProd, ReduceL2 and ReduceL1, and of local_response_norm
    (a 3-D AveragePool over the channels, under an If on the input's shape): imported,
    interpreted and compiled, equal to torch. (torch 2.13 cannot export max_unpool2d: its trace
    fails; MaxUnpool is covered by the rows above and by graphopt's own exports.)"""
    import io
    torch = pytest.importorskip("torch")
    functions = {
        "max_pool_indices": lambda x: torch.nn.functional.max_pool2d(
            x, 3, 2, 1, return_indices=True)[1],
        "reduce_log_sum_exp": lambda x: torch.logsumexp(x * 20, dim=1, keepdim=True),
        "amin": lambda x: x.amin(dim=(2, 3)),
        "prod": lambda x: x.prod(1),
        "norm_l2": lambda x: x.norm(dim=-1, keepdim=True),
        "norm_l1": lambda x: torch.norm(x, p=1, dim=(1, 2)),
        "local_response_norm": lambda x: torch.nn.functional.local_response_norm(
            x * 4, 5, 1e-2, 0.75, 2.0),
    }

    class Module(torch.nn.Module):
        def forward(self, x):
            return functions[name](x)

    x = torch.randn(2, 3, 7, 9)
    buffer = io.BytesIO()
    torch.onnx.export(Module(), (x,), buffer, dynamo=False, input_names=["input"],
                      output_names=["output"], opset_version=17)
    graph = load_onnx(buffer.getvalue())
    expected = functions[name](x).numpy()
    found = go.interpret(graph, {"input": x.numpy()})["output"]
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-5)
    if name == "max_pool_indices":
        compiled = go.compile(graph, "cpu").run({"input": x.numpy()})["output"]
        np.testing.assert_array_equal(compiled, expected)
    if name == "local_response_norm":
        assert {"If", "AveragePool"} <= {n.op_type for n in onnx.load_from_string(
            buffer.getvalue()).graph.node}
        compiled = go.compile(graph, "cpu").run({"input": x.numpy()})["output"]
        np.testing.assert_allclose(compiled, expected, rtol=1e-5, atol=1e-6)
