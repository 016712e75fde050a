"""graphopt IR -> ONNX. An export table maps each of our ops to the ONNX node(s) that compute it;
node, value and weight names are kept. The opset is the lowest (at least 13) that expresses every
node, for the widest runtime support; the model passes onnx.checker's full check."""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import GraphoptError, UnsupportedOpError
from ..files import atomic_open, atomic_output, temporary_directory
from ..ir import Graph, Node
from ..verify import verify
from .onnx_load import PROTOBUF_LIMIT

BASE_OPSET = 13


class ExportContext:
    """Collects ONNX nodes and initializers; `constant` adds attribute-like inputs (shapes,
    pads, bounds) under names that cannot collide with the graph's own."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.used = {v.name for v in graph.values()} | {n.name for n in graph.nodes}
        self.opset = BASE_OPSET

    def require(self, opset: int) -> None:
        self.opset = max(self.opset, opset)

    def fresh(self, name: str) -> str:
        """`name`, or `name_k`: a name used nowhere in the model yet."""
        unique, k = name, 0
        while unique in self.used:
            k += 1
            unique = f"{name}_{k}"
        self.used.add(unique)
        return unique

    def constant(self, name: str, data) -> str:
        unique = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(data), unique))
        return unique

    def add(self, op_type: str, node: Node, inputs=None, outputs=None, name=None, **attrs):
        self.nodes.append(helper.make_node(
            op_type, [v if isinstance(v, str) else v.name for v in (inputs or node.inputs)],
            outputs or [v.name for v in node.outputs], name=name or node.name,
            **{k: v for k, v in attrs.items() if v is not None}))


EXPORTERS: dict[str, Callable[[ExportContext, Node], None]] = {}


def exports(*op_names: str):
    def register(fn):
        for name in op_names:
            EXPORTERS[name] = fn
        return fn
    return register


# Ops that map onto one ONNX node: (ONNX op type, attributes copied under the same name).
DIRECT = {"identity": ("Identity",), "relu": ("Relu",), "sigmoid": ("Sigmoid",),
          "tanh": ("Tanh",), "add": ("Add",), "sub": ("Sub",), "mul": ("Mul",), "div": ("Div",),
          "matmul": ("MatMul",), "global_avg_pool2d": ("GlobalAveragePool",),
          "global_max_pool2d": ("GlobalMaxPool",),
          "batch_norm": ("BatchNormalization", "epsilon"), "leaky_relu": ("LeakyRelu", "alpha"),
          "softmax": ("Softmax", "axis"), "concat": ("Concat", "axis"),
          "flatten": ("Flatten", "axis"), "transpose": ("Transpose", "perm"),
          "lrn": ("LRN", "size", "alpha", "beta", "bias"),
          "hard_sigmoid": ("HardSigmoid", "alpha", "beta"), "exp": ("Exp",), "log": ("Log",),
          "sqrt": ("Sqrt",), "erf": ("Erf",), "pow": ("Pow",), "where": ("Where",),
          "gather": ("Gather", "axis"), "instance_norm": ("InstanceNormalization", "epsilon"),
          "abs": ("Abs",), "neg": ("Neg",), "reciprocal": ("Reciprocal",),
          "maximum": ("Max",), "minimum": ("Min",), "elu": ("Elu", "alpha"),
          "selu": ("Selu", "alpha", "gamma"), "softplus": ("Softplus",),
          "softsign": ("Softsign",), "thresholded_relu": ("ThresholdedRelu", "alpha"),
          "prelu": ("PRelu",), "celu": ("Celu", "alpha"), "log_softmax": ("LogSoftmax", "axis"),
          "sign": ("Sign",), "floor": ("Floor",), "ceil": ("Ceil",), "round": ("Round",),
          "not": ("Not",)}
# Ops that map onto one ONNX node that appeared after opset 13: op -> (ONNX op type, opset,
# attributes copied under the same name).
NEWER = {"hard_swish": ("HardSwish", 14), "layer_norm": ("LayerNormalization", 17, "axis",
                                                         "epsilon"),
         "gelu": ("Gelu", 20, "approximate"), "mish": ("Mish", 18)}


@exports(*DIRECT)
def direct(ex, node):
    op_type, *attributes = DIRECT[node.op_name]
    ex.add(op_type, node, **{a: getattr(node.op, a) for a in attributes})


@exports(*NEWER)
def newer(ex, node):
    op_type, opset, *attributes = NEWER[node.op_name]
    ex.require(opset)
    ex.add(op_type, node, **{a: getattr(node.op, a) for a in attributes})


REDUCE = {"reduce_mean": "ReduceMean", "reduce_sum": "ReduceSum", "reduce_max": "ReduceMax",
          "reduce_min": "ReduceMin", "reduce_prod": "ReduceProd", "reduce_l1": "ReduceL1",
          "reduce_l2": "ReduceL2", "reduce_sum_square": "ReduceSumSquare",
          "reduce_log_sum_exp": "ReduceLogSumExp"}


@exports(*REDUCE)
def reduce(ex, node):
    """Axes as an attribute at opset 13, or an input (ReduceSum; a bool ReduceMax or ReduceMin,
    which needs opset 20)."""
    op = node.op
    op_type = REDUCE[node.op_name]
    axes = None if op.axes is None else list(op.axes)
    boolean = node.inputs[0].dtype == "bool"
    if boolean:
        ex.require(20)
    if op_type == "ReduceSum" or boolean:
        inputs = [node.inputs[0]] + ([] if axes is None else
                                     [ex.constant(f"{node.name}.axes", np.array(axes, np.int64))])
        ex.add(op_type, node, inputs, keepdims=int(op.keepdims))
    else:
        ex.add(op_type, node, axes=axes, keepdims=int(op.keepdims))


def axes_as_inputs(ex: ExportContext) -> None:
    """From opset 18 every reduction takes its axes as an input: move the attribute written at
    opset 13 (before another node raised the opset) into one."""
    for onnx_node in ex.nodes:
        if onnx_node.op_type not in REDUCE.values():
            continue
        for attribute in list(onnx_node.attribute):
            if attribute.name == "axes":
                axes = ex.constant(f"{onnx_node.name}.axes", np.array(attribute.ints, np.int64))
                onnx_node.input.append(axes)
                onnx_node.attribute.remove(attribute)


@exports("compare")
def compare(ex, node):
    from ..ops.binary import RELATIONS
    ex.add(RELATIONS[node.op.relation][2], node)


@exports("logical")
def logical(ex, node):
    from ..ops.binary import LOGICAL
    ex.add(LOGICAL[node.op.operation][2], node)


@exports("expand", "tile")
def expand_or_tile(ex, node):
    op_type, what = ("Expand", "shape") if node.op_name == "expand" else ("Tile", "repeats")
    target = ex.constant(f"{node.name}.{what}", np.array(getattr(node.op, what), np.int64))
    ex.add(op_type, node, [node.inputs[0], target])


@exports("slice")
def slice_(ex, node):
    bounds = [ex.constant(f"{node.name}.{what}", np.array(getattr(node.op, what), np.int64))
              for what in ("starts", "ends", "axes", "steps")]
    ex.add("Slice", node, [node.inputs[0], *bounds])


def conv_attrs(op, weight) -> dict:
    attrs = dict(kernel_shape=list(weight.shape[2:]), strides=list(op.stride),
                 pads=list(op.padding), dilations=list(op.dilation), group=op.groups)
    if hasattr(op, "output_padding"):
        attrs["output_padding"] = list(op.output_padding)
    return attrs


@exports("conv2d", "conv_transpose2d")
def conv(ex, node):
    ex.add("Conv" if node.op_name == "conv2d" else "ConvTranspose", node,
           **conv_attrs(node.op, node.inputs[1]))


@exports("fused_conv2d")
def fused_conv2d(ex, node):
    """Conv, then Add(residual), then the activation: the last node takes the fused name."""
    op = node.op
    x, w, bias, residual = op.split(node.inputs)
    steps = ["conv"] + ["add"] * (residual is not None) + ["act"] * (op.activation is not None)
    names = [ex.fresh(f"{node.name}/{step}") for step in steps[:-1]] + [node.name]
    outputs = [ex.fresh(f"{node.name}/{step}_out") for step in steps[:-1]] + \
        [node.outputs[0].name]
    ex.add("Conv", node, [x, w] + ([bias] if bias is not None else []), [outputs[0]],
           name=names[0], **conv_attrs(op.conv, w))
    if residual is not None:
        ex.add("Add", node, [outputs[0], residual], [outputs[1]], name=names[1])
    if op.activation is not None:
        activation(ex, node, op.activation, outputs[-2], outputs[-1], names[-1])


def activation(ex, node, op, source: str, output: str, name: str,
               dtype: str | None = None) -> None:
    """One of the activations a fused op carries (`ops.epilogue.EPILOGUE`: its ONNX op type and
    opset; a gated one as Mul(source, op_type(source))), or a standalone clip. Clip's bounds are
    inputs (of `dtype`, by default the node's output's); the others' attributes are copied by
    name."""
    from ..ops.epilogue import EPILOGUE
    entry = EPILOGUE[op.name]
    op_type = entry.onnx
    ex.require(entry.onnx_opset)
    if entry.gated:
        gate = ex.fresh(f"{name}/gate_out")
        ex.add(op_type, node, [source], [gate], name=ex.fresh(f"{name}/gate"))
        ex.add("Mul", node, [source, gate], [output], name=name)
    elif op.name == "clip":
        dtype = dtype or node.outputs[0].dtype
        bounds = ["" if b is None else ex.constant(f"{name}.{what}", np.array(b, dtype))
                  for what, b in (("min", op.min), ("max", op.max))]
        ex.add(op_type, node, [source, *bounds], [output], name=name)
    else:
        ex.add(op_type, node, [source], [output], name=name, **op.attrs())


@exports("max_pool2d", "avg_pool2d")
def pool(ex, node):
    op = node.op
    attrs = dict(kernel_shape=list(op.kernel), strides=list(op.stride), pads=list(op.padding),
                 ceil_mode=int(op.ceil_mode))
    if op.dilation != (1, 1):
        attrs["dilations"] = list(op.dilation)
    if node.op_name == "max_pool2d":
        ex.add("MaxPool", node, **attrs)
    else:
        if op.dilation != (1, 1):
            ex.require(19)   # AveragePool gained dilations in opset 19
        ex.add("AveragePool", node, count_include_pad=int(op.count_include_pad), **attrs)


@exports("max_pool2d_indices")
def max_pool_indices(ex, node):
    """MaxPool's Indices output; its values output (required by ONNX) is left unread."""
    op = node.op
    values = ex.fresh(f"{node.name}/values")
    ex.add("MaxPool", node, outputs=[values, node.outputs[0].name],
           kernel_shape=list(op.kernel), strides=list(op.stride), pads=list(op.padding),
           ceil_mode=int(op.ceil_mode), storage_order=op.storage_order,
           dilations=list(op.dilation) if op.dilation != (1, 1) else None)


