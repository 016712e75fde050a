"""Every op, attribute case by attribute case, against an independent reference.

Each row of `ROWS` is one op instance with its data and the reference that says what the answer
is: a one-node ONNX model run by `onnx.reference.ReferenceEvaluator`, or by onnxruntime where the
evaluator's kernel is wrong (noted at the row), or torch where ONNX has no equivalent. Every row is
checked on the numpy interpreter (float32, and float64 where `f64` is set) and on the TVM CPU
module. Compiling costs about a second per graph, so the rows of one op are compiled together as
one multi-output graph (`test_compiled`); the interpreter is checked row by row
(`test_interpreter`). To cover a new op, add its rows to a `*_rows()` list (test_registry insists).
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

import graphopt as go
from graphopt import dsl, ops
from graphopt.compare import onnxruntime_outputs
from graphopt.ir import Graph, TensorType

from conftest import add_op_case, assert_close, input_feeds, one_node_graph, random_array

OPSET = 19
FP32_RTOL = 2e-5     # a few ulps of accumulated rounding, relative to the output's magnitude
FP64_RTOL = 1e-10

_rng = np.random.default_rng(2024)


def rand(*shape: int, dtype: str = "float32", low: int = -9, high: int = 10) -> np.ndarray:
    return random_array(_rng, shape, dtype, low, high)


# ---- the independent reference: a small ONNX model per row ----------------------------------------
Reference = Callable[..., np.ndarray]


@functools.lru_cache(maxsize=None)
def checker(opset: int):
    context = onnx.checker.C.CheckerContext()
    context.ir_version, context.opset_imports = onnx.IR_VERSION, {"": opset}
    return context


def run_onnx(nodes: Sequence[onnx.NodeProto], arrays: Sequence[np.ndarray],
             extra: Sequence[np.ndarray] = (), engine: str = "reference",
             out_dtype=None, opset: int = OPSET) -> np.ndarray:
    """Run ONNX `nodes` reading inputs 'in0'.. (`arrays`) and initializers 'extra0'.. and
    producing 'out' (of `out_dtype`, by default the first input's), with ReferenceEvaluator or,
    where its kernel is broken, onnxruntime."""
    def info(name, array):
        return helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)
    out_dtype = np.dtype(arrays[0].dtype if out_dtype is None else out_dtype)
    graph = helper.make_graph(
        list(nodes), "reference", [info(f"in{i}", a) for i, a in enumerate(arrays)],
        [helper.make_tensor_value_info("out", helper.np_dtype_to_tensor_dtype(out_dtype), None)],
        initializer=[onnx.numpy_helper.from_array(e, f"extra{i}") for i, e in enumerate(extra)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    for node in nodes:   # the evaluator ignores misspelt attributes; the checker does not
        onnx.checker.check_node(node, checker(opset))
    feeds = {f"in{i}": a for i, a in enumerate(arrays)}
    if engine == "onnxruntime":   # int8 operands run unsigned: exact on CPUs without VNNI too
        model.ir_version = min(model.ir_version, 10)
        return onnxruntime_outputs(model, feeds)["out"]
    with np.errstate(over="ignore", invalid="ignore"):   # its sigmoid computes both branches
        return ReferenceEvaluator(model).run(None, feeds)[0]


def onnx_op(op_type: str, *, extra: Sequence[np.ndarray | None] = (), engine: str = "reference",
            out_dtype=None, opset: int = OPSET, **attrs) -> Reference:
    """One ONNX node fed by all of the row's arrays, then by `extra` initializers (None: an
    omitted optional input). Float initializers follow the dtype of the first array."""
    def reference(*arrays: np.ndarray) -> np.ndarray:
        names = [f"in{i}" for i in range(len(arrays))]
        given = []
        for e in extra:
            if e is None:
                names.append("")
                continue
            if e.dtype.kind == "f" and arrays[0].dtype.kind == "f":
                e = e.astype(arrays[0].dtype)
            names.append(f"extra{len(given)}")
            given.append(e)
        node = helper.make_node(op_type, names, ["out"], **attrs)
        return run_onnx([node], arrays, given, engine, out_dtype, opset)
    return reference


def torch_lrn(size: int, alpha: float, beta: float, bias: float) -> Reference:
    """torch's local_response_norm (float64-capable; equals ONNX LRN for odd sizes)."""
    assert size % 2 == 1, "torch centres even windows differently from ONNX"
    def reference(x: np.ndarray) -> np.ndarray:
        import torch
        return torch.nn.functional.local_response_norm(torch.from_numpy(x), size, alpha, beta,
                                                       bias).numpy()
    return reference


def torch_function(name: str, **kwargs) -> Reference:
    """`torch.<name>` (e.g. "special.erf", "nn.functional.gelu"): a float64 reference where
    onnx.reference computes in float32 whatever the input's dtype."""
    def reference(x: np.ndarray) -> np.ndarray:
        import torch
        function = torch
        for part in name.split("."):
            function = getattr(function, part)
        return function(torch.from_numpy(x), **kwargs).numpy()
    return reference


def rounded_once(reference: Reference) -> Reference:
    """`reference` on float16 inputs widened to float32, its result rounded to float16 once:
    how graphopt computes half-precision elementwise functions and reductions."""
    def wrapped(*arrays: np.ndarray) -> np.ndarray:
        wide = [a.astype(np.float32) if a.dtype == np.float16 else a for a in arrays]
        return reference(*wide).astype(np.float16)
    return wrapped


def onnx_linear_nd(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Linear on a rank > 2 input (Gemm is 2-D only): MatMul(x, Transpose(w)) + b."""
    nodes = [helper.make_node("Transpose", ["in1"], ["wt"], perm=[1, 0]),
             helper.make_node("MatMul", ["in0", "wt"], ["xw"]),
             helper.make_node("Add", ["xw", "in2"], ["out"])]
    return run_onnx(nodes, [x, w, b])


# ---- the table --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """`inputs` are graph inputs, `weights` graph constants; the reference sees both, in order."""

    id: str
    op: ops.Op
    inputs: tuple[np.ndarray, ...]
    weights: tuple[np.ndarray, ...]
    reference: Reference
    f64: bool = False          # also check the interpreter's float64 mode
    compiled_steps: int = 0    # integer outputs: compiled may differ by this much (see the row)
    output: int = 0            # the output checked, of an op with several (lstm's Y, Y_h, Y_c)

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.inputs + self.weights

    def graph(self) -> Graph:
        graph = Graph(f"one_{self.op.name}")
        graph.set_outputs([self.add_to(graph)])
        return graph

    def add_to(self, graph: Graph):
        """The row's node in `graph` (as `add_op_case` adds it); the checked output is
        '<id>.out', the others of a multi-output op '<id>.out<k>'."""
        count = len(self.op.output_types(*[TensorType.of(a) for a in self.arrays]))
        if count == 1:
            return add_op_case(graph, self.id, self.op, self.inputs, self.weights)
        args = [graph.add_input(f"{self.id}.in{i}", TensorType.of(a))
                for i, a in enumerate(self.inputs)]
        args += [graph.add_constant(f"{self.id}.const{i}", c) for i, c in enumerate(self.weights)]
        names = [f"{self.id}.out" if k == self.output else f"{self.id}.out{k}"
                 for k in range(count)]
        return graph.add_node(self.op, args, name=self.id, output_names=names).outputs[self.output]

    def expected(self, dtype=None) -> np.ndarray:
        arrays = self.arrays if dtype is None else [
            a.astype(dtype) if a.dtype.kind == "f" else a for a in self.arrays]
        return self.reference(*arrays)


def onnx_conv_attrs(conv: ops.Conv2d) -> dict:
    return dict(strides=list(conv.stride), pads=list(conv.padding),
                dilations=list(conv.dilation), group=conv.groups)


def conv_row(id, x, o, k, bias=True, f64=False, **attrs) -> Row:
    """conv2d on an input of shape `x` with `o` output channels and kernel `k`."""
    op = ops.Conv2d(**attrs)
    w = rand(o, x[1] // op.groups, *ops.base.pair(k))
    weights = (w, rand(o)) if bias else (w,)
    ref = onnx_op("Conv", **onnx_conv_attrs(op))
    return Row(f"conv2d-{id}", op, (rand(*x),), weights, ref, f64)


def conv_rows():
    row = conv_row
    return [
        row("3x3", (1, 4, 8, 8), 6, 3, f64=True),
        row("3x3-pad1", (2, 3, 7, 7), 5, 3, padding=1, f64=True),
        row("nobias", (1, 4, 8, 8), 6, 3, bias=False, padding=1),
        row("stride2", (1, 3, 9, 9), 4, 3, stride=2, padding=1),
        row("stride-2x1", (1, 3, 9, 8), 4, 3, stride=(2, 1)),
        row("pad-hw", (1, 3, 7, 9), 4, 3, padding=(2, 0)),
        row("pad-asym", (1, 3, 7, 7), 4, 3, padding=(0, 1, 2, 1), f64=True),
        row("pad-asym-stride2", (1, 3, 10, 9), 4, 3, stride=2, padding=(1, 0, 0, 1)),
        row("dilation2", (1, 3, 9, 9), 4, 3, dilation=2, padding=2),
        row("dilation-2x3", (1, 2, 11, 11), 3, 3, dilation=(2, 3)),
        row("groups2", (1, 4, 7, 7), 6, 3, groups=2, padding=1),
        row("groups3-nobias", (1, 6, 6, 6), 9, 3, bias=False, groups=3),
        row("depthwise", (1, 5, 8, 8), 5, 3, groups=5, padding=1, f64=True),
        row("depthwise-mult2", (1, 4, 8, 8), 8, 3, groups=4, padding=1, stride=2),
        row("1x1", (1, 8, 5, 5), 4, 1, f64=True),
        row("1x1-stride2", (1, 8, 6, 6), 4, 1, stride=2, bias=False),
        row("7x7-stride2", (1, 3, 16, 16), 8, 7, stride=2, padding=3),
        row("odd-size", (1, 3, 13, 11), 5, (3, 5), padding=(1, 2)),
        row("kernel-2x4", (1, 2, 9, 10), 3, (2, 4), stride=(1, 3)),
        row("kernel-equals-input", (1, 2, 5, 5), 3, 5),
        row("batch3", (3, 2, 6, 6), 4, 3, padding=1),
    ]


def onnx_fused_conv(op: ops.FusedConv2d) -> Reference:
    """fused_conv2d as the ONNX chain it stands for: Conv [-> Add residual] [-> activation]."""
    conv = op.conv
    act = op.activation
    def reference(*arrays: np.ndarray) -> np.ndarray:
        conv_inputs = ["in0", "in1"] + (["in2"] if op.has_bias else [])
        nodes = [helper.make_node("Conv", conv_inputs, ["conv"], **onnx_conv_attrs(conv))]
        last, extra = "conv", []
        if op.has_residual:
            nodes.append(helper.make_node("Add", ["conv", f"in{len(arrays) - 1}"], ["sum"]))
            last = "sum"
        if isinstance(act, ops.Relu):
            nodes.append(helper.make_node("Relu", [last], ["act"]))
        elif isinstance(act, ops.LeakyRelu):
            nodes.append(helper.make_node("LeakyRelu", [last], ["act"], alpha=act.alpha))
        elif isinstance(act, ops.Clip):
            bounds = [np.array(b, arrays[0].dtype) for b in (act.min, act.max)]
            extra = bounds
            nodes.append(helper.make_node("Clip", [last, "extra0", "extra1"], ["act"]))
        nodes.append(helper.make_node("Identity", [nodes[-1].output[0]], ["out"]))
        return run_onnx(nodes, arrays, extra)
    return reference


def fused_conv_rows():
    def row(id, x, o, activation=None, bias=True, residual=False, f64=False, **conv_attrs):
        conv = ops.Conv2d(**conv_attrs)
        op = ops.FusedConv2d(conv, activation, bias, residual)
        w = rand(o, x[1] // conv.groups, 3, 3)
        out_shape = conv.infer(*(go.TensorType(s) for s in (x, w.shape))).shape
        weights = (w, *([rand(o)] if bias else []), *([rand(*out_shape)] if residual else []))
        return Row(f"fused_conv2d-{id}", op, (rand(*x),), weights, onnx_fused_conv(op), f64)
    return [
        row("bias-relu", (1, 3, 7, 7), 4, ops.Relu(), padding=1, f64=True),
        row("residual-relu", (1, 4, 6, 6), 4, ops.Relu(), residual=True, padding=1, f64=True),
        row("nobias-relu6", (1, 3, 8, 8), 5, ops.Clip(0.0, 6.0), bias=False, stride=2,
            padding=1),
        row("leaky-depthwise", (1, 4, 6, 6), 4, ops.LeakyRelu(0.1), groups=4, padding=1),
        row("residual-only", (1, 2, 5, 5), 3, residual=True, padding=(1, 0, 1, 2)),
        row("plain", (2, 3, 6, 6), 2, dilation=2),
    ]


def conv_transpose_row(id, x, o, k, bias=True, f64=False, **attrs) -> Row:
    op = ops.ConvTranspose2d(**attrs)
    w = rand(x[1], o // op.groups, *ops.base.pair(k))
    weights = (w, rand(o)) if bias else (w,)
    # ReferenceEvaluator's grouped ConvTranspose crashes (onnx 1.23): onnxruntime there.
    ref = onnx_op("ConvTranspose", strides=list(op.stride), pads=list(op.padding),
                  output_padding=list(op.output_padding), dilations=list(op.dilation),
                  group=op.groups, engine="onnxruntime" if op.groups > 1 else "reference")
    return Row(f"conv_transpose2d-{id}", op, (rand(*x),), weights, ref, f64)


def torch_conv_transpose(op: ops.ConvTranspose2d) -> Reference:
    """torch's conv_transpose2d: the reference where output_padding >= stride (below dilation),
    which ONNX implementations reject. Symmetric padding only."""
    pt, pl, pb, pr = op.padding
    assert (pt, pl) == (pb, pr), "torch pads symmetrically"
    def reference(x, w, b=None):
        import torch
        t = [None if a is None else torch.from_numpy(a) for a in (x, w, b)]
        return torch.nn.functional.conv_transpose2d(
            *t, stride=op.stride, padding=(pt, pl), output_padding=op.output_padding,
            groups=op.groups, dilation=op.dilation).numpy()
    return reference


def conv_transpose_rows():
    def torch_row(id, x, o, k, f64=False, **attrs):
        op = ops.ConvTranspose2d(**attrs)
        weights = (rand(x[1], o // op.groups, k, k), rand(o))
        return Row(f"conv_transpose2d-{id}", op, (rand(*x),), weights, torch_conv_transpose(op),
                   f64)
    row = conv_transpose_row
    return [
        torch_row("outpad-ge-stride-torch", (1, 2, 4, 5), 3, 2, dilation=2, output_padding=1,
                  f64=True),
        torch_row("outpad-ge-stride-pad1-torch", (1, 2, 4, 4), 2, 3, dilation=(2, 3),
                  stride=(1, 2), padding=1, output_padding=(1, 1)),
        torch_row("outpad-ge-stride-pad2-torch", (1, 4, 3, 3), 4, 2, dilation=3, stride=2,
                  padding=2, output_padding=2, groups=2),
        row("3x3", (1, 3, 5, 5), 4, 3, f64=True),
        row("stride2", (1, 3, 5, 5), 4, 3, stride=2, f64=True),
        row("stride2-pad1", (1, 4, 6, 6), 3, 4, stride=2, padding=1),
        row("stride2-outpad1", (1, 3, 5, 5), 2, 3, stride=2, padding=1, output_padding=1),
        row("stride-2x3-outpad", (1, 2, 4, 5), 3, 3, stride=(2, 3), output_padding=(1, 2)),
        row("pad-asym", (1, 3, 5, 5), 4, 3, stride=2, padding=(1, 0, 0, 2), f64=True),
        row("dilation2", (1, 2, 5, 5), 3, 3, dilation=2, bias=False),
        row("dilation2-stride2-outpad", (1, 2, 4, 4), 3, 3, stride=2, dilation=2,
            output_padding=1, padding=(1, 1, 0, 2)),
        row("groups2", (1, 4, 5, 5), 6, 3, groups=2, stride=2, padding=1),
        row("depthwise", (1, 3, 4, 4), 3, 3, groups=3, bias=False),
        row("1x1", (2, 4, 3, 3), 5, 1),
        row("dcgan-4x4-s2", (1, 8, 4, 4), 4, 4, stride=2, padding=1),
    ]


def batch_norm_rows():
    def row(id, x, epsilon=1e-5, f64=False):
        c = x[1]
        weights = (rand(c), rand(c), rand(c), _rng.uniform(0.5, 2.0, c).astype(np.float32))
        return Row(f"batch_norm-{id}", ops.BatchNorm(epsilon), (rand(*x),), weights,
                   onnx_op("BatchNormalization", epsilon=epsilon), f64)
    return [row("nchw", (2, 5, 4, 4), f64=True), row("eps1e-3", (1, 3, 6, 6), 1e-3),
            row("rank2", (4, 6)), row("rank3", (2, 4, 5))]


def activation_rows():
    x = rand(2, 3, 5, 7) * 4
    ints = rand(3, 8, dtype="int32")
    lo, hi = np.float32(-1.5), np.float32(2.0)
    return [
        Row("identity", ops.Identity(), (x,), (), onnx_op("Identity"), f64=True),
        Row("identity-int32", ops.Identity(), (ints,), (), onnx_op("Identity")),
        Row("relu", ops.Relu(), (x,), (), onnx_op("Relu"), f64=True),
        Row("relu-int32", ops.Relu(), (ints,), (), onnx_op("Relu")),
        Row("clip-relu6", ops.Clip(0.0, 6.0), (x,), (),
            onnx_op("Clip", extra=(np.float32(0), np.float32(6))), f64=True),
        Row("clip-both", ops.Clip(-1.5, 2.0), (x,), (), onnx_op("Clip", extra=(lo, hi))),
        Row("clip-min-only", ops.Clip(min=-1.5), (x,), (), onnx_op("Clip", extra=(lo,))),
        Row("clip-max-only", ops.Clip(max=2.0), (x,), (), onnx_op("Clip", extra=(None, hi))),
        Row("clip-int32", ops.Clip(-3, 4), (ints,), (),
            onnx_op("Clip", extra=(np.int32(-3), np.int32(4)))),
        Row("clip-int32-min-only", ops.Clip(min=-2), (ints,), (),
            onnx_op("Clip", extra=(np.int32(-2),))),
        Row("leaky_relu-default", ops.LeakyRelu(), (x,), (), onnx_op("LeakyRelu", alpha=0.01)),
        Row("leaky_relu-0.2", ops.LeakyRelu(0.2), (x,), (), onnx_op("LeakyRelu", alpha=0.2)),
        # ONNX float attributes are float32: a power of two keeps the float64 check exact.
        Row("leaky_relu-0.25", ops.LeakyRelu(0.25), (x,), (), onnx_op("LeakyRelu", alpha=0.25),
            f64=True),
        Row("sigmoid", ops.Sigmoid(), (x,), (), onnx_op("Sigmoid"), f64=True),
        Row("sigmoid-large", ops.Sigmoid(), (x * 30,), (), onnx_op("Sigmoid")),
        Row("tanh", ops.Tanh(), (x,), (), onnx_op("Tanh"), f64=True),
        Row("softmax-last", ops.Softmax(), (x,), (), onnx_op("Softmax", axis=-1), f64=True),
        Row("softmax-axis1", ops.Softmax(1), (x,), (), onnx_op("Softmax", axis=1)),
        Row("softmax-axis0", ops.Softmax(0), (x,), (), onnx_op("Softmax", axis=0)),
        Row("softmax-2d", ops.Softmax(-1), (rand(4, 10) * 10,), (), onnx_op("Softmax", axis=-1)),
        Row("softmax-large", ops.Softmax(1), (x * 100,), (), onnx_op("Softmax", axis=1)),
        Row("hard_sigmoid-default", ops.HardSigmoid(), (x,), (), onnx_op("HardSigmoid")),
        # torch's Hardsigmoid: alpha 1/6 (an ONNX float attribute is float32: a power of two
        # keeps the float64 check exact).
        Row("hard_sigmoid-torch", ops.HardSigmoid(float(np.float32(1 / 6))), (x,), (),
            onnx_op("HardSigmoid", alpha=1 / 6, beta=0.5)),
        Row("hard_sigmoid-0.25", ops.HardSigmoid(0.25, 0.25), (x,), (),
            onnx_op("HardSigmoid", alpha=0.25, beta=0.25), f64=True),
        Row("hard_swish", ops.HardSwish(), (x,), (), onnx_op("HardSwish"), f64=True),
        Row("hard_swish-float16", ops.HardSwish(), (x.astype(np.float16),), (),
            rounded_once(onnx_op("HardSwish"))),
        Row("gelu", ops.Gelu(), (x,), (), onnx_op("Gelu", opset=20)),
        Row("gelu-tanh", ops.Gelu("tanh"), (x,), (),
            onnx_op("Gelu", approximate="tanh", opset=20)),
        # onnx.reference computes erf in float32 even for float64 inputs: torch checks float64.
        Row("gelu-torch", ops.Gelu(), (x,), (), torch_function("nn.functional.gelu"), f64=True),
        Row("gelu-tanh-torch", ops.Gelu("tanh"), (x,), (),
            torch_function("nn.functional.gelu", approximate="tanh"), f64=True),
        Row("dropout", ops.Dropout(0.5), (x,), (), onnx_op("Dropout")),
        Row("dropout-int32", ops.Dropout(0.2), (ints,), (), onnx_op("Identity")),
        *formula_rows(x),
    ]


def formula_rows(x):
    """The activations ONNX defines by formula, on ORT (inputs from -9 to 9: both tails)."""
    wide = x * 3
    def row(id, op, onnx_name, **attrs):   # ORT has no float64 kernels for these
        return Row(id, op, (wide,), (), onnx_op(onnx_name, engine="onnxruntime",
                                                opset=18 if onnx_name == "Mish" else OPSET,
                                                **attrs))
    return [
        row("elu", ops.Elu(), "Elu"),
        row("elu-0.5", ops.Elu(0.5), "Elu", alpha=0.5),
        row("selu", ops.Selu(), "Selu"),
        row("selu-attributes", ops.Selu(1.5, 2.0), "Selu", alpha=1.5, gamma=2.0),
        row("softplus", ops.Softplus(), "Softplus"),
        row("softsign", ops.Softsign(), "Softsign"),
        row("mish", ops.Mish(), "Mish"),
        row("thresholded_relu", ops.ThresholdedRelu(), "ThresholdedRelu"),
        row("thresholded_relu-0.5", ops.ThresholdedRelu(0.5), "ThresholdedRelu", alpha=0.5),
        Row("softplus-large", ops.Softplus(), (x * 100,), (), torch_function(
            "nn.functional.softplus"), f64=True),
        Row("mish-float16", ops.Mish(), (wide.astype(np.float16),), (),
            rounded_once(onnx_op("Mish", opset=18))),
        Row("elu-torch", ops.Elu(), (wide,), (), torch_function("nn.functional.elu"), True),
        # torch's SELU constants are float64, ONNX's float32: a float32 check only
        Row("selu-torch", ops.Selu(), (wide,), (), torch_function("nn.functional.selu")),
        row("celu", ops.Celu(), "Celu"),
        Row("celu-0.5-torch", ops.Celu(0.5), (wide,), (), torch_function(
            "nn.functional.celu", alpha=0.5), True),
        Row("log_softmax", ops.LogSoftmax(1), (wide,), (), onnx_op("LogSoftmax", axis=1),
            f64=True),
        Row("log_softmax-last-float16", ops.LogSoftmax(), (x.astype(np.float16),), (),
            rounded_once(onnx_op("LogSoftmax", axis=-1))),
        # rows of 1000 classes and of 19 pixels, longer than a vector and not whole vectors
        Row("log_softmax-classes", ops.LogSoftmax(), (rand(2, 1000) / 2,), (),
            onnx_op("LogSoftmax", axis=-1)),
        Row("log_softmax-channels", ops.LogSoftmax(1), (rand(1, 16, 5, 19) / 2,), (),
            onnx_op("LogSoftmax", axis=1)),
        Row("softsign-torch", ops.Softsign(), (wide,), (), torch_function(
            "nn.functional.softsign"), True),
    ]


def math_rows():
    x = rand(2, 3, 5, 7) / 3
    positive = np.abs(rand(3, 4, 5)) + np.float32(0.01)
    def row(op, onnx_name, data, f64=True, id=""):
        return Row(f"{op.name}{id}", op, (data,), (), onnx_op(onnx_name), f64)
    return [row(ops.Exp(), "Exp", x), row(ops.Log(), "Log", positive),
            row(ops.Sqrt(), "Sqrt", positive), row(ops.Erf(), "Erf", x, f64=False),
            row(ops.Erf(), "Erf", x * 3, False, "-wide"),
            # onnx.reference computes erf in float32 even for float64 inputs: torch checks it.
            Row("erf-torch", ops.Erf(), (x * 2,), (), torch_function("special.erf"), True),
            Row("exp-float16", ops.Exp(), (x.astype(np.float16),), (),
                rounded_once(onnx_op("Exp"))),
            row(ops.Reciprocal(), "Reciprocal", positive), row(ops.Abs(), "Abs", x),
            row(ops.Neg(), "Neg", x),
            Row("abs-int8", ops.Abs(), (rand(3, 5, dtype="int8"),), (), onnx_op("Abs")),
            Row("neg-int32", ops.Neg(), (rand(3, 5, dtype="int32"),), (), onnx_op("Neg")),
            row(ops.Sign(), "Sign", with_zeros(x)),
            Row("sign-int32", ops.Sign(), (rand(3, 5, dtype="int32"),), (), onnx_op("Sign")),
            row(ops.Floor(), "Floor", x * 4), row(ops.Ceil(), "Ceil", x * 4),
            # halves, which Round takes to the even neighbour
            row(ops.Round(), "Round", np.round(x * 8) / 2)]


def with_zeros(x):
    x = x.copy()
    x.flat[::5] = 0
    return x


def logical_rows():
    a, b = rand(2, 3, 4) > 0, rand(3, 1) > 0
    return [Row(f"logical-{op}", ops.Logical(op), (a, b), (), onnx_op(name))
            for op, name in (("and", "And"), ("or", "Or"), ("xor", "Xor"))] + \
        [Row("not", ops.Not(), (a,), (), onnx_op("Not"))]


def extremum_rows():
    a, b = rand(2, 3, 4), rand(3, 1)
    ints = rand(3, 4, dtype="int32"), rand(4, dtype="int32")
    return [
        Row("maximum", ops.Maximum(), (a, b), (), onnx_op("Max"), f64=True),
        Row("minimum", ops.Minimum(), (a, b), (), onnx_op("Min"), f64=True),
        Row("maximum-int32", ops.Maximum(), ints, (), onnx_op("Max")),
        Row("minimum-constant", ops.Minimum(), (a,), (np.float32(0.25),), onnx_op("Min")),
        Row("prelu-per-channel", ops.PRelu(), (rand(2, 3, 4, 5),), (rand(3, 1, 1) / 4,),
            onnx_op("PRelu"), f64=True),
        Row("prelu-one-slope", ops.PRelu(), (a,), (np.full(1, 0.25, np.float32),),
            onnx_op("PRelu"), f64=True),
        Row("prelu-runtime-slope", ops.PRelu(), (a, b), (), onnx_op("PRelu")),
    ]


def pow_rows():
    base = np.abs(rand(2, 3, 4)) + np.float32(0.1)
    signed = rand(2, 3, 4)
    return [
        Row("pow-square", ops.Pow(), (signed,), (np.float32(2),), onnx_op("Pow"), f64=True),
        Row("pow-cube", ops.Pow(), (signed,), (np.float32(3),), onnx_op("Pow")),
        Row("pow-fractional", ops.Pow(), (base,), (np.float32(0.5),), onnx_op("Pow"), f64=True),
        Row("pow-both-inputs", ops.Pow(), (base, rand(3, 1) / 4), (), onnx_op("Pow")),
    ]


def where_rows():
    x, y = rand(2, 3, 4), rand(3, 1)
    condition = rand(2, 1, 4) > 0
    return [
        Row("where", ops.Where(), (condition, x, y), (), onnx_op("Where"), f64=True),
        Row("where-int64", ops.Where(), (rand(3, 4) > 0, rand(3, 4, dtype="int64"),
                                         rand(4, dtype="int64")), (), onnx_op("Where")),
        Row("where-constant-branch", ops.Where(), (condition, x), (np.float32(-1),),
            onnx_op("Where")),
    ]


def compare_rows():
    a, b = rand(2, 3, 4), rand(3, 1)
    b[0] = a[0, 0, 0]   # some equal pairs
    ints = rand(3, 4, dtype="int64", low=-2, high=3), rand(4, dtype="int64", low=-2, high=3)
    rows = []
    for relation, (_, _, onnx_type) in ops.binary.RELATIONS.items():
        rows += [Row(f"compare-{relation}", ops.Compare(relation), (a, b), (),
                     onnx_op(onnx_type, out_dtype=bool), f64=True),
                 Row(f"compare-{relation}-int64", ops.Compare(relation), ints, (),
                     onnx_op(onnx_type, out_dtype=bool))]
    rows.append(Row("compare-greater-const", ops.Compare("greater"), (a,), (np.float32(0),),
                    onnx_op("Greater", out_dtype=bool)))
    return rows


def reduce_rows():
    x = rand(2, 3, 4, 5)
    i64 = np.array
    def row(op_type, id, axes, keepdims=True, data=x, f64=False):
        op = {"ReduceMean": ops.ReduceMean, "ReduceSum": ops.ReduceSum,
              "ReduceMax": ops.ReduceMax, "ReduceMin": ops.ReduceMin,
              "ReduceProd": ops.ReduceProd, "ReduceL1": ops.ReduceL1, "ReduceL2": ops.ReduceL2,
              "ReduceSumSquare": ops.ReduceSumSquare,
              "ReduceLogSumExp": ops.ReduceLogSumExp}[op_type](axes, keepdims)
        extra = () if axes is None else (i64(axes, np.int64),)
        return Row(f"{op.name}-{id}", op, (data,), (),
                   onnx_op(op_type, extra=extra, keepdims=int(keepdims)), f64)
    rows = []
    for op_type in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                    "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp"):
        rows += [row(op_type, "last", (-1,), f64=True), row(op_type, "last-drop", (-1,), False),
                 row(op_type, "axes-0-2", (0, 2)), row(op_type, "axis1-drop", (1,), False),
                 row(op_type, "all", None), row(op_type, "all-drop", None, False),
                 row(op_type, "spatial", (2, 3), False)]
    rows += [row("ReduceSum", "int32", (1,), data=rand(3, 4, 5, dtype="int32")),
             row("ReduceMax", "int8-drop", (0, -1), False, rand(3, 4, 5, dtype="int8")),
             Row("reduce_max-bool", ops.ReduceMax((1,), False), (rand(3, 4, 2) > 1,), (),
                 onnx_op("ReduceMax", extra=(np.array([1]),), keepdims=0, opset=20)),
             Row("reduce_mean-float16", ops.ReduceMean((-1,)), (x.astype(np.float16),), (),
                 rounded_once(onnx_op("ReduceMean", extra=(np.array([-1]),))))]
    small = (rand(2, 3, 4) / np.float32(4)).astype(np.float32)   # products of a few dozen values
    int_data = rand(3, 4, 5, dtype="int32", low=-3, high=4)
    rows += [row("ReduceProd", "small-all", None, data=small),
             row("ReduceProd", "int32", (1,), data=int_data),
             row("ReduceMin", "int8-drop", (0, -1), False, rand(3, 4, 5, dtype="int8")),
             row("ReduceL1", "int32", (0, 2), data=int_data),
             # ReferenceEvaluator (onnx 1.23) widens integer sums of squares to int64.
             Row("reduce_sum_square-int32-drop", ops.ReduceSumSquare((2,), False), (int_data,),
                 (), onnx_op("ReduceSumSquare", extra=(np.array([2]),), keepdims=0,
                             engine="onnxruntime")),
             Row("reduce_min-bool", ops.ReduceMin((1,), False), (rand(3, 4, 2) > -5,), (),
                 onnx_op("ReduceMin", extra=(np.array([1]),), keepdims=0, opset=20)),
             row("ReduceLogSumExp", "large", (1, 3), data=x * np.float32(40), f64=True),
             Row("reduce_l2-float16", ops.ReduceL2((-1,)), (x.astype(np.float16),), (),
                 rounded_once(onnx_op("ReduceL2", extra=(np.array([-1]),)))),
             Row("reduce_log_sum_exp-float16", ops.ReduceLogSumExp((0, 2), False),
                 (x.astype(np.float16),), (), rounded_once(onnx_op(
                     "ReduceLogSumExp", extra=(np.array([0, 2]),), keepdims=0)))]
    return rows


def layer_norm_rows():
    def row(id, x, axis=-1, param_shape=None, bias=True, offset=0.0, epsilon=1e-5, f64=False):
        data = rand(*x) + np.float32(offset)
        param_shape = param_shape or x[axis:]
        weights = (rand(*param_shape), *([rand(*param_shape)] if bias else []))
        return Row(f"layer_norm-{id}", ops.LayerNorm(axis, epsilon), (data,), weights,
                   onnx_op("LayerNormalization", axis=axis, epsilon=epsilon, opset=17), f64)
    return [row("last", (2, 5, 8), f64=True), row("axis1", (2, 3, 4, 4), axis=1, f64=True),
            row("no-bias", (3, 16), bias=False),
            row("scale-broadcast", (2, 3, 6), axis=-2, param_shape=(1, 6)),
            row("large-mean", (2, 4, 32), offset=30.0, epsilon=1e-3),
            row("vit-768", (1, 5, 768), epsilon=1e-6)]


def instance_norm_rows():
    def row(id, x, offset=0.0, epsilon=1e-5, f64=False):
        data = rand(*x) + np.float32(offset)
        return Row(f"instance_norm-{id}", ops.InstanceNorm(epsilon), (data,),
                   (rand(x[1]), rand(x[1])), onnx_op("InstanceNormalization", epsilon=epsilon),
                   f64)
    return [row("nchw", (2, 3, 5, 6), f64=True), row("ncl", (1, 4, 9)),
            row("large-mean", (1, 8, 16, 16), offset=20.0, epsilon=1e-3),
            row("style", (1, 32, 12, 12), f64=True)]


def pool_row(op_type, id, x, f64=False, dtype="float32", **attrs) -> Row:
    """max_pool2d (`op_type` "MaxPool") or avg_pool2d ("AveragePool") on an input of shape `x`."""
    op = (ops.MaxPool2d if op_type == "MaxPool" else ops.AvgPool2d)(**attrs)
    onnx_attrs = dict(kernel_shape=list(op.kernel), strides=list(op.stride),
                      pads=list(op.padding), ceil_mode=int(op.ceil_mode))
    if op.dilation != (1, 1):
        onnx_attrs["dilations"] = list(op.dilation)
    if op_type == "AveragePool":
        onnx_attrs["count_include_pad"] = int(op.count_include_pad)
    # ReferenceEvaluator (onnx 1.23) gets ceil-mode windows wrong with asymmetric padding and
    # fails on a kernel of extent 1; onnxruntime, torch and a brute-force loop agree there.
    asymmetric = op.padding[:2] != op.padding[2:]
    evaluator_wrong = (op.ceil_mode and asymmetric) or 1 in op.kernel
    engine = "onnxruntime" if evaluator_wrong else "reference"
    return Row(f"{op.name}-{id}", op, (rand(*x, dtype=dtype),), (),
               onnx_op(op_type, engine=engine, **onnx_attrs), f64)


def pool_rows():
    row = pool_row
    mx, av = "MaxPool", "AveragePool"
    return [
        row(mx, "2x2", (1, 3, 8, 8), kernel=2, f64=True),
        row(mx, "3x3-s2", (2, 3, 9, 9), kernel=3, stride=2),
        row(mx, "3x3-s2-pad1", (1, 3, 8, 8), kernel=3, stride=2, padding=1),
        row(mx, "pad-asym", (1, 2, 7, 7), kernel=3, stride=2, padding=(1, 0, 0, 1)),
        row(mx, "ceil", (1, 3, 8, 8), kernel=3, stride=2, ceil_mode=True),
        row(mx, "ceil-pad1", (1, 2, 10, 10), kernel=3, stride=2, padding=1, ceil_mode=True),
        row(mx, "kernel-2x3", (1, 2, 9, 8), kernel=(2, 3), stride=(1, 2)),
        row(mx, "dilation2", (1, 2, 9, 9), kernel=3, stride=1, dilation=2, f64=True),
        row(mx, "dilation2-pad-ceil", (1, 2, 10, 10), kernel=2, stride=2, padding=1, dilation=2,
            ceil_mode=True),
        row(mx, "int8", (1, 3, 6, 6), kernel=2, dtype="int8"),
        row(av, "2x2", (1, 3, 8, 8), kernel=2, f64=True),
        row(av, "3x3-s2", (2, 3, 9, 9), kernel=3, stride=2),
        row(av, "pad1-exclude", (1, 3, 7, 7), kernel=3, stride=1, padding=1, f64=True),
        row(av, "pad1-include", (1, 3, 7, 7), kernel=3, stride=1, padding=1,
            count_include_pad=True),
        row(av, "pad-asym-exclude", (1, 2, 7, 7), kernel=3, stride=2, padding=(1, 0, 0, 1)),
        row(av, "pad-asym-include", (1, 2, 7, 7), kernel=3, stride=2, padding=(0, 1, 1, 0),
            count_include_pad=True),
        row(av, "ceil-exclude", (1, 3, 8, 8), kernel=3, stride=2, ceil_mode=True),
        row(av, "ceil-include", (1, 3, 8, 8), kernel=3, stride=2, ceil_mode=True,
            count_include_pad=True),
        row(av, "ceil-pad1-exclude", (1, 2, 10, 10), kernel=3, stride=2, padding=1,
            ceil_mode=True),
        row(av, "ceil-pad1-include", (1, 2, 10, 10), kernel=3, stride=2, padding=1,
            ceil_mode=True, count_include_pad=True, f64=True),
        row(av, "kernel-3x2", (1, 2, 9, 8), kernel=(3, 2), stride=(2, 1)),
        row(av, "ceil-pad-asym-include", (1, 2, 9, 8), kernel=(3, 4), stride=(3, 1),
            padding=(1, 1, 0, 0), ceil_mode=True, count_include_pad=True),
        row(av, "ceil-pad-asym-exclude", (1, 2, 10, 9), kernel=3, stride=(2, 3),
            padding=(1, 0, 0, 0), dilation=2, ceil_mode=True),
        row(mx, "ceil-pad-asym", (1, 2, 9, 8), kernel=(3, 4), stride=(3, 1),
            padding=(1, 1, 0, 0), ceil_mode=True),
        row(mx, "ceil-pad-asym-bottom", (1, 2, 5, 5), kernel=3, stride=1, padding=(0, 0, 1, 1),
            ceil_mode=True),
        row(mx, "kernel-1x3-pad", (1, 2, 5, 10), kernel=(1, 3), stride=1, padding=(0, 1)),
        row(av, "kernel-3x1-pad", (1, 2, 7, 6), kernel=(3, 1), stride=(2, 1), padding=(1, 0),
            count_include_pad=True),
        row(av, "dilation2", (1, 2, 9, 9), kernel=2, stride=1, dilation=2),
        row(av, "dilation2-pad-include", (1, 2, 8, 8), kernel=3, stride=2, padding=1, dilation=2,
            count_include_pad=True),
    ]


def max_pool_indices_row(id, x, data=None, storage_order=0, **attrs) -> Row:
    """max_pool2d_indices against onnxruntime's MaxPool Indices output (ReferenceEvaluator
    has no storage_order 1)."""
    op = ops.MaxPool2dIndices(**attrs, storage_order=storage_order)
    onnx_attrs = dict(kernel_shape=list(op.kernel), strides=list(op.stride),
                      pads=list(op.padding), ceil_mode=int(op.ceil_mode),
                      dilations=list(op.dilation), storage_order=storage_order)

    def reference(x):
        node = helper.make_node("MaxPool", ["in0"], ["values", "out"], **onnx_attrs)
        return run_onnx([node], [x], engine="onnxruntime", out_dtype=np.int64)
    if data is None:   # few distinct values: many ties
        data = rand(*x, dtype="int32", low=-4, high=5).astype(np.float32)
    return Row(f"max_pool2d_indices-{id}", op, (data,), (), reference, f64=True)


def torch_max_pool_indices(op: ops.MaxPool2dIndices) -> Reference:
    """torch's max_pool2d(return_indices=True), its per-plane indices made flat over the whole
    tensor: where ONNX Runtime never takes a NaN (its comparison is x > max), torch does."""
    def reference(x):
        import torch
        pt, pl, pb, pr = op.padding
        assert (pt, pl) == (pb, pr), "torch pads symmetrically"
        _, index = torch.nn.functional.max_pool2d(
            torch.from_numpy(x), op.kernel, op.stride, (pt, pl), op.dilation, op.ceil_mode,
            return_indices=True)
        n, c, h, w = x.shape
        return index.numpy() + (np.arange(n * c) * h * w).reshape(n, c, 1, 1)
    return reference


def max_unpool_row(id, x, kernel, stride=None, padding=0, output_size=None,
                   window=False) -> Row:
    """max_unpool2d of a max pool's values and indices, against ONNX MaxUnpool; `window`: as
    the node built on the pool's indices records it (gathered, not scattered)."""
    pool = ops.MaxPool2dIndices(kernel, stride, padding)
    data = rand(*x)
    values, indices = pool.values().reference(data), pool.reference(data)
    op = ops.MaxUnpool2d(kernel, stride, padding, output_size, window)
    id += "-window" if window else ""
    shape = () if output_size is None else (np.array([*x[:2], *output_size], np.int64),)
    ref = onnx_op("MaxUnpool", extra=shape, kernel_shape=list(op.kernel),
                  strides=list(op.stride), pads=list(op.padding))
    if output_size is not None:
        # Indices into output_shape, as onnxruntime and torch read them (ReferenceEvaluator
        # reads them in the shape the geometry gives, then pads); torch also runs float64.
        ref = torch_max_unpool(op)
    return Row(f"max_unpool2d-{id}", op, (values, indices), (), ref, f64=True)