@exports("max_unpool2d")
def max_unpool(ex, node):
    """MaxUnpool; an output_shape input where the op names its output size."""
    op = node.op
    inputs = list(node.inputs)
    if op.output_size is not None:
        inputs.append(ex.constant(f"{node.name}.output_shape",
                                  np.array(node.outputs[0].shape, np.int64)))
    ex.add("MaxUnpool", node, inputs, kernel_shape=list(op.kernel), strides=list(op.stride),
           pads=list(op.padding))


@exports("linear")
def linear(ex, node):
    x, w = node.inputs[:2]
    if x.type.ndim == 2:
        ex.add("Gemm", node, transB=1)
        return
    # Gemm is 2-D only: x @ W^T (+ b) with the transpose as a node so W keeps its name and layout.
    w_t = ex.fresh(f"{node.name}/weight_t")
    ex.add("Transpose", node, [w], [w_t], name=f"{node.name}/transpose", perm=[1, 0])
    if len(node.inputs) == 2:
        ex.add("MatMul", node, [x, w_t])
        return
    product = ex.fresh(f"{node.name}/product")
    ex.add("MatMul", node, [x, w_t], [product], name=f"{node.name}/matmul")
    ex.add("Add", node, [product, node.inputs[2]])


@exports("clip")
def clip(ex, node):
    activation(ex, node, node.op, node.inputs[0].name, node.outputs[0].name, node.name)


@exports("dropout")
def dropout(ex, node):
    if not node.inputs[0].type.is_float:   # ONNX Dropout takes floats only; it is an identity
        ex.add("Identity", node)
        return
    ratio = ex.constant(f"{node.name}.ratio", np.array(node.op.ratio, np.float32))
    ex.add("Dropout", node, [node.inputs[0], ratio])


@exports("cast")
def cast(ex, node):
    ex.add("Cast", node, to=helper.np_dtype_to_tensor_dtype(np.dtype(node.op.to)))


@exports("reshape")
def reshape(ex, node):
    # The op's own shape (with its -1) so that the model imports back to the same op; a 0 in
    # it means an empty dimension, which ONNX reads as "copy" unless allowzero is set.
    shape = ex.constant(f"{node.name}.shape", np.array(node.op.shape, np.int64))
    allowzero = 1 if 0 in node.op.shape else None
    if allowzero:
        ex.require(14)
    ex.add("Reshape", node, [node.inputs[0], shape], allowzero=allowzero)


@exports("pad")
def pad(ex, node):
    x = node.inputs[0]
    befores, afters = zip(*node.op.pads) if node.op.pads else ((), ())
    pads = ex.constant(f"{node.name}.pads", np.array([*befores, *afters], np.int64))
    value = ex.constant(f"{node.name}.value", np.array(node.op.value, x.dtype))
    if node.op.mode == "wrap":
        ex.require(19)   # Pad's wrap mode
    ex.add("Pad", node, [x, pads, value], mode=node.op.mode)