def torch_max_unpool(op: ops.MaxUnpool2d) -> Reference:
    """torch's max_unpool2d, the flat indices made per-plane first."""
    def reference(x, indices):
        import torch
        n, c = x.shape[:2]
        plane = (np.arange(n * c) * int(np.prod(op.output_size))).reshape(n, c, 1, 1)
        return torch.nn.functional.max_unpool2d(
            torch.from_numpy(x), torch.from_numpy(indices - plane), op.kernel, op.stride,
            op.padding[:2], output_size=op.output_size).numpy()
    return reference


def unpool_rows():
    nan = rand(1, 2, 6, 6, dtype="int32", low=-3, high=4).astype(np.float32)
    nan[0, 0, 1, 0] = nan[0, 1, 4, 5] = np.nan
    nan_op = ops.MaxPool2dIndices(3, 2, padding=1)
    return [
        max_pool_indices_row("2x2", (2, 3, 8, 8), kernel=2),
        max_pool_indices_row("3x3-s2-pad1", (1, 3, 9, 8), kernel=3, stride=2, padding=1),
        max_pool_indices_row("storage-order1", (1, 2, 7, 9), kernel=(2, 3), stride=(2, 1),
                             padding=(1, 0, 0, 1), storage_order=1),
        max_pool_indices_row("ceil-dilation", (2, 2, 10, 9), kernel=2, stride=2, padding=1,
                             dilation=2, ceil_mode=True),
        max_pool_indices_row("all-negative-pad", (1, 2, 5, 5), data=-np.abs(rand(1, 2, 5, 5))
                             - np.float32(1), kernel=3, stride=1, padding=1),
        max_pool_indices_row("int8", (1, 2, 6, 6), data=rand(1, 2, 6, 6, dtype="int8"),
                             kernel=2),
        Row("max_pool2d_indices-nan-torch", nan_op, (nan,), (), torch_max_pool_indices(nan_op)),
        max_unpool_row("2x2", (2, 3, 8, 8), 2),
        max_unpool_row("3x3-s2-pad1", (1, 2, 9, 9), 3, 2, 1),
        max_unpool_row("output-size", (1, 3, 9, 7), 2, output_size=(9, 7)),
        max_unpool_row("kernel-2x3", (1, 2, 8, 9), (2, 3), (2, 3)),
        max_unpool_row("2x2", (2, 3, 8, 8), 2, window=True),
        max_unpool_row("3x3-s2-pad1", (1, 2, 9, 9), 3, 2, 1, window=True),   # overlapping
        max_unpool_row("output-size", (1, 3, 9, 7), 2, output_size=(9, 7), window=True),
        max_unpool_row("kernel-3x2-s1", (1, 2, 6, 7), (3, 2), 1, window=True),
    ]


def global_pool_rows():
    x = rand(2, 4, 5, 7)
    return [
        Row("global_avg_pool2d", ops.GlobalAvgPool2d(), (x,), (), onnx_op("GlobalAveragePool"),
            f64=True),
        Row("global_avg_pool2d-1x1", ops.GlobalAvgPool2d(), (rand(1, 6, 1, 1),), (),
            onnx_op("GlobalAveragePool")),
        Row("global_max_pool2d", ops.GlobalMaxPool2d(), (x,), (), onnx_op("GlobalMaxPool"),
            f64=True),
    ]


def lrn_rows():
    # ReferenceEvaluator's LRN loops over the batch axis instead of the channels (onnx 1.23), so
    # onnxruntime is the reference; torch adds a float64 one. Both take odd sizes only: the even
    # size row uses the evaluator with batch == channels, where its loop covers every channel.
    def row(id, x, f64=False, **attrs):
        op = ops.Lrn(**attrs)
        if f64:
            ref = torch_lrn(op.size, op.alpha, op.beta, op.bias)
        else:
            engine = "onnxruntime" if op.size % 2 else "reference"
            assert engine == "onnxruntime" or x[0] >= x[1], "see the comment above"
            ref = onnx_op("LRN", size=op.size, alpha=op.alpha, beta=op.beta, bias=op.bias,
                          engine=engine)
        return Row(f"lrn-{id}", op, (rand(*x) * 3,), (), ref, f64)
    alexnet = dict(size=5, alpha=1e-4, beta=0.75, bias=2.0)
    return [
        row("alexnet", (1, 8, 5, 5), **alexnet),
        row("alexnet-torch", (2, 8, 3, 3), f64=True, **alexnet),
        row("default", (2, 6, 4, 4)),
        row("size3-strong", (1, 7, 3, 3), size=3, alpha=0.5, beta=0.5, bias=1.0),
        row("size3-strong-torch", (1, 7, 3, 3), f64=True, size=3, alpha=0.5, beta=0.5, bias=1.0),
        row("size4-even", (4, 4, 3, 2), size=4, alpha=0.3, beta=0.9, bias=1.5),
        row("size1", (1, 3, 4, 4), size=1, alpha=1.0, beta=1.0, bias=0.5),
        row("wider-than-channels", (1, 3, 2, 2), size=7, alpha=0.2, beta=0.75, bias=1.0),
    ]


def linear_rows():
    gemm = onnx_op("Gemm", transB=1)
    return [
        Row("linear", ops.Linear(), (rand(4, 12),), (rand(7, 12), rand(7)), gemm, f64=True),
        Row("linear-nobias", ops.Linear(), (rand(3, 9),), (rand(5, 9),), gemm),
        Row("linear-batch1", ops.Linear(), (rand(1, 32),), (rand(10, 32), rand(10)), gemm),
        Row("linear-rank3", ops.Linear(), (rand(2, 3, 8),), (rand(5, 8), rand(5)), onnx_linear_nd),
        Row("linear-rank1", ops.Linear(), (rand(8),), (rand(3, 8), rand(3)), onnx_linear_nd),
        Row("matmul-2d", ops.Matmul(), (rand(4, 6), rand(6, 5)), (), onnx_op("MatMul"), f64=True),
        Row("matmul-batched", ops.Matmul(), (rand(3, 4, 6), rand(3, 6, 2)), (), onnx_op("MatMul")),
        Row("matmul-broadcast", ops.Matmul(), (rand(2, 1, 4, 6), rand(3, 6, 5)), (),
            onnx_op("MatMul")),
        Row("matmul-weight", ops.Matmul(), (rand(2, 4, 6),), (rand(6, 3),), onnx_op("MatMul")),
        Row("matmul-1d-left", ops.Matmul(), (rand(6), rand(2, 6, 3)), (), onnx_op("MatMul")),
        Row("matmul-1d-right", ops.Matmul(), (rand(2, 4, 6), rand(6)), (), onnx_op("MatMul")),
        Row("matmul-1d-both", ops.Matmul(), (rand(7), rand(7)), (), onnx_op("MatMul")),
        Row("matmul-int32", ops.Matmul(), (rand(3, 4, dtype="int32"), rand(4, 2, dtype="int32")),
            (), onnx_op("MatMul")),
    ]