@exports("resize")
def resize(ex, node):
    op = node.op
    sizes = ex.constant(f"{node.name}.sizes", np.array(node.outputs[0].shape, np.int64))
    ex.add("Resize", node, [node.inputs[0], "", "", sizes],
           mode="nearest" if op.mode == "nearest" else "linear",
           coordinate_transformation_mode=op.coordinate_transformation_mode,
           nearest_mode=op.nearest_mode if op.mode == "nearest" else None)


# ---- quantized -----------------------------------------------------------------------------------
@exports("quantize_linear", "dequantize_linear")
def linear_quantization(ex, node):
    op = node.op
    if op.block_size:
        ex.require(21)   # blocked quantization
    elif any(v.dtype == "float16" for v in (*node.inputs, *node.outputs)):
        ex.require(19)   # float16 scales
    ex.add("QuantizeLinear" if node.op_name == "quantize_linear" else "DequantizeLinear", node,
           axis=op.axis, block_size=op.block_size or None)


@exports("table_lookup")
def table_lookup(ex, node):
    """Cast the uint8 input to int64 indices, then Gather from the table."""
    x, table = node.inputs
    index = ex.fresh(f"{node.name}.index")
    ex.add("Cast", node, [x], [index], name=ex.fresh(f"{node.name}.cast"),
           to=onnx.TensorProto.INT64)
    ex.add("Gather", node, [table, index], axis=0)


@exports("conv2d_integer")
def conv2d_integer(ex, node):
    ex.add("ConvInteger", node, **conv_attrs(node.op.conv, node.inputs[1]))


@exports("matmul_integer")
def matmul_integer(ex, node):
    ex.add("MatMulInteger", node)


@exports("qlinear_matmul")
def qlinear_matmul(ex, node):
    if any(v.dtype == "float16" for v in node.inputs):
        ex.require(21)   # float16 scales
    ex.add("QLinearMatMul", node)