def binary_rows():
    onnx_names = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div"}
    op_types = {"add": ops.Add, "sub": ops.Sub, "mul": ops.Mul, "div": ops.Div}
    shapes = [("same", (2, 3, 4), (2, 3, 4)), ("bcast-channel", (2, 3, 4, 4), (1, 3, 1, 1)),
              ("bcast-rank", (2, 3, 4), (4,)), ("bcast-both", (3, 1, 5), (1, 4, 1))]
    rows = []
    for (name, onnx_name), (label, sa, sb) in itertools.product(onnx_names.items(), shapes):
        a, b = rand(*sa), rand(*sb)
        if name == "div":
            b = np.where(np.abs(b) < 0.25, 1.0, b).astype(np.float32)
        rows.append(Row(f"{name}-{label}", op_types[name](), (a, b), (), onnx_op(onnx_name),
                        f64=label == "same"))
    rows.append(Row("add-const", ops.Add(), (rand(2, 4, 3, 3),), (rand(4, 1, 1),), onnx_op("Add")))
    rows.append(Row("mul-scalar-const", ops.Mul(), (rand(2, 5),), (np.float32(0.75),),
                    onnx_op("Mul")))
    for dtype in ("int32", "int64"):
        a = rand(4, 6, dtype=dtype, low=-20, high=21)
        b = np.where(a % 2 == 0, 3, -4).astype(dtype) * rand(1, 6, dtype=dtype, low=1, high=3)
        rows += [Row(f"div-{dtype}-trunc", ops.Div(), (a, b), (), onnx_op("Div")),
                 Row(f"add-{dtype}", ops.Add(), (a, b), (), onnx_op("Add")),
                 Row(f"sub-{dtype}", ops.Sub(), (a, b), (), onnx_op("Sub")),
                 Row(f"mul-{dtype}", ops.Mul(), (a, b), (), onnx_op("Mul"))]
    signs = np.array([[-7, 7, -7, 7, -1, 0, 6, -6]], np.int32)
    rows.append(Row("div-int32-signs", ops.Div(),
                    (signs, np.array([[2, -2, -2, 2, 3, -3, -4, 4]], np.int32)), (),
                    onnx_op("Div")))
    return rows


def shape_rows():
    x = rand(2, 3, 4, 5)
    i64 = np.array
    return [
        Row("concat-axis1", ops.Concat(1), (x, rand(2, 2, 4, 5), rand(2, 1, 4, 5)), (),
            onnx_op("Concat", axis=1), f64=True),
        Row("concat-axis-last", ops.Concat(-1), (x, rand(2, 3, 4, 2)), (),
            onnx_op("Concat", axis=-1)),
        Row("concat-axis0-const", ops.Concat(0), (x,), (rand(1, 3, 4, 5),),
            onnx_op("Concat", axis=0)),
        Row("concat-single", ops.Concat(1), (x,), (), onnx_op("Concat", axis=1)),
        Row("concat-int64", ops.Concat(0), (rand(2, 3, dtype="int64"), rand(1, 3, dtype="int64")),
            (), onnx_op("Concat", axis=0)),
        Row("flatten", ops.Flatten(), (x,), (), onnx_op("Flatten", axis=1)),
        Row("flatten-axis0", ops.Flatten(0), (x,), (), onnx_op("Flatten", axis=0)),
        Row("flatten-axis2", ops.Flatten(2), (x,), (), onnx_op("Flatten", axis=2)),
        Row("flatten-axis-neg1", ops.Flatten(-1), (x,), (), onnx_op("Flatten", axis=-1)),
        Row("reshape", ops.Reshape((6, 20)), (x,), (),
            onnx_op("Reshape", extra=(i64([6, 20]),))),
        Row("reshape-minus1", ops.Reshape((2, -1)), (x,), (),
            onnx_op("Reshape", extra=(i64([2, -1]),)), f64=True),
        Row("reshape-minus1-mid", ops.Reshape((4, -1, 5)), (x,), (),
            onnx_op("Reshape", extra=(i64([4, -1, 5]),))),
        Row("transpose-nhwc", ops.Transpose((0, 2, 3, 1)), (x,), (),
            onnx_op("Transpose", perm=[0, 2, 3, 1]), f64=True),
        Row("transpose-2d", ops.Transpose((1, 0)), (rand(3, 7),), (),
            onnx_op("Transpose", perm=[1, 0])),
        Row("transpose-3d", ops.Transpose((2, 0, 1)), (rand(2, 3, 4, dtype="int32"),), (),
            onnx_op("Transpose", perm=[2, 0, 1])),
        Row("pad-spatial", ops.Pad(((0, 0), (0, 0), (1, 2), (3, 0))), (x,), (),
            onnx_op("Pad", extra=(i64([0, 0, 1, 3, 0, 0, 2, 0]),)), f64=True),
        Row("pad-value", ops.Pad(((0, 0), (1, 1), (0, 2), (2, 2)), value=-1.5), (x,), (),
            onnx_op("Pad", extra=(i64([0, 1, 0, 2, 0, 1, 2, 2]), np.float32(-1.5)))),
        Row("pad-2d", ops.Pad(((1, 0), (0, 3)), value=2.0), (rand(3, 4),), (),
            onnx_op("Pad", extra=(i64([1, 0, 0, 3]), np.float32(2.0)))),
        Row("pad-int32", ops.Pad(((1, 1), (2, 0)), value=7), (rand(2, 3, dtype="int32"),), (),
            onnx_op("Pad", extra=(i64([1, 2, 1, 0]), np.int32(7)))),
        Row("pad-reflect", ops.Pad(((0, 0), (0, 0), (2, 1), (3, 0)), mode="reflect"), (x,), (),
            onnx_op("Pad", mode="reflect", extra=(i64([0, 0, 2, 3, 0, 0, 1, 0]),)), f64=True),
        Row("pad-reflect-full", ops.Pad(((0, 0), (0, 0), (3, 3), (4, 4)), mode="reflect"), (x,),
            (), onnx_op("Pad", mode="reflect", extra=(i64([0, 0, 3, 4, 0, 0, 3, 4]),))),
        Row("pad-edge", ops.Pad(((0, 0), (1, 0), (2, 2), (0, 5)), mode="edge"), (x,), (),
            onnx_op("Pad", mode="edge", extra=(i64([0, 1, 2, 0, 0, 0, 2, 5]),)), f64=True),
        Row("pad-edge-2d", ops.Pad(((1, 3), (2, 0)), mode="edge"), (rand(3, 4),), (),
            onnx_op("Pad", mode="edge", extra=(i64([1, 2, 3, 0]),))),
        Row("pad-wrap", ops.Pad(((0, 0), (0, 0), (2, 1), (3, 0)), mode="wrap"), (x,), (),
            onnx_op("Pad", mode="wrap", extra=(i64([0, 0, 2, 3, 0, 0, 1, 0]),)), f64=True),
        # Wider than the axis: the torus wraps more than once.
        Row("pad-wrap-wide", ops.Pad(((1, 0), (0, 2), (5, 9), (0, 7)), mode="wrap"), (x,), (),
            onnx_op("Pad", mode="wrap", extra=(i64([1, 0, 5, 0, 0, 2, 9, 7]),))),
        Row("pad-wrap-int32", ops.Pad(((2, 1), (0, 3)), mode="wrap"), (rand(3, 4, dtype="int32"),),
            (), onnx_op("Pad", mode="wrap", extra=(i64([2, 0, 1, 3]),))),
        Row("expand", ops.Expand((2, 3, 4)), (rand(3, 1),), (),
            onnx_op("Expand", extra=(i64([2, 3, 4]),)), f64=True),
        Row("expand-ones-keep", ops.Expand((3, 1, 1)), (rand(1, 4, 5),), (),
            onnx_op("Expand", extra=(i64([3, 1, 1]),))),
        Row("expand-int64", ops.Expand((2, 3)), (rand(3, dtype="int64"),), (),
            onnx_op("Expand", extra=(i64([2, 1]),))),
        Row("tile", ops.Tile((2, 1, 3)), (rand(2, 3, 4),), (),
            onnx_op("Tile", extra=(i64([2, 1, 3]),)), f64=True),
        Row("tile-int32", ops.Tile((1, 2)), (rand(3, 4, dtype="int32"),), (),
            onnx_op("Tile", extra=(i64([1, 2]),))),
        # onnx's test_tile: modulo indexing compiles to garbage for AVX-512 at this shape.
        Row("tile-onnx-case", ops.Tile((7, 6, 4, 1)), (x,), (),
            onnx_op("Tile", extra=(i64([7, 6, 4, 1]),))),
        *slice_rows(x),
        *gather_rows(x),
        *table_lookup_rows(),
    ]


def table_lookup_rows():
    """ONNX's form of the lookup: Cast to int64 indices, then Gather from the table."""
    def cast_then_gather(x, table):
        nodes = [helper.make_node("Cast", ["in0"], ["index"], to=onnx.TensorProto.INT64),
                 helper.make_node("Gather", ["in1", "index"], ["out"], axis=0)]
        return run_onnx(nodes, [x, table], out_dtype=table.dtype)
    every = np.arange(256, dtype=np.uint8).reshape(1, 4, 8, 8)
    return [
        Row("table_lookup-every-code-uint8-table", ops.TableLookup(), (every,),
            (_rng.permutation(256).astype(np.uint8),), cast_then_gather),
        Row("table_lookup-float-table", ops.TableLookup(),
            (rand(2, 3, 5, dtype="uint8", low=0, high=256),),
            (rand(256, dtype="float32"),), cast_then_gather),
    ]


def slice_rows(x):
    big = np.iinfo(np.int64).max
    def row(id, starts, ends, axes, steps, data=x, f64=False):
        op = ops.Slice(starts, ends, axes, steps)
        extra = tuple(np.array(v, np.int64) for v in (starts, ends, axes, steps))
        return Row(f"slice-{id}", op, (data,), (), onnx_op("Slice", extra=extra), f64)
    return [
        row("channels", (1,), (3,), (1,), (1,), f64=True),
        row("to-end-int64-max", (2,), (big,), (-1,), (1,)),
        row("negative-start", (-3, 1), (-1, 4), (3, 2), (1, 2)),
        row("reverse", (-1,), (-big - 1,), (2,), (-1,), f64=True),
        row("reverse-step2-clamped", (100, 1), (-100, -1), (3, 0), (-2, 1)),
        row("step3", (0,), (5,), (3,), (3,)),
        row("shufflenet-half", (0,), (3,), (1,), (1,), data=rand(1, 6, 4, 4)),
        row("int32", (1,), (3,), (0,), (1,), data=rand(4, 3, dtype="int32")),
    ]


def gather_rows(x):
    i64 = np.array
    def row(id, axis, indices, runtime=False, data=x, f64=False):
        arrays = (data, indices)
        inputs, weights = (arrays, ()) if runtime else (arrays[:1], arrays[1:])
        return Row(f"gather-{id}", ops.Gather(axis), inputs, weights,
                   onnx_op("Gather", axis=axis), f64)
    return [
        row("scalar", 1, i64(2), f64=True),
        row("last-lstm-step", 0, i64(-1), data=rand(5, 2, 3)),
        row("vector-negative", 3, i64([4, -1, 0, -5])),
        row("matrix", 2, i64([[0, 3], [1, 1], [-2, 2]])),
        row("runtime-int32", 0, np.array([1, 0, 1], np.int32), runtime=True, f64=True),
        row("int64-data", 1, i64([2, 0]), data=rand(3, 4, dtype="int64")),
    ]


def resize_rows():
    def row(id, x, size, mode="nearest", coords="half_pixel", nearest="round_prefer_floor",
            f64=False, dtype="float32"):
        op = ops.Resize(size, mode, coords, nearest)
        attrs = dict(mode="linear" if mode == "bilinear" else "nearest",
                     coordinate_transformation_mode=coords)
        if mode == "nearest":
            attrs["nearest_mode"] = nearest
        sizes = np.array([*x[:2], *op.size], np.int64)
        return Row(f"resize-{id}", op, (rand(*x, dtype=dtype),), (),
                   onnx_op("Resize", extra=(None, None, sizes), **attrs), f64)
    up, down = (1, 2, 4, 5), (1, 2, 9, 8)
    rows = []
    for nearest in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        for coords in ("half_pixel", "asymmetric", "align_corners"):
            rows.append(row(f"nearest-{nearest}-{coords}-up", up, (8, 10), "nearest", coords,
                            nearest))
            rows.append(row(f"nearest-{nearest}-{coords}-down", down, (4, 3), "nearest", coords,
                            nearest))
        # Halving with half_pixel samples at 2x + 0.5: every coordinate is a tie.
        rows.append(row(f"nearest-{nearest}-half_pixel-down2-ties", (1, 2, 8, 10), (4, 5),
                        "nearest", "half_pixel", nearest))
    rows += [
        row("nearest-pytorch_half_pixel-up", up, (7, 9), "nearest", "pytorch_half_pixel", "floor"),
        row("nearest-x2-torch-default", up, (8, 10), "nearest", "asymmetric", "floor"),
        row("nearest-non-integer-up", up, (7, 13), "nearest", "half_pixel", "round_prefer_ceil"),
        row("nearest-int32", up, (6, 11), "nearest", "asymmetric", "floor", dtype="int32"),
        row("nearest-uint8-down", down, (5, 3), "nearest", "half_pixel", dtype="uint8"),
        row("bilinear-half_pixel-up", up, (8, 10), "bilinear", "half_pixel", f64=True),
        row("bilinear-half_pixel-down", down, (4, 3), "bilinear", "half_pixel"),
        row("bilinear-half_pixel-odd", up, (7, 11), "bilinear", "half_pixel"),
        row("bilinear-align_corners-up", up, (8, 10), "bilinear", "align_corners", f64=True),
        row("bilinear-align_corners-down", down, (4, 3), "bilinear", "align_corners"),
        row("bilinear-asymmetric-up", up, (8, 10), "bilinear", "asymmetric"),
        row("bilinear-pytorch_half_pixel-down", down, (5, 1), "bilinear", "pytorch_half_pixel"),
    ]
    return rows


# ---- quantized ops: ONNX Runtime is the reference, its CPU kernels define the rounding -----------
F32 = np.float32
# Scales whose requantize multiplier (0.759 * 0.854) / 0.684, in float32, rounds accumulators of
# +-105 to the other side of a .5 than 0.759 * (0.854 / 0.684) or the exact product would: the
# rows using them fail unless the multiplier is computed as ONNX Runtime computes it.
ORDER_SENSITIVE = (F32(0.75911987), F32(0.85387355), F32(0.6840221))


def qrand(*shape: int, dtype: str = "int8") -> np.ndarray:
    """Integers over the whole range of `dtype`, both saturation limits included."""
    info = np.iinfo(dtype)
    return _rng.integers(info.min, int(info.max) + 1, size=shape).astype(dtype)


def ort_op(op_type: str, out_dtype, **attrs) -> Reference:
    return onnx_op(op_type, engine="onnxruntime", out_dtype=out_dtype, **attrs)


def quantize_rows():
    # x / scale lands exactly on ties (scale 0.25), on both saturation limits and beyond.
    ties = np.array([2.5, -2.5, 0.5, -0.5, 1.5, -1.5, 3.5, -3.5, 126.5, -127.5, 127.5, -128.5,
                     1e4, -1e4, 0.0], F32) * F32(0.25)
    def row(id, x, scale, zero_point, runtime=False, opset=OPSET, **attrs):
        arrays = (x, np.asarray(scale, x.dtype), np.asarray(zero_point))
        inputs, weights = (arrays, ()) if runtime else (arrays[:1], arrays[1:])
        return Row(f"quantize_linear-{id}", ops.QuantizeLinear(**attrs), inputs, weights,
                   ort_op("QuantizeLinear", arrays[2].dtype, opset=opset, **attrs))
    x = rand(2, 3, 4, 4) * 20
    return [
        row("int8-ties", ties, 0.25, np.int8(0)),
        row("int8-ties-zero-point", ties, 0.25, np.int8(-3)),
        row("uint8-ties", ties, 0.25, np.uint8(128)),
        row("uint8", x, 0.37, np.uint8(100)),
        row("int8-axis1", x, [0.1, 0.5, 2.0], np.array([-5, 0, 7], np.int8), axis=1),
        row("uint8-axis-last", rand(3, 5) * 50, [0.2, 0.3, 0.5, 0.7, 1.1],
            np.array([0, 10, 128, 250, 255], np.uint8), axis=-1),
        row("int8-blocked", rand(3, 5) * 30, rand(3, 3) ** 2 + 0.1, qrand(3, 3, dtype="int8"),
            axis=1, block_size=2, opset=21),
        row("uint8-scale-vector", x, [0.3], np.array([9], np.uint8)),
        row("int8-float16", (x * 3).astype(np.float16), 0.7, np.int8(1)),
        row("uint8-runtime-parameters", x, [0.1, 0.5, 2.0], np.array([3, 128, 250], np.uint8),
            runtime=True, axis=1),
    ]


def dequantize_rows():
    def row(id, x, scale, zero_point, runtime=False, opset=OPSET, scale_dtype=F32, **attrs):
        arrays = (x, np.asarray(scale, scale_dtype), np.asarray(zero_point, x.dtype))
        inputs, weights = (arrays, ()) if runtime else (arrays[:1], arrays[1:])
        return Row(f"dequantize_linear-{id}", ops.DequantizeLinear(**attrs), inputs, weights,
                   ort_op("DequantizeLinear", scale_dtype, opset=opset, **attrs))
    x8, xu8 = qrand(2, 3, 4, 4), qrand(2, 3, 4, 4, dtype="uint8")
    return [
        row("int8", x8, 0.05, -3),
        row("uint8-axis1", xu8, [0.1, 0.5, 2.0], [0, 128, 255], axis=1),
        row("int32-bias", _rng.integers(-10**6, 10**6, (2, 7)).astype(np.int32), 1.3e-4, 0),
        row("uint8-blocked", qrand(5, 4, dtype="uint8"), rand(3, 4) ** 2,
            qrand(3, 4, dtype="uint8"), axis=0, block_size=2, opset=21),
        row("int8-float16", x8, 0.125, 2, scale_dtype=np.float16),
        row("int8-runtime-parameters", x8, [0.1, 0.5, 2.0], [-1, 0, 5], runtime=True, axis=1),
    ]


def integer_conv_row(id, x, o, k, x_dtype="uint8", w_dtype="int8", x_zp=0, w_zp=0,
                     runtime=False, **attrs) -> Row:
    """conv2d_integer on (u)int8 x of shape `x`; a w_zp list is one zero point per channel."""
    op = ops.Conv2dInteger(ops.Conv2d(**attrs))
    x_, w = qrand(*x, dtype=x_dtype), qrand(o, x[1] // op.conv.groups, *ops.base.pair(k),
                                            dtype=w_dtype)
    arrays = (x_, w, np.asarray(x_zp, x_dtype), np.asarray(w_zp, w_dtype))
    inputs, weights = (arrays, ()) if runtime else (arrays[:1], arrays[1:])
    # onnxruntime's ConvInteger takes one w_zero_point only: the evaluator checks the others.
    engine = "reference" if arrays[3].ndim else "onnxruntime"
    ref = onnx_op("ConvInteger", engine=engine, out_dtype="int32", **onnx_conv_attrs(op.conv))
    return Row(f"conv2d_integer-{id}", op, inputs, weights, ref)


def integer_conv_rows():
    row = integer_conv_row
    return [
        row("u8s8-pad1", (1, 4, 7, 7), 6, 3, x_zp=128, padding=1),
        row("s8s8-stride2-pad-asym", (1, 3, 9, 9), 4, 3, "int8", x_zp=-3, w_zp=5, stride=2,
            padding=(1, 0, 2, 1)),
        row("u8u8-groups2-dilation2", (1, 4, 9, 9), 4, 3, "uint8", "uint8", x_zp=7, w_zp=200,
            groups=2, dilation=2, padding=2),
        row("s8u8-depthwise", (2, 5, 6, 6), 5, 3, "int8", "uint8", w_zp=3, groups=5, padding=1),
        row("per-channel-w-zp-groups2", (1, 4, 6, 6), 6, 3, x_zp=9,
            w_zp=[0, -1, 2, 127, -128, 5], groups=2, padding=(0, 1, 1, 0)),
        row("1x1-no-zero-points", (1, 8, 5, 5), 4, 1, "int8"),
        row("runtime-zero-points", (1, 3, 6, 6), 4, 3, x_zp=[250], w_zp=-7, runtime=True,
            padding=1),
    ]


def integer_matmul_rows():
    def row(id, a, b, a_zp, b_zp, runtime=False):
        arrays = (a, b, np.asarray(a_zp, a.dtype), np.asarray(b_zp, b.dtype))
        inputs, weights = (arrays, ()) if runtime else (arrays[:1], arrays[1:])
        return Row(f"matmul_integer-{id}", ops.MatmulInteger(), inputs, weights,
                   ort_op("MatMulInteger", "int32"))
    return [
        row("u8s8", qrand(4, 12, dtype="uint8"), qrand(12, 5), 128, 0),
        row("s8u8-batched-per-column", qrand(2, 1, 4, 6), qrand(6, 5, dtype="uint8"), -7,
            [0, 1, 128, 254, 255]),
        row("u8u8-broadcast", qrand(2, 1, 4, 6, dtype="uint8"), qrand(3, 6, 5, dtype="uint8"),
            17, 200),
        row("s8s8-extremes", np.array([[-128, 127, -128], [127, -128, -128]], np.int8),
            np.full((3, 4), -128, np.int8), 0, 0),
        row("runtime-zero-points", qrand(3, 7, dtype="uint8"), qrand(2, 7, 6), 3, 4,
            runtime=True),
    ]


def qlinear_matmul_rows():
    def row(id, a, b, scales, zero_points, runtime=False):
        a_scale, b_scale, y_scale = (np.asarray(s, F32) for s in scales)
        a_zp, b_zp, y_zp = zero_points
        arrays = (a, a_scale, np.asarray(a_zp, a.dtype), b, b_scale, np.asarray(b_zp, b.dtype),
                  y_scale, np.asarray(y_zp))
        inputs, weights = (arrays, ()) if runtime else (arrays[:1], arrays[1:])
        return Row(f"qlinear_matmul-{id}", ops.QLinearMatmul(), inputs, weights,
                   ort_op("QLinearMatMul", y_zp.dtype, opset=21))
    every_int8 = np.arange(-128, 128, dtype=np.int8).reshape(-1, 1)
    return [
        row("u8s8-per-tensor", qrand(4, 12, dtype="uint8"), qrand(12, 5), (0.02, 0.01, 0.25),
            (128, 0, np.uint8(120))),
        row("s8-batched-per-column", qrand(2, 3, 12), qrand(12, 5),
            (0.02, _rng.uniform(0.005, 0.02, 5), 0.3), (-2, np.zeros(5), np.int8(-4))),
        row("u8u8-saturating", qrand(4, 12, dtype="uint8"), qrand(12, 5, dtype="uint8"),
            (0.02, 0.01, 1e-3), (100, 128, np.uint8(128))),
        row("order-sensitive-scales", every_int8, np.ones((1, 1), np.int8), ORDER_SENSITIVE,
            (0, 0, np.int8(0))),
        row("runtime-parameters", qrand(3, 8), qrand(8, 4), (0.05, 0.02, 0.4),
            (1, 0, np.int8(3)), runtime=True),
    ]


def onnx_qlinear_conv(op: ops.QLinearConv2d) -> Reference:
    """qlinear_conv2d as ONNX Runtime computes it: QLinearConv, then the activation as a Clip on
    the integers between its bounds quantized by QuantizeLinear with y's scale and zero point.
    With a residual, the requantize's float32 arithmetic is spelled out in ONNX ops: ConvInteger
    (+ bias), Cast, Mul by (x_scale * w_scale) / y_scale, plus Cast(r - r_zp) * (r_scale /
    y_scale), then QuantizeLinear with scale 1 (rounds half to even, adds y_zp, saturates)."""
    def reference(*arrays: np.ndarray) -> np.ndarray:
        names = [f"in{i}" for i in range(len(arrays))]
        x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp = names[:8]
        bias = names[8] if op.has_bias else None
        extra: list[np.ndarray] = []
        def const(array) -> str:
            extra.append(np.asarray(array))
            return f"extra{len(extra) - 1}"
        nodes = []
        def add(op_type, inputs, **attrs) -> str:
            out = f"t{len(nodes)}"
            nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
            return out
        if not op.has_residual:
            value = add("QLinearConv", names[:8] + ([bias] if bias else []),
                        **onnx_conv_attrs(op.conv))
        else:
            r, r_scale, r_zp = names[-3:]
            channels = const(np.array([1, -1, 1, 1], np.int64))
            acc = add("ConvInteger", [x, w, x_zp, w_zp], **onnx_conv_attrs(op.conv))
            if bias:
                acc = add("Add", [acc, add("Reshape", [bias, channels])])
            float32, int32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
            multiplier = add("Div", [add("Mul", [x_scale, add("Reshape", [w_scale, channels])]),
                                     y_scale])
            scaled = add("Mul", [add("Cast", [acc], to=float32), multiplier])
            difference = add("Sub", [add("Cast", [r], to=int32), add("Cast", [r_zp], to=int32)])
            added = add("Mul", [add("Cast", [difference], to=float32),
                                add("Div", [r_scale, y_scale])])
            value = add("QuantizeLinear", [add("Add", [scaled, added]), const(F32(1)), y_zp])
        act = op.activation
        if act is not None:
            low, high = (0.0, None) if isinstance(act, ops.Relu) else (act.min, act.max)
            bounds = ["" if b is None else add("QuantizeLinear", [const(F32(b)), y_scale, y_zp])
                      for b in (low, high)]
            value = add("Clip", [value, *bounds])
        nodes.append(helper.make_node("Identity", [value], ["out"]))
        return run_onnx(nodes, arrays, extra, "onnxruntime", arrays[7].dtype)
    return reference