@exports("qlinear_conv2d")
def qlinear_conv2d(ex, node):
    """QLinearConv, then Clip on the integers for an activation; with a residual, the QDQ chain
    the op stands for (`qlinear_conv2d_chain`)."""
    from ..ops.quant import output_limits
    op = node.op
    x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias, residual = op.split(node.inputs)
    if residual:
        qlinear_conv2d_chain(ex, node)
        return
    inputs = [x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp] + ([bias] if bias else [])
    if op.activation is None:
        ex.add("QLinearConv", node, inputs, **conv_attrs(op.conv, w))
        return
    for value in (y_scale, y_zp):
        if not value.is_constant:
            raise UnsupportedOpError(f"exporting the activation needs a constant y_scale and "
                                     f"y_zero_point; '{value.name}' is computed",
                                     node=node.name, op=node.op_name)
    converted = ex.fresh(f"{node.name}/conv_out")
    ex.add("QLinearConv", node, inputs, [converted], name=ex.fresh(f"{node.name}/conv"),
           **conv_attrs(op.conv, w))
    limits = output_limits(op.activation, y_scale.data, y_zp.data)
    bounds = ["" if limit is None else
              ex.constant(f"{node.name}.{what}", np.array(limit, y_zp.dtype))
              for what, limit in zip(("min", "max"), limits)]
    ex.add("Clip", node, [converted, *bounds])


def qlinear_conv2d_chain(ex, node) -> None:
    """DequantizeLinear of x, w, the bias (scale x_scale * w_scale) and the residual, then Conv,
    Add, the activation and QuantizeLinear: the real-valued computation a qlinear_conv2d with a
    residual stands for (the standard QDQ form; runtimes compute it in float)."""
    op = node.op
    x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias, residual = op.split(node.inputs)
    r, r_scale, r_zp = residual

    def step(op_type, inputs, what, **attrs) -> str:
        out = ex.fresh(f"{node.name}/{what}")
        ex.add(op_type, node, inputs, [out], name=ex.fresh(f"{node.name}/{what}_node"), **attrs)
        return out

    if w_zp.shape != w_scale.shape:   # DequantizeLinear takes the zero point in the scale's shape
        shape = ex.constant(f"{node.name}.w_scale_shape", np.array(w_scale.shape, np.int64))
        w_zp = step("Expand", [w_zp, shape], "w_zero_point")
    conv_inputs = [step("DequantizeLinear", [x, x_scale, x_zp], "x"),
                   step("DequantizeLinear", [w, w_scale, w_zp], "w", axis=0)]
    if bias is not None:
        scale = step("Mul", [x_scale, w_scale], "bias_scale")
        zeros = ex.constant(f"{node.name}.bias_zero_point", np.zeros(
            np.broadcast_shapes(x_scale.shape, w_scale.shape), np.int32))
        conv_inputs.append(step("DequantizeLinear", [bias, scale, zeros], "bias", axis=0))
    value = step("Conv", conv_inputs, "conv", **conv_attrs(op.conv, w))
    value = step("Add", [value, step("DequantizeLinear", [r, r_scale, r_zp], "residual")], "add")
    if op.activation is not None:
        activated = ex.fresh(f"{node.name}/{op.activation.name}")
        activation(ex, node, op.activation, value, activated,
                   ex.fresh(f"{node.name}/{op.activation.name}_node"), "float32")
        value = activated
    ex.add("QuantizeLinear", node, [value, y_scale, y_zp])


# ---- recurrent ------------------------------------------------------------------------------------
@exports("argmax", "argmin")
def arg_reduce(ex, node):
    op = node.op
    ex.add("ArgMax" if node.op_name == "argmax" else "ArgMin", node, axis=op.axis,
           keepdims=int(op.keepdims), select_last_index=int(op.select_last_index))


@exports("cumsum")
def cumsum(ex, node):
    axis = ex.constant(f"{node.name}.axis", np.array(node.op.axis, np.int64))
    ex.add("CumSum", node, [node.inputs[0], axis], exclusive=int(node.op.exclusive),
           reverse=int(node.op.reverse))