def qlinear_conv_row(id, x, o, k, x_dtype="uint8", w_dtype="int8", per_channel=True,
                     bias=True, activation=None, residual=False, runtime=False, w_zp=0,
                     y_scale=None, **attrs) -> Row:
    """qlinear_conv2d on x of shape `x` (y of x's dtype, as onnxruntime requires); y_scale is
    chosen to spread the outputs over the int range with some saturation unless given."""
    op = ops.QLinearConv2d(ops.Conv2d(**attrs), activation, bias, residual)
    conv = op.conv
    groups = conv.groups
    x_, w = qrand(*x, dtype=x_dtype), qrand(o, x[1] // groups, *ops.base.pair(k), dtype=w_dtype)
    x_scale = F32(0.02)
    w_scale = _rng.uniform(0.002, 0.01, o).astype(F32) if per_channel else F32(0.005)
    taps = w[0].size
    y_scale = F32(y_scale or 0.02 * 0.006 * 74 * 74 * np.sqrt(taps) / 50)
    zp = (lambda v: np.asarray(v, x_dtype))
    x_zp, y_zp = zp(128 if x_dtype == "uint8" else 3), zp(110 if x_dtype == "uint8" else -4)
    # ConvInteger (the residual rows' reference) takes one w_zero_point only.
    w_zp = np.asarray(w_zp, w_dtype) if residual or not per_channel else \
        np.full(o, w_zp, w_dtype)
    arrays = [x_, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp]
    if bias:
        arrays.append(_rng.integers(-20000, 20000, o).astype(np.int32))
    if residual:
        out_shape = integer_conv_type_shape(op, x_, w)
        arrays += [qrand(*out_shape, dtype=x_dtype), F32(y_scale * 0.8), zp(9)]
    arrays = tuple(np.asarray(a) for a in arrays)
    inputs, weights = (arrays, ()) if runtime else (arrays[:1], arrays[1:])
    # Compiled: LLVM contracts the residual epilogue's float32 multiply and add into one fused
    # multiply-add (one rounding, not two), which may move a value across a .5.
    return Row(f"qlinear_conv2d-{id}", op, inputs, weights, onnx_qlinear_conv(op),
               compiled_steps=1 if residual else 0)


def integer_conv_type_shape(op, x, w) -> tuple[int, ...]:
    return ops.quant.integer_conv_type(op.conv, go.TensorType.of(x), go.TensorType.of(w)).shape


def qlinear_conv_rows():
    row = qlinear_conv_row
    every_int8 = np.arange(-128, 128, dtype=np.int8).reshape(1, 1, 16, 16)
    a_scale, w_scale, y_scale = ORDER_SENSITIVE
    order_sensitive = Row(
        "qlinear_conv2d-order-sensitive-scales", ops.QLinearConv2d(has_bias=False),
        (every_int8,), tuple(np.asarray(a) for a in (
            a_scale, np.int8(0), np.ones((1, 1, 1, 1), np.int8), np.array([w_scale], F32),
            np.array([0], np.int8), y_scale, np.int8(0))),
        onnx_qlinear_conv(ops.QLinearConv2d(has_bias=False)))
    return [
        row("u8s8-per-channel-pad1", (1, 4, 7, 7), 6, 3, padding=1),
        row("s8-per-tensor-nobias-stride2", (1, 3, 9, 9), 4, 3, "int8", per_channel=False,
            bias=False, stride=2, padding=(1, 0, 2, 1)),
        row("u8u8-w-zero-point-groups2", (1, 4, 6, 6), 4, 3, "uint8", "uint8", w_zp=131,
            groups=2, padding=1),
        row("s8-depthwise", (1, 5, 8, 8), 5, 3, "int8", groups=5, padding=1),
        row("dilation2", (2, 3, 9, 9), 4, 3, dilation=2, padding=2),
        order_sensitive,
        row("u8-saturating", (1, 3, 6, 6), 4, 3, y_scale=1e-3, padding=1),
        row("u8-relu", (1, 3, 6, 6), 4, 3, activation=ops.Relu(), padding=1),
        row("s8-relu6", (1, 3, 6, 6), 4, 3, "int8", activation=ops.Clip(0.0, 6.0),
            y_scale=0.05, padding=1),
        row("s8-clip-asymmetric", (1, 3, 6, 6), 4, 3, "int8", activation=ops.Clip(-1.5, 2.0),
            y_scale=0.03),
        row("u8-residual-relu", (1, 4, 6, 6), 4, 3, activation=ops.Relu(), residual=True,
            padding=1),
        row("s8-residual-per-tensor", (1, 3, 7, 7), 5, 3, "int8", per_channel=False,
            bias=False, residual=True, stride=2),
        row("u8-residual-relu6-depthwise", (1, 4, 6, 6), 4, 3, activation=ops.Clip(0.0, 6.0),
            residual=True, groups=4, padding=1, y_scale=0.05),
        row("u8-runtime-parameters-relu", (1, 3, 6, 6), 4, 3, activation=ops.Relu(),
            runtime=True, padding=1),
    ]


def cast_rows():
    """ONNX Cast: float <-> half precision round to nearest even (infinity past float16's
    range), float -> int truncates toward zero, float -> bool is x != 0 (NaN is True)."""
    x = rand(2, 3, 4, 5) * 3
    # Ties, float16 subnormals and its largest value; NaN and infinities only where the
    # result is a bool (assert_close compares finite values).
    edges = np.array([0.0, -0.0, 65504.0, 1e-6, 1.00390625, 1.0009765625 * 3, -2.7, 2.5,
                      1e30], np.float32)
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-30, -2.5], np.float32)
    def row(id, to, data):
        return Row(f"cast-{id}", ops.Cast(to), (data,), (),
                   onnx_op("Cast", to=helper.np_dtype_to_tensor_dtype(np.dtype(to))))
    return [row("float16", "float16", x), row("bfloat16", "bfloat16", x),
            row("float16-edges", "float16", edges[:-1]), row("bfloat16-edges", "bfloat16", edges),
            row("from-float16", "float32", x.astype(np.float16)),
            row("from-bfloat16", "float32", x.astype("bfloat16")),
            row("float16-to-bfloat16", "bfloat16", x.astype(np.float16)),
            row("bfloat16-to-float16", "float16", x.astype("bfloat16")),
            row("float64", "float64", x),
            row("int32", "int32", x * 10), row("from-int32", "float32", rand(3, 8, dtype="int32")),
            row("bool", "bool", special), row("int32-to-bool", "bool", rand(3, 8, dtype="int32")),
            row("int32-to-uint8", "uint8", rand(3, 8, dtype="int32", low=0, high=255))]


def onnx_recurrent(op: ops.Op, output: int, engine: str) -> Reference:
    """ONNX LSTM / GRU with the op's attributes, reading the row's arrays (X, W, R and the
    optional inputs after them) and the sequence lengths as a constant; `output` is checked."""
    from graphopt.ops.recurrent import onnx_activation_lists
    names, alphas, betas = onnx_activation_lists(op.activations)
    attrs = dict(direction=op.direction, layout=op.layout, clip=op.clip,
                 activations=names or None, activation_alpha=alphas or None,
                 activation_beta=betas or None)
    if isinstance(op, ops.Lstm):
        attrs["input_forget"] = int(op.input_forget)
    else:
        attrs["linear_before_reset"] = int(op.linear_before_reset)

    def reference(*arrays):
        inputs = [f"in{i}" for i in range(len(arrays))]
        extra = [] if op.sequence_lens is None else [np.array(op.sequence_lens, np.int32)]
        inputs = inputs[:4] + [""] * (4 - len(inputs[:4])) + \
            (["extra0"] if extra else [""]) + inputs[4:]
        outputs = [""] * output + ["out"]
        node = helper.make_node("LSTM" if isinstance(op, ops.Lstm) else "GRU", inputs, outputs,
                                hidden_size=arrays[2].shape[2],
                                **{k: v for k, v in attrs.items() if v is not None})
        return run_onnx([node], arrays, extra, engine, opset=14)
    return reference


def recurrent_rows():
    """lstm and gru against onnxruntime (onnx.reference where ORT has no kernel: layout 1,
    float64), each output (Y, Y_h, Y_c) in some row."""
    def normal(*shape):
        return (_rng.standard_normal(shape) * 0.5).astype(np.float32)

    def row(id, op, steps=4, batch=3, size=5, hidden=6, bias=True, states=False, peep=False,
            output=0, f64=False):
        d, gates = op.num_directions, op.gates
        x = normal(steps, batch, size) if op.layout == 0 else normal(batch, steps, size)
        state = (d, batch, hidden) if op.layout == 0 else (batch, d, hidden)
        weights = [normal(d, gates * hidden, size), normal(d, gates * hidden, hidden)]
        if bias or states or peep:
            weights.append(normal(d, 2 * gates * hidden) if bias else
                           np.zeros((d, 2 * gates * hidden), np.float32))
        if states or peep:
            weights += [normal(*state) for _ in range(op.states)]
        if peep:
            weights.append(normal(d, 3 * hidden))
        engine = "reference" if op.layout or f64 else "onnxruntime"
        return Row(f"{op.name}-{id}", op, (x,), tuple(weights), onnx_recurrent(op, output, engine),
                   f64, output=output)

    return [
        row("defaults", ops.Lstm(), bias=False),
        row("reverse-states-Y_h", ops.Lstm("reverse"), states=True, output=1),
        row("bidirectional-peepholes-Y_c", ops.Lstm("bidirectional"), peep=True, output=2),
        row("sequence-lens", ops.Lstm("bidirectional", sequence_lens=(4, 2, 1)), states=True),
        row("sequence-lens-Y_h", ops.Lstm("reverse", sequence_lens=(1, 4, 3)), states=True,
            output=1),
        row("clip-input-forget-Y_c", ops.Lstm(clip=0.4, input_forget=True), output=2),
        row("activations", ops.Lstm(activations=(("HardSigmoid", 0.3, 0.4),
                                                 ("LeakyRelu", 0.1, 0.0), ("Elu", 0.9, 0.0)))),
        row("activations-softsign-softplus", ops.Lstm(activations=(
            ("Sigmoid", 0, 0), ("Softsign", 0, 0), ("Softplus", 0, 0)))),
        row("affine-scaled-tanh-relu", ops.Lstm(activations=(
            ("Affine", 0.5, 0.1), ("ScaledTanh", 0.7, 1.3), ("Relu", 0, 0)))),
        row("layout1-bidirectional", ops.Lstm("bidirectional", layout=1), states=True,
            output=1, f64=True),
        row("one-step", ops.Lstm(), steps=1, states=True, output=2),
        row("defaults", ops.Gru(), bias=False),
        row("linear-before-reset-Y_h", ops.Gru("bidirectional", linear_before_reset=True),
            states=True, output=1),
        row("sequence-lens-reverse", ops.Gru("reverse", linear_before_reset=True,
                                             sequence_lens=(2, 4, 3)), states=True),
        row("relu-clip", ops.Gru(activations=(("Relu", 0, 0), ("Tanh", 0, 0)), clip=1.0)),
        row("layout1", ops.Gru(layout=1), states=True, f64=True),
    ]