@exports("lstm", "gru")
def recurrent(ex, node):
    """LSTM / GRU: the static sequence lengths as a constant input, the activations as ONNX's
    three lists; layout 1 needs opset 14."""
    from ..ops.recurrent import onnx_activation_lists
    op = node.op
    inputs = [v.name for v in node.inputs]
    lens = "" if op.sequence_lens is None else ex.constant(
        f"{node.name}.sequence_lens", np.array(op.sequence_lens, np.int32))
    if len(inputs) > 4 or lens:
        inputs = inputs[:4] + [""] * (4 - len(inputs[:4])) + [lens] + inputs[4:]
    if op.layout:
        ex.require(14)
    names, alphas, betas = onnx_activation_lists(op.activations)
    attrs = dict(hidden_size=node.inputs[2].shape[2], direction=op.direction,
                 layout=op.layout or None, clip=op.clip, activations=names or None,
                 activation_alpha=alphas or None, activation_beta=betas or None)
    if node.op_name == "lstm":
        attrs["input_forget"] = int(op.input_forget) or None
    else:
        attrs["linear_before_reset"] = int(op.linear_before_reset)
    ex.add("LSTM" if node.op_name == "lstm" else "GRU", node, inputs, **attrs)


def tensor_type(value) -> onnx.TypeProto:
    return helper.make_tensor_type_proto(helper.np_dtype_to_tensor_dtype(np.dtype(value.dtype)),
                                         list(value.shape))


def to_onnx(graph: Graph) -> onnx.ModelProto:
    """The ONNX model of a verified graph."""
    verify(graph)
    missing = sorted({n.op_name for n in graph.nodes if n.op_name not in EXPORTERS})
    if missing:
        raise UnsupportedOpError(f"no ONNX export for op(s) {', '.join(missing)}")
    ex = ExportContext(graph)
    if any(v.dtype == "bfloat16" for v in graph.values()):
        ex.require(22)   # Conv, ConvTranspose and the pools take bfloat16 from opset 22
    for node in graph.topological_order():
        EXPORTERS[node.op_name](ex, node)
    if ex.opset >= 18:
        axes_as_inputs(ex)
    used = {name for n in ex.nodes for name in n.input} | set(graph.output_names)
    initializers = [numpy_helper.from_array(c.data, c.name) for c in graph.constants.values()
                    if c.name in used] + ex.initializers
    outputs = {v.name for v in graph.outputs}
    onnx_graph = helper.make_graph(
        ex.nodes, graph.name,
        [helper.make_value_info(v.name, tensor_type(v)) for v in graph.inputs],
        [helper.make_value_info(v.name, tensor_type(v)) for v in graph.outputs],
        initializer=initializers,
        value_info=[helper.make_value_info(v.name, tensor_type(v)) for n in graph.nodes
                    for v in n.outputs if v.name not in outputs])
    opsets = [helper.make_opsetid("", ex.opset)]
    model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="graphopt",
                              ir_version=helper.find_min_ir_version_for(opsets))
    return model


def save_onnx(graph: Graph, path: str | os.PathLike | None = None) -> onnx.ModelProto:
    """Export `graph` as an ONNX model (checked with onnx.checker's full check); write it to
    `path` when given, atomically: a failed write leaves what was there. Past protobuf's 2 GB
    limit the checker cannot run and the weights go to `<path>.data` beside the model."""
    model = to_onnx(graph)
    large = model.ByteSize() > PROTOBUF_LIMIT
    if not large:
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as e:
            raise GraphoptError(f"the exported model of graph '{graph.name}' fails onnx.checker: "
                                f"{str(e).strip().splitlines()[0]}") from None
    if path is not None:
        write_model(model, os.fspath(path), external_data=large)
    return model


def write_model(model: onnx.ModelProto, path: str, external_data: bool = False) -> None:
    """Write `model` to `path` atomically (see graphopt.files). With `external_data` the
    weights go to `<name>.data` beside it: onnx writes both into a hidden folder there, and
    each is renamed into place, the weights first."""
    if not external_data:
        with atomic_open(path) as f:
            onnx.save_model(model, f)
        return
    folder, name = os.path.split(os.path.abspath(path))
    data = name + ".data"
    with atomic_output(path) as model_file, \
            atomic_output(os.path.join(folder, data)) as data_file, \
            temporary_directory(f".{name}.", dir=folder) as work:
        onnx.save_model(model, os.path.join(work, name), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data)
        os.replace(os.path.join(work, data), data_file)
        os.replace(os.path.join(work, name), model_file)