def arg_reduce_rows():
    ties = rand(3, 4, 5, low=-2, high=3)    # few distinct values: the tie rule matters

    def row(op_class, id, data=ties, axis=0, keepdims=True, last=False, f64=False):
        op = op_class(axis, keepdims, last)
        return Row(f"{op.name}-{id}", op, (data,), (),
                   onnx_op("ArgMax" if op_class is ops.ArgMax else "ArgMin", out_dtype=np.int64,
                           axis=axis, keepdims=int(keepdims), select_last_index=int(last)), f64)
    return [
        row(ops.ArgMax, "axis1", axis=1, f64=True),
        row(ops.ArgMax, "last-axis-drop", axis=-1, keepdims=False),
        row(ops.ArgMax, "select-last", axis=2, last=True),
        row(ops.ArgMax, "int64", rand(4, 7, dtype="int64"), axis=1, keepdims=False),
        row(ops.ArgMin, "axis0", axis=0),
        row(ops.ArgMin, "select-last-drop", axis=1, keepdims=False, last=True),
    ]


def cumsum_rows():
    x = rand(3, 4, 5)

    def row(id, data=x, axis=0, exclusive=False, reverse=False, f64=False, reference=None):
        onnx_node = onnx_op("CumSum", extra=[np.array(axis, np.int64)],
                            exclusive=int(exclusive), reverse=int(reverse))
        return Row(f"cumsum-{id}", ops.CumSum(axis, exclusive, reverse), (data,), (),
                   reference or onnx_node, f64)
    return [
        row("axis1", axis=1, f64=True),
        row("last-axis", axis=-1),
        row("exclusive", axis=2, exclusive=True, f64=True),
        row("reverse", axis=0, reverse=True),
        row("exclusive-reverse", axis=1, exclusive=True, reverse=True, f64=True),
        row("int32", rand(4, 6, dtype="int32"), axis=1, reverse=True),
        row("int64-exclusive", rand(7, dtype="int64"), axis=0, exclusive=True),
        # rows longer than a parallel task's chunk of 1024 columns, and an empty axis
        row("chunks-reverse", rand(2, 3, 1500) / 8, axis=1, reverse=True),
        row("empty-axis", rand(2, 0, 3), axis=1, exclusive=True),
        # float16 sums in float32, rounded once (torch's CPU cumsum does the same)
        row("float16", (x / 4).astype(np.float16), axis=2,
            reference=rounded_once(onnx_op("CumSum", extra=[np.array(2, np.int64)]))),
    ]


def random_rows(count: int = 8, seed: int = 99, tag: str = "random"):
    """Seeded random attribute combinations for the ops with the most interacting attributes;
    `infer` only filters out invalid combinations, the values come from the reference."""
    pick = np.random.default_rng(seed)
    def draw(make):
        rows = []
        while len(rows) < count:
            try:
                rows.append(make(len(rows)))
            except go.ShapeError:
                continue
        return rows
    def ints(low, high, n=2):
        return tuple(int(v) for v in pick.integers(low, high + 1, n))
    def conv(i):
        groups = int(pick.choice([1, 2, 3]))
        x = (1, groups * int(pick.integers(1, 3)), *ints(5, 12))
        row = conv_row(f"{tag}{i}", x, groups * int(pick.integers(1, 3)), ints(1, 4),
                       bias=bool(pick.integers(2)), stride=ints(1, 3), padding=ints(0, 2, 4),
                       dilation=ints(1, 2), groups=groups)
        row.op.infer(*(go.TensorType(a.shape) for a in row.arrays))
        return row
    def conv_transpose(i):
        groups = int(pick.choice([1, 2]))
        stride, dilation = ints(1, 3), ints(1, 2)
        # output_padding >= stride (allowed below dilation) has torch rows: ONNX rejects it.
        out_pad = tuple(int(pick.integers(0, s)) for s in stride)
        row = conv_transpose_row(f"{tag}{i}", (1, 2 * groups, *ints(3, 6)), groups * 2,
                                 ints(1, 4), stride=stride, padding=ints(0, 2, 4),
                                 output_padding=out_pad, dilation=dilation, groups=groups)
        row.op.infer(*(go.TensorType(a.shape) for a in row.arrays))
        return row
    def pool(op_type):
        def make(i):
            extra = {"count_include_pad": bool(pick.integers(2))} if op_type == "AveragePool" \
                else {}
            row = pool_row(op_type, f"{tag}{i}", (1, 2, *ints(5, 11)), kernel=ints(1, 4),
                           stride=ints(1, 3), padding=ints(0, 1, 4), dilation=ints(1, 2),
                           ceil_mode=bool(pick.integers(2)), **extra)
            row.op.infer(go.TensorType(row.inputs[0].shape))
            return row
        return make
    return [*draw(conv), *draw(conv_transpose), *draw(pool("MaxPool")),
            *draw(pool("AveragePool"))]


ROWS: list[Row] = [*conv_rows(), *fused_conv_rows(), *conv_transpose_rows(), *batch_norm_rows(),
                   *activation_rows(), *math_rows(), *extremum_rows(), *logical_rows(),
                   *pow_rows(), *where_rows(), *compare_rows(), *reduce_rows(),
                   *layer_norm_rows(), *instance_norm_rows(), *pool_rows(), *unpool_rows(),
                   *global_pool_rows(),
                   *lrn_rows(), *linear_rows(), *binary_rows(), *shape_rows(), *resize_rows(),
                   *cast_rows(), *random_rows(),
                   *quantize_rows(), *dequantize_rows(), *integer_conv_rows(),
                   *integer_matmul_rows(), *qlinear_matmul_rows(), *qlinear_conv_rows(),
                   *recurrent_rows(), *arg_reduce_rows(), *cumsum_rows()]
ROW_IDS = [r.id for r in ROWS]
assert len(set(ROW_IDS)) == len(ROW_IDS), "row ids must be unique"
# More random combinations for the slow run (`-m slow`).
WIDE_ROWS: list[Row] = random_rows(count=40, seed=7, tag="wide")


# Elementwise ops of one or two inputs without attributes that change their loops: their rows
# compile as one graph (one build instead of one per op, on the suite's time budget).
ELEMENTWISE = {"elu", "selu", "celu", "softplus", "softsign", "mish", "thresholded_relu",
               "abs", "neg", "sign", "reciprocal", "floor", "ceil", "round", "maximum",
               "minimum", "prelu", "logical", "not", "exp", "log", "sqrt", "erf"}


def rows_by_op(rows: Sequence[Row] = ROWS) -> dict[str, list[Row]]:
    """Rows by op, the ELEMENTWISE ops' together under "elementwise"."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        key = "elementwise" if r.op.name in ELEMENTWISE else r.op.name
        groups.setdefault(key, []).append(r)
    return groups


# ---- the checks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_interpreter(row: Row):
    check_interpreter(row)


@pytest.mark.parametrize("bounds_check", [False, True], ids=["", "bounds_checked"])
@pytest.mark.parametrize("op_name", sorted(rows_by_op()))
def test_compiled(op_name: str, bounds_check: bool):
    """Every op's rows compiled (once more with TVM's bounds checks in every kernel, so an
    out-of-bounds access fails here instead of corrupting a user's memory)."""
    check_compiled(op_name, rows_by_op()[op_name], bounds_check)


@pytest.mark.slow
@pytest.mark.parametrize("row", WIDE_ROWS, ids=[r.id for r in WIDE_ROWS])
def test_interpreter_wide(row: Row):
    check_interpreter(row)


@pytest.mark.slow
@pytest.mark.parametrize("bounds_check", [False, True], ids=["", "bounds_checked"])
@pytest.mark.parametrize("op_name", sorted(rows_by_op(WIDE_ROWS)))
def test_compiled_wide(op_name: str, bounds_check: bool):
    check_compiled(op_name, rows_by_op(WIDE_ROWS)[op_name], bounds_check)


def check_interpreter(row: Row) -> None:
    """float32 interpreter (and float64 where flagged) vs the reference."""
    g = row.graph()
    go.verify(g)
    feeds = input_feeds(row.id, row.inputs)
    found = go.interpret(g, feeds)[f"{row.id}.out"]
    assert_close(found, row.expected(), rtol=FP32_RTOL, what=f"{row.id} float32")
    if row.f64:
        found64 = go.interpret(g, feeds, dtype=np.float64)[f"{row.id}.out"]
        assert_close(found64, row.expected(np.float64), rtol=FP64_RTOL, what=f"{row.id} float64")


def compiles(graph: Graph) -> bool:
    try:
        go.compile(graph, "cpu")
    except go.LoweringError:
        return False
    return True


def check_compiled(op_name: str, rows: Sequence[Row], bounds_check: bool = False) -> None:
    """The rows of one op (or group) compiled as one multi-output graph; every row's output is
    checked."""
    g = Graph(f"rows_{op_name}")
    g.set_outputs([r.add_to(g) for r in rows])
    feeds = {k: v for r in rows for k, v in input_feeds(r.id, r.inputs).items()}
    try:
        model = go.compile(g, "cpu", bounds_check=bounds_check)
    except go.LoweringError as e:   # name the rows: compile them one by one
        alone = [r.id for r in rows if not compiles(r.graph())]
        pytest.fail(f"{e}\nrows that fail to compile on their own: {alone}")
    found = model.run(feeds)
    failures = []
    for r in rows:
        got, expected = found[f"{r.id}.out"], r.expected()
        if r.compiled_steps:
            steps = np.abs(got.astype(np.int64) - expected.astype(np.int64)).max(initial=0)
            if got.dtype != expected.dtype or steps > r.compiled_steps:
                failures.append(f"{r.id}: {got.dtype} differs from {expected.dtype} by {steps}")
            continue
        try:
            assert_close(got, expected, rtol=FP32_RTOL, what=r.id)
        except AssertionError as e:
            failures.append(str(e).splitlines()[0])
    assert not failures, f"{len(failures)} of {len(rows)} rows differ:\n" + "\n".join(failures)


def test_sign_of_nan_is_nan():
    """As in numpy and ORT (TVM's own sign gives 0)."""
    x = np.array([np.nan, -2, 0, 3, -np.inf], np.float32)
    with dsl.Builder("sign") as b:
        graph = b.output(dsl.sign(b.input("x", x.shape)))
    expected = np.array([np.nan, -1, 0, 1, -1], np.float32)
    np.testing.assert_array_equal(go.interpret(graph, {"x": x})["output"], expected)
    np.testing.assert_array_equal(go.compile(graph).run({"x": x})["output"], expected)


def test_not_of_a_comparison_with_nan_is_true():
    """not(NaN > 0) is True, as in numpy and ORT: TVM's simplifier rewrites not(a > b) as
    a <= b, which is False for NaN."""
    x = np.array([np.nan, -1, 0, 2], np.float32)
    graph = Graph("not_nan")
    value = graph.add_input("x", TensorType(x.shape, "float32"))
    zero = graph.add_constant("zero", np.float32(0))
    above = graph.add_node(ops.Compare("greater"), [value, zero]).output
    negated = graph.add_node(ops.Not(), [above]).output
    graph.set_outputs([graph.add_node(ops.Cast("float32"), [negated]).output])
    (name,) = graph.output_names
    expected = np.array([1, 1, 1, 0], np.float32)
    np.testing.assert_array_equal(go.interpret(graph, {"x": x})[name], expected)
    np.testing.assert_array_equal(go.compile(graph).run({"x": x})[name], expected)


def test_division_by_a_constant_zero_gives_infinities_and_nan():
    """x / 0 is +-inf, and 0 / 0 NaN, as in numpy, ORT and torch (an unbiased variance of one
    value): TVM folds a scalar constant divisor into the kernel and refused a zero there. An
    integer division by a constant zero (undefined in ONNX) is refused, naming the node."""
    x = np.array([np.nan, -2, 0, 3, -np.inf, np.inf, -0.0], np.float32)
    graph = Graph("by_zero")
    value = graph.add_input("x", TensorType(x.shape, "float32"))
    outputs = [graph.add_node(ops.Div(), [value, graph.add_constant(f"zero{i}", zero)],
                              name=f"div{i}").output
               for i, zero in enumerate([np.float32(0), np.float32(-0.0)])]
    graph.set_outputs(outputs)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = [x / np.float32(0), x / np.float32(-0.0)]
    for found in (go.interpret(graph, {"x": x}), go.compile(graph).run({"x": x})):
        for name, want in zip(graph.output_names, expected):
            np.testing.assert_array_equal(found[name], want)
    ints = Graph("int_by_zero")
    value = ints.add_input("x", TensorType((3,), "int32"))
    ints.set_outputs([ints.add_node(ops.Div(), [value, ints.add_constant("zero", np.int32(0))],
                                    name="int_div").output])
    with pytest.raises(go.GraphoptError, match="int_div.*integer division by a constant zero"):
        go.compile(ints)
