"""The ONNX conversion table: ONNX op type -> a small function from a `NodeContext` to the
graphopt Value(s) of the node's outputs. Forms we cannot express raise `UnsupportedForm` with
the reason (collected into one UnsupportedOpError by the importer)."""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from .. import ops
from ..errors import ModelFormatError
from ..ir import DTYPES
from ..ops.resize import COORDINATE_MODES
from ..ops.shape import PAD_MODES
from .onnx_context import NodeContext, UnsupportedForm, as_float32, onnx_dtype

TABLE: dict[str, Callable[[NodeContext], object]] = {}

# Inputs that graphopt needs as constants (they become attributes); a model that computes them
# at run time is unsupported, a conformance case that feeds them is loaded with them bound.
ATTRIBUTE_INPUTS = {"Clip": (1, 2), "Dropout": (1, 2), "Expand": (1,), "Pad": (1, 2, 3),
                    "ReduceMax": (1,), "ReduceMean": (1,), "ReduceSum": (1,), "Reshape": (1,),
                    "ReduceMin": (1,), "ReduceProd": (1,), "ReduceL1": (1,), "ReduceL2": (1,),
                    "ReduceSumSquare": (1,), "ReduceLogSumExp": (1,), "MaxUnpool": (2,),
                    "Resize": (1, 2, 3), "Slice": (1, 2, 3, 4), "Split": (1,), "Squeeze": (1,),
                    "Tile": (1,), "Unsqueeze": (1,), "LSTM": (4,), "GRU": (4,),
                    "CumSum": (1,), "Loop": (0, 1), "SplitToSequence": (1,)}


def converts(*op_types: str):
    def register(fn):
        for op_type in op_types:
            TABLE[op_type] = fn
        return fn
    return register


# ---- spatial ops (2-D, and 1-D by lifting to 2-D with a unit height) -----------------------------
class Spatial:
    """A node's NCHW input, lifted from NCL to NC1L when the op is 1-D."""

    def __init__(self, ctx: NodeContext):
        x = ctx.type(0)
        if x.ndim not in (3, 4):
            raise UnsupportedForm(f"{x.ndim - 2}-D input {x} (1-D and 2-D are supported)"
                                  if x.ndim > 4 else f"input {x} of rank {x.ndim}")
        self.ctx, self.lifted = ctx, x.ndim == 3
        self.x = ctx.input_as(0, (*x.shape[:2], 1, x.shape[2])) if self.lifted else ctx.input(0)
        self.sizes = x.shape[2:]

    def ints(self, name: str, default: int, lifted: int = 1) -> tuple[int, ...]:
        """A per-spatial-axis attribute; `lifted` is its value on the added unit axis."""
        values = self.ctx.ints(name, [default] * len(self.sizes))
        if len(values) != len(self.sizes):
            raise ModelFormatError(f"attribute {name}={list(values)} has {len(values)} values, "
                                   f"expected {len(self.sizes)}", node=self.ctx.name,
                                   op=self.ctx.op_type)
        return (lifted, *values) if self.lifted else values

    def pads(self, kernel, strides, dilations) -> tuple[int, int, int, int]:
        """Explicit (top, left, bottom, right) padding from `pads` or `auto_pad`."""
        ctx, rank = self.ctx, len(self.sizes)
        auto = ctx.attr("auto_pad", "NOTSET")
        if auto in ("NOTSET", ""):
            pads = ctx.ints("pads", [0] * 2 * rank)
            if len(pads) != 2 * rank:
                raise ModelFormatError(f"pads={list(pads)} has {len(pads)} values, expected "
                                       f"{2 * rank}", node=ctx.name, op=ctx.op_type)
            begins, ends = pads[:rank], pads[rank:]
        elif auto == "VALID":
            begins = ends = (0,) * rank
        elif auto in ("SAME_UPPER", "SAME_LOWER"):
            spatial = list(zip(self.sizes, kernel[-rank:], strides[-rank:], dilations[-rank:]))
            totals = [max(0, (math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n)
                      for n, k, s, d in spatial]
            begins = tuple(t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in totals)
            ends = tuple(t - b for t, b in zip(totals, begins))
        else:
            raise ModelFormatError(f"unknown auto_pad '{auto}'", node=ctx.name, op=ctx.op_type)
        if self.lifted:
            return (0, begins[0], 0, ends[0])
        return (begins[0], begins[1], ends[0], ends[1])

    def finish(self, op: ops.Op, inputs, output: int = 0) -> object:
        """`op` on `inputs` computing the node's output number `output`."""
        if not self.lifted:
            return self.ctx.emit(op, inputs, output=output)
        y = self.ctx.emit(op, inputs, final=False)
        n, c, _, length = y.shape
        return self.ctx.emit(ops.Reshape((n, c, length)), [y], output=output)


def weight_2d(ctx: NodeContext, spatial: Spatial, index: int = 1):
    w = ctx.type(index)
    if w.ndim != len(spatial.sizes) + 2:
        raise ModelFormatError(f"weight {w} has rank {w.ndim}, expected {len(spatial.sizes) + 2} "
                               f"for input {ctx.type(0)}", node=ctx.name, op=ctx.op_type)
    if spatial.lifted:
        return ctx.input_as(index, (*w.shape[:2], 1, w.shape[2])), (1, w.shape[2])
    return ctx.input(index), w.shape[2:]


def optional_bias(ctx: NodeContext) -> list:
    return [ctx.input(2)] if ctx.has(2) else []


def conv_geometry(ctx: NodeContext, weight: int = 1):
    """(Spatial input, weight Value, Conv2d) of a Conv-like node whose weight is input `weight`."""
    s = Spatial(ctx)
    w, kernel = weight_2d(ctx, s, weight)
    strides, dilations = s.ints("strides", 1), s.ints("dilations", 1)
    op = ops.Conv2d(strides, s.pads(kernel, strides, dilations), dilations, ctx.attr("group", 1))
    return s, w, op


@converts("Conv")
def conv(ctx):
    s, w, op = conv_geometry(ctx)
    return s.finish(op, [s.x, w, *optional_bias(ctx)])


@converts("ConvTranspose")
def conv_transpose(ctx):
    s = Spatial(ctx)
    w, kernel = weight_2d(ctx, s)
    strides, dilations = s.ints("strides", 1), s.ints("dilations", 1)
    output_padding = list(s.ints("output_padding", 0, lifted=0))
    auto = ctx.attr("auto_pad", "NOTSET")
    sizes = (1, *s.sizes) if s.lifted else s.sizes
    full = [st * (n - 1) + op + (k - 1) * d + 1
            for n, k, st, d, op in zip(sizes, kernel, strides, dilations, output_padding)]
    if "output_shape" in ctx.attrs or auto in ("SAME_UPPER", "SAME_LOWER"):
        if "output_shape" in ctx.attrs:
            wanted = list(ctx.ints("output_shape", ()))[-len(s.sizes):]
            wanted = [1, *wanted] if s.lifted else wanted
        else:
            wanted = [n * st for n, st in zip(sizes, strides)]
        totals = [f - o for f, o in zip(full, wanted)]
        for i, t in enumerate(totals):
            if t < 0:   # the output is larger than the full result: extend it at the end
                output_padding[i] -= t
                totals[i] = 0
        begins = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in totals]
        pads = (begins[0], begins[1], totals[0] - begins[0], totals[1] - begins[1])
    else:
        pads = s.pads(kernel, strides, dilations)
    op = ops.ConvTranspose2d(strides, pads, tuple(output_padding), dilations, ctx.attr("group", 1))
    return s.finish(op, [s.x, w, *optional_bias(ctx)])


@converts("MaxPool", "AveragePool")
def pool(ctx):
    """MaxPool's optional Indices output is a max_pool2d_indices node beside the values'
    max_pool2d (flat indices into the whole input; a 1-D input's equal its lifted form's)."""
    storage_order = ctx.attr("storage_order", 0)
    if storage_order not in (0, 1):
        raise ModelFormatError("storage_order must be 0 or 1", node=ctx.name, op=ctx.op_type)
    if ctx.type(0).ndim > 4:
        return pool_nd(ctx)
    s = Spatial(ctx)
    kernel = s.ints("kernel_shape", 0)
    strides, dilations = s.ints("strides", 1), s.ints("dilations", 1)
    args = (kernel, strides, s.pads(kernel, strides, dilations), dilations,
            bool(ctx.attr("ceil_mode", 0)))
    if ctx.op_type == "AveragePool":
        return s.finish(ops.AvgPool2d(*args, bool(ctx.attr("count_include_pad", 0))), [s.x])
    outputs = list(ctx.node.output) + [""]
    if not outputs[1]:
        return s.finish(ops.MaxPool2d(*args), [s.x])
    indices = ops.MaxPool2dIndices(*args, storage_order=storage_order)
    model = ctx.importer.model.graph
    if not s.lifted and outputs[0] not in {o.name for o in model.output} and not any(
            outputs[0] in n.input for n in model.node):
        # Values nobody reads (as graphopt exports an indices node alone): the indices node
        # takes the ONNX node's name.
        return [None, ctx.graph.add_node(indices, [s.x], name=ctx.importer.node_name(ctx),
                                         output_names=[outputs[1]]).output]
    return [s.finish(ops.MaxPool2d(*args), [s.x]), s.finish(indices, [s.x], output=1)]


UNIT_WINDOW = (1, 1, 1, 0, 0)   # kernel, stride, dilation, pad begin, pad end of a unit axis


def pool_nd(ctx):
    """A pool over three or more spatial axes with a window on the last two or on one of them,
    run in 2-D: leading axes of a unit window (size 1, stride 1, no padding) join the channels,
    and a later run of them becomes one axis (torch exports LocalResponseNorm as a 3-D average
    pool over the channels alone)."""
    x = ctx.type(0)
    rank = x.ndim - 2
    kernel = ctx.ints("kernel_shape", ())
    strides, dilations = ctx.ints("strides", [1] * rank), ctx.ints("dilations", [1] * rank)
    pads = ctx.ints("pads", [0] * 2 * rank)
    auto = ctx.attr("auto_pad", "NOTSET")
    if auto not in ("NOTSET", "", "VALID"):
        raise UnsupportedForm(f"auto_pad {auto} on a {rank}-D input")
    if any(len(a) != rank for a in (kernel, strides, dilations)) or len(pads) != 2 * rank:
        raise ModelFormatError(f"kernel_shape, strides, dilations and pads must have {rank}, "
                               f"{rank}, {rank} and {2 * rank} values for input {x}",
                               node=ctx.name, op=ctx.op_type)
    if auto == "VALID":
        pads = (0,) * 2 * rank
    if len([o for o in ctx.node.output if o]) > 1:
        raise UnsupportedForm(f"the Indices output of a {rank}-D pool")
    windows = list(zip(kernel, strides, dilations, pads[:rank], pads[rank:]))
    lead = next((i for i, w in enumerate(windows) if w != UNIT_WINDOW), rank)
    runs: list[list[int]] = []      # the later axes, a run of unit windows as one
    for axis in range(lead, rank):
        unit = windows[axis] == UNIT_WINDOW
        if unit and runs and windows[runs[-1][0]] == UNIT_WINDOW:
            runs[-1].append(axis)
        else:
            runs.append([axis])
    if len(runs) > 2:
        raise UnsupportedForm(f"a {rank}-D window {list(kernel)} (supported: a window on the "
                              "last two axes or on one axis, and 1 on the others)")
    runs = [[]] * (2 - len(runs)) + runs         # missing axes: size 1, a unit window
    sizes = [math.prod(x.shape[2 + a] for a in run) for run in runs]
    two_d = [windows[run[0]] if len(run) == 1 else UNIT_WINDOW for run in runs]
    (kh, sh, dh, th, bh), (kw, sw, dw, tw, bw) = two_d
    args = ((kh, kw), (sh, sw), (th, tw, bh, bw), (dh, dw), bool(ctx.attr("ceil_mode", 0)))
    op = ops.AvgPool2d(*args, bool(ctx.attr("count_include_pad", 0))) \
        if ctx.op_type == "AveragePool" else ops.MaxPool2d(*args)
    channels = x.shape[1] * math.prod(x.shape[2:2 + lead])
    pooled = ctx.emit(op, [ctx.input_as(0, (x.shape[0], channels, *sizes))], final=False)
    out = list(x.shape[2:])
    for i, run in enumerate(runs):
        if len(run) == 1:
            out[run[0]] = pooled.shape[2 + i]
    return ctx.emit(ops.Reshape((*x.shape[:2], *out)), [pooled])


@converts("MaxUnpool")
def max_unpool(ctx):
    """Values scattered to their flat indices; the output size from the pooling geometry or
    from the output_shape input (a constant)."""
    x = ctx.type(0)
    if x.ndim != 4:
        raise UnsupportedForm(f"input {x} (only NCHW is supported)")
    if ctx.type(1).dtype != "int64" or ctx.type(1).shape != x.shape:
        raise ModelFormatError(f"expected int64 indices of X's shape {list(x.shape)}, found "
                               f"{ctx.type(1)}", node=ctx.name, op=ctx.op_type)
    s = Spatial(ctx)
    kernel = s.ints("kernel_shape", 0)
    strides = s.ints("strides", 1)
    pads = ctx.ints("pads", [0] * 4)
    if len(pads) != 4:
        raise ModelFormatError(f"pads={list(pads)} has {len(pads)} values, expected 4",
                               node=ctx.name, op=ctx.op_type)
    size = None
    if ctx.has(2):
        shape = ctx.static_ints(2, "output_shape")
        if len(shape) != 4 or list(shape[:2]) != list(x.shape[:2]):
            raise ModelFormatError(f"output_shape {shape} must be [N, C, H, W] with X's N and "
                                   f"C ({list(x.shape[:2])})", node=ctx.name, op=ctx.op_type)
        size = tuple(shape[2:])
    op = ops.MaxUnpool2d(kernel, strides, (pads[0], pads[1], pads[2], pads[3]), size)
    if op.indices_from_pool(ctx.input(1), (*x.shape[:2], *op.out_hw(*x.shape[2:]))):
        op = dataclasses.replace(op, window_indices=True)
    return ctx.emit(op, [ctx.input(0), ctx.input(1)])


@converts("GlobalAveragePool", "GlobalMaxPool")
def global_pool(ctx):
    if ctx.type(0).ndim != 4:
        raise UnsupportedForm(f"input {ctx.type(0)} (only NCHW is supported)")
    op = ops.GlobalAvgPool2d() if ctx.op_type == "GlobalAveragePool" else ops.GlobalMaxPool2d()
    return ctx.emit(op, [ctx.input(0)])


REDUCE = {"ReduceMean": ops.ReduceMean, "ReduceSum": ops.ReduceSum, "ReduceMax": ops.ReduceMax,
          "ReduceMin": ops.ReduceMin, "ReduceProd": ops.ReduceProd, "ReduceL1": ops.ReduceL1,
          "ReduceL2": ops.ReduceL2, "ReduceSumSquare": ops.ReduceSumSquare,
          "ReduceLogSumExp": ops.ReduceLogSumExp}


@converts(*REDUCE)
def reduce(ctx):
    """A reduction over the given axes (all when none are given, unless noop_with_empty_axes).
    A mean or max over H and W of NCHW (torch's `x.mean((2, 3))`) is a global pool."""
    x = ctx.type(0)
    axes = ctx.static_ints(1, "axes") if ctx.has(1) else ctx.attr("axes")
    keepdims = bool(ctx.attr("keepdims", 1))
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            return ctx.emit(ops.Identity(), [ctx.input(0)])
        axes = None
    if ctx.op_type in ("ReduceMean", "ReduceL2", "ReduceLogSumExp") and not x.is_float:
        raise UnsupportedForm(f"input {x} (floating-point inputs are supported)")
    if x.dtype == "bool" and ctx.op_type not in ("ReduceMax", "ReduceMin"):
        raise UnsupportedForm(f"bool input {x}")
    empty = [a for a in (range(x.ndim) if axes is None else axes)
             if -x.ndim <= a < x.ndim and x.shape[a] == 0]
    if empty and ctx.op_type in ("ReduceMax", "ReduceMin"):
        raise UnsupportedForm(f"reducing the empty axes {empty} of {x}")
    spatial = x.ndim == 4 and axes is not None and all(-4 <= a < 4 for a in axes) and \
        sorted(a % 4 for a in axes) == [2, 3]
    if spatial and ctx.op_type in ("ReduceMean", "ReduceMax"):
        op = ops.GlobalAvgPool2d() if ctx.op_type == "ReduceMean" else ops.GlobalMaxPool2d()
        if keepdims:
            return ctx.emit(op, [ctx.input(0)])
        pooled = ctx.emit(op, [ctx.input(0)], final=False)
        return ctx.emit(ops.Reshape(x.shape[:2]), [pooled])
    return ctx.emit(REDUCE[ctx.op_type](None if axes is None else tuple(axes), keepdims),
                    [ctx.input(0)])


@converts("CumSum")
def cumsum(ctx):
    axis = ctx.static_ints(1, "axis")
    if len(axis) != 1:
        raise ModelFormatError(f"axis (input 1) must hold one integer, found {axis}",
                               node=ctx.name, op=ctx.op_type)
    return ctx.emit(ops.CumSum(axis[0], bool(ctx.attr("exclusive", 0)),
                               bool(ctx.attr("reverse", 0))), [ctx.input(0)])


@converts("LRN")
def lrn(ctx):
    if ctx.type(0).ndim != 4:
        raise UnsupportedForm(f"input {ctx.type(0)} (only NCHW is supported)")
    op = ops.Lrn(int(ctx.attr("size")), float(ctx.attr("alpha", 1e-4)),
                 float(ctx.attr("beta", 0.75)), float(ctx.attr("bias", 1.0)))
    return ctx.emit(op, [ctx.input(0)])


@converts("InstanceNormalization")
def instance_norm(ctx):
    if ctx.type(0).ndim < 3:
        raise UnsupportedForm(f"input {ctx.type(0)} (expected [N, C, spatial...])")
    return ctx.emit(ops.InstanceNorm(float(ctx.attr("epsilon", 1e-5))),
                    [ctx.input(0), ctx.input(1), ctx.input(2)])


@converts("LayerNormalization")
def layer_norm(ctx):
    """layer_norm; the optional Mean and InvStdDev outputs (in float32, or float64 for float64
    inputs, as stash_type 1 asks) from their own reduce_mean, sqrt and div."""
    x = ctx.type(0)
    if ctx.attr("stash_type", 1) != 1:
        raise UnsupportedForm(f"stash_type {ctx.attr('stash_type')} (statistics in float32)")
    op = ops.LayerNorm(int(ctx.attr("axis", -1)), float(ctx.attr("epsilon", 1e-5)))
    y = ctx.emit(op, [ctx.input(0), ctx.input(1), *optional_bias(ctx)])
    outputs = list(ctx.node.output) + ["", ""]
    if not (outputs[1] or outputs[2]):
        return y
    dtype = "float64" if x.dtype == "float64" else "float32"
    wide = ctx.input(0) if x.dtype == dtype else ctx.emit(ops.Cast(dtype), [ctx.input(0)],
                                                            final=False)
    axes = op.normalized(x)
    mean = ctx.emit(ops.ReduceMean(axes), [wide], final=bool(outputs[1]), output=1)
    centred = ctx.emit(ops.Sub(), [wide, mean], final=False)
    variance = ctx.emit(ops.ReduceMean(axes), [ctx.emit(ops.Mul(), [centred, centred],
                                                        final=False)], final=False)
    epsilon = ctx.constant(f"{ctx.name}.epsilon", np.array(op.epsilon, dtype))
    std = ctx.emit(ops.Sqrt(), [ctx.emit(ops.Add(), [variance, epsilon], final=False)],
                   final=False)
    one = ctx.constant(f"{ctx.name}.one", np.array(1, dtype))
    inverse = ctx.emit(ops.Div(), [one, std], final=bool(outputs[2]), output=2)
    return [y, mean, inverse]


@converts("BatchNormalization")
def batch_norm(ctx):
    if ctx.attr("training_mode", 0):
        raise UnsupportedForm("training_mode=1")
    ctx.single_output("running mean/var (training outputs)")
    return ctx.emit(ops.BatchNorm(float(ctx.attr("epsilon", 1e-5))),
                    [ctx.input(i) for i in range(5)])


# ---- dense -----------------------------------------------------------------------------------
@converts("Gemm")
def gemm(ctx):
    """alpha * A' @ B' + beta * C. The common exporter form (constant B, 1-D bias, no scaling)
    becomes `linear`; everything else is composed from transpose/matmul/mul/add."""
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    trans_a, trans_b = ctx.attr("transA", 0), ctx.attr("transB", 0)
    b = ctx.type(1)
    n = b.shape[0] if trans_b else b.shape[1]
    plain_bias = not ctx.has(2) or (beta == 1.0 and ctx.type(2).shape == (n,))
    if not trans_a and alpha == 1.0 and ctx.is_static(1) and plain_bias:
        if trans_b:
            weight = ctx.input(1)
        else:
            weight = ctx.constant(ctx.node.input[1], ctx.static(1, "B").T)
        return ctx.emit(ops.Linear(), [ctx.input(0), weight, *optional_bias(ctx)])
    a = ctx.input(0)
    if trans_a:
        a = ctx.emit(ops.Transpose((1, 0)), [a], final=False)
    if trans_b and ctx.is_static(1):
        bv = ctx.constant(ctx.node.input[1], ctx.static(1, "B").T)
    else:
        bv = ctx.emit(ops.Transpose((1, 0)), [ctx.input(1)], final=False) if trans_b \
            else ctx.input(1)
    scaled, biased = alpha != 1.0, ctx.has(2) and beta != 0.0
    y = ctx.emit(ops.Matmul(), [a, bv], final=not (scaled or biased))
    if scaled:
        y = ctx.emit(ops.Mul(), [y, ctx.constant(f"{ctx.name}.alpha",
                                                np.array(alpha, y.dtype))], final=not biased)
    if biased:
        c = ctx.input(2)
        if beta != 1.0:
            c = ctx.constant(f"{ctx.name}.beta_c", ctx.static(2, "C") * np.array(beta, c.dtype)) \
                if ctx.is_static(2) else ctx.emit(
                    ops.Mul(), [c, ctx.constant(f"{ctx.name}.beta", np.array(beta, c.dtype))],
                    final=False)
        y = ctx.emit(ops.Add(), [y, c])
    return y


@converts("MatMul")
def matmul(ctx):
    return ctx.emit(ops.Matmul(), [ctx.input(0), ctx.input(1)])


# ---- elementwise ------------------------------------------------------------------------------
BINARY = {"Add": ops.Add, "Sub": ops.Sub, "Mul": ops.Mul, "Div": ops.Div}
UNARY = {"Identity": ops.Identity, "Relu": ops.Relu, "Sigmoid": ops.Sigmoid, "Tanh": ops.Tanh,
         "HardSwish": ops.HardSwish, "Exp": ops.Exp, "Log": ops.Log, "Sqrt": ops.Sqrt,
         "Erf": ops.Erf, "Abs": ops.Abs, "Neg": ops.Neg, "Reciprocal": ops.Reciprocal,
         "Softplus": ops.Softplus, "Softsign": ops.Softsign, "Mish": ops.Mish,
         "Sign": ops.Sign, "Floor": ops.Floor, "Ceil": ops.Ceil, "Round": ops.Round,
         "Not": ops.Not}
# Activations whose float attributes are the op's fields, under the same names and with the
# same defaults as ONNX's
WITH_ATTRIBUTES = {"Elu": ops.Elu, "Selu": ops.Selu, "Celu": ops.Celu,
                   "ThresholdedRelu": ops.ThresholdedRelu, "HardSigmoid": ops.HardSigmoid,
                   "LeakyRelu": ops.LeakyRelu}


@converts(*BINARY)
def binary(ctx):
    return ctx.emit(BINARY[ctx.op_type](), [ctx.input(0), ctx.input(1)])


# ONNX ops of one or more inputs (with broadcasting), imported as a chain of a binary op
VARIADIC = {"Sum": ops.Add, "Max": ops.Maximum, "Min": ops.Minimum}


@converts(*VARIADIC)
def variadic(ctx):
    """Sum, Max or Min of one or more tensors as a chain of add, maximum or minimum."""
    count = len(ctx.node.input)
    if count == 1:
        return ctx.emit(ops.Identity(), [ctx.input(0)])
    result = ctx.input(0)
    for i in range(1, count):
        result = ctx.emit(VARIADIC[ctx.op_type](), [result, ctx.input(i)],
                          final=i == count - 1)
    return result


@converts(*UNARY)
def unary(ctx):
    return ctx.emit(UNARY[ctx.op_type](), [ctx.input(0)])


@converts(*WITH_ATTRIBUTES)
def with_attributes(ctx):
    op = WITH_ATTRIBUTES[ctx.op_type]
    return ctx.emit(op(**{f.name: float(ctx.attr(f.name, f.default))
                          for f in dataclasses.fields(op)}), [ctx.input(0)])


@converts("DepthToSpace", "SpaceToDepth")
def depth_to_space(ctx):
    """Channels to blocks of pixels (DepthToSpace: PixelShuffle) or back (SpaceToDepth:
    PixelUnshuffle), the channels in DCR or CRD order, as the reshape, transpose, reshape that
    ONNX defines them by."""
    x = ctx.type(0)
    if len(x.shape) != 4:
        raise UnsupportedForm(f"{len(x.shape)}-D input (4-D NCHW is supported)")
    n, c, h, w = x.shape
    b, mode = int(ctx.attr("blocksize", 0)), ctx.attr("mode", "DCR")
    to_space = ctx.op_type == "DepthToSpace"
    divides = c % (b * b) == 0 if to_space else h % b == 0 and w % b == 0
    if b < 1 or not divides or mode not in ("DCR", "CRD"):
        raise ModelFormatError(f"expected a blocksize whose square divides C (DepthToSpace) or "
                               f"that divides H and W (SpaceToDepth), and mode DCR or CRD, "
                               f"found {b} and {mode!r} for {x}", node=ctx.name, op=ctx.op_type)
    if to_space:
        split, perm = ((n, b, b, c // (b * b), h, w), (0, 3, 4, 1, 5, 2)) if mode == "DCR" \
            else ((n, c // (b * b), b, b, h, w), (0, 1, 4, 2, 5, 3))
        out = (n, c // (b * b), h * b, w * b)
    else:
        split = (n, c, h // b, b, w // b, b)
        perm = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)
        out = (n, c * b * b, h // b, w // b)
    y = ctx.emit(ops.Reshape(split), [ctx.input(0)], final=False)
    y = ctx.emit(ops.Transpose(perm), [y], final=False)
    return ctx.emit(ops.Reshape(out), [y])


@converts("Cast")
def cast(ctx):
    dtype = onnx_dtype(ctx.attr("to", 0))
    if dtype not in DTYPES or ctx.type(0).dtype not in DTYPES:
        raise UnsupportedForm(f"dtype {dtype if dtype not in DTYPES else ctx.type(0).dtype}")
    return ctx.emit(ops.Cast(dtype), [ctx.input(0)])


@converts("Gelu")
def gelu(ctx):
    return ctx.emit(ops.Gelu(ctx.attr("approximate", "none")), [ctx.input(0)])


@converts("Swish")
def swish(ctx):
    """x * sigmoid(alpha * x), as its parts (what exporters write before opset 24)."""
    x, alpha = ctx.input(0), float(ctx.attr("alpha", 1.0))
    scaled = x if alpha == 1.0 else ctx.emit(
        ops.Mul(), [x, ctx.constant(f"{ctx.name}.alpha", np.array(alpha, x.dtype))], final=False)
    return ctx.emit(ops.Mul(), [x, ctx.emit(ops.Sigmoid(), [scaled], final=False)])


@converts("Pow")
def pow_(ctx):
    """A float base; an exponent of another dtype is cast to the base's (ONNX allows any)."""
    base, exponent = ctx.type(0), ctx.type(1)
    if not base.is_float:
        raise UnsupportedForm(f"{base.dtype} base (floating-point bases are supported)")
    y = ctx.input(1)
    if exponent.dtype != base.dtype:
        y = ctx.constant(f"{ctx.node.input[1]}.{base.dtype}", ctx.static(1, "").astype(
            base.dtype)) if ctx.is_static(1) else ctx.emit(ops.Cast(base.dtype), [y], final=False)
    return ctx.emit(ops.Pow(), [ctx.input(0), y])


COMPARISONS = {onnx_type: relation for relation, (_, _, onnx_type) in ops.binary.RELATIONS.items()}


@converts(*COMPARISONS)
def compare(ctx):
    return ctx.emit(ops.Compare(COMPARISONS[ctx.op_type]), [ctx.input(0), ctx.input(1)])


@converts("Where")
def where(ctx):
    return ctx.emit(ops.Where(), [ctx.input(0), ctx.input(1), ctx.input(2)])


@converts("PRelu")
def prelu(ctx):
    return ctx.emit(ops.PRelu(), [ctx.input(0), ctx.input(1)])


@converts("Softmax", "LogSoftmax")
def softmax(ctx):
    op = ops.Softmax if ctx.op_type == "Softmax" else ops.LogSoftmax
    return ctx.emit(op(int(ctx.attr("axis", -1))), [ctx.input(0)])


LOGICAL = {onnx_type: operation for operation, (_, _, onnx_type) in ops.binary.LOGICAL.items()}


@converts(*LOGICAL)
def logical(ctx):
    return ctx.emit(ops.Logical(LOGICAL[ctx.op_type]), [ctx.input(0), ctx.input(1)])


def scalar(ctx: NodeContext, index: int, what: str) -> float:
    data = ctx.static(index, what)
    if data.size != 1:
        raise ModelFormatError(f"{what} must hold one value, found shape {data.shape}",
                               node=ctx.name, op=ctx.op_type)
    value = data.reshape(-1)[0]
    return as_float32(value) if data.dtype.kind == "f" else float(value)


@converts("Clip")
def clip(ctx):
    low = scalar(ctx, 1, "min") if ctx.has(1) else None
    high = scalar(ctx, 2, "max") if ctx.has(2) else None
    if low is not None and high is not None and low > high:
        low = high    # ONNX: every value becomes max
    return ctx.emit(ops.Clip(low, high), [ctx.input(0)])


@converts("Dropout")
def dropout(ctx):
    ctx.single_output("mask")
    if ctx.has(2) and bool(ctx.static(2, "training_mode").reshape(-1)[0]):
        raise UnsupportedForm("training_mode=true")
    ratio = scalar(ctx, 1, "ratio") if ctx.has(1) else 0.5
    return ctx.emit(ops.Dropout(ratio), [ctx.input(0)])


# ---- shape -------------------------------------------------------------------------------------
@converts("Concat")
def concat(ctx):
    return ctx.emit(ops.Concat(int(ctx.attr("axis"))),
                    [ctx.input(i) for i in range(len(ctx.node.input))])


@converts("Flatten")
def flatten(ctx):
    return ctx.emit(ops.Flatten(int(ctx.attr("axis", 1))), [ctx.input(0)])


@converts("Reshape")
def reshape(ctx):
    x = ctx.type(0)
    target = ctx.static_ints(1, "shape")
    if not ctx.attr("allowzero", 0):   # 0 copies the input's dimension
        for i, d in enumerate(target):
            if d == 0:
                if i >= x.ndim:
                    raise ModelFormatError(f"shape {target} copies dimension {i} of {x}, which "
                                           f"has rank {x.ndim}", node=ctx.name, op="Reshape")
                target[i] = x.shape[i]
    return ctx.emit(ops.Reshape(tuple(target)), [ctx.input(0)])


@converts("Transpose")
def transpose(ctx):
    rank = ctx.type(0).ndim
    return ctx.emit(ops.Transpose(ctx.ints("perm", range(rank - 1, -1, -1))), [ctx.input(0)])


@converts("Unsqueeze", "Squeeze")
def squeeze(ctx):
    """Adding or removing unit dimensions is a reshape to the static result shape."""
    shape = list(ctx.type(0).shape)
    axes = ctx.static_ints(1, "axes") if ctx.has(1) else None
    if ctx.op_type == "Unsqueeze":
        rank = len(shape) + len(axes)
        for axis in sorted(a % rank for a in axes):
            shape.insert(axis, 1)
    else:
        drop = {i for i, d in enumerate(shape) if d == 1} if axes is None else \
            {a % len(shape) for a in axes}
        if any(shape[a] != 1 for a in drop):
            raise ModelFormatError(f"cannot squeeze axes {sorted(drop)} of {ctx.type(0)}",
                                   node=ctx.name, op="Squeeze")
        shape = [d for i, d in enumerate(shape) if i not in drop]
    return ctx.emit(ops.Reshape(tuple(shape)), [ctx.input(0)])


@converts("Expand")
def expand(ctx):
    return ctx.emit(ops.Expand(tuple(ctx.static_ints(1, "shape"))), [ctx.input(0)])


@converts("Tile")
def tile(ctx):
    return ctx.emit(ops.Tile(tuple(ctx.static_ints(1, "repeats"))), [ctx.input(0)])


@converts("Slice")
def slice_(ctx):
    starts, ends = ctx.static_ints(1, "starts"), ctx.static_ints(2, "ends")
    axes = ctx.static_ints(3, "axes") if ctx.has(3) else list(range(len(starts)))
    steps = ctx.static_ints(4, "steps") if ctx.has(4) else [1] * len(starts)
    return ctx.emit(ops.Slice(starts, ends, axes, steps), [ctx.input(0)])


@converts("Split")
def split(ctx):
    """One slice per output, of the sizes given, or equal ones (the last smaller when
    num_outputs does not divide the axis)."""
    x = ctx.type(0)
    axis, count = int(ctx.attr("axis", 0)), len(ctx.node.output)
    if not -x.ndim <= axis < x.ndim:
        raise ModelFormatError(f"axis {axis} is out of range for {x}", node=ctx.name,
                               op=ctx.op_type)
    size = x.shape[axis]
    if ctx.has(1):
        sizes = ctx.static_ints(1, "split")
    else:
        part = -(-size // count) if "num_outputs" in ctx.attrs else size // count
        sizes = [min(part, max(size - part * i, 0)) for i in range(count)]
    if len(sizes) != count or sum(sizes) != size or min(sizes) < 0:
        raise ModelFormatError(f"cannot split axis {axis} of {x} into {count} outputs of sizes "
                               f"{sizes}", node=ctx.name, op=ctx.op_type)
    offsets = np.cumsum([0, *sizes]).tolist()
    return [ctx.emit(ops.Slice((offsets[i],), (offsets[i + 1],), (axis,), (1,)),
                     [ctx.input(0)], output=i) if name else None
            for i, name in enumerate(ctx.node.output)]


@converts("Gather")
def gather(ctx):
    return ctx.emit(ops.Gather(int(ctx.attr("axis", 0))), [ctx.input(0), ctx.input(1)])


@converts("Pad")
def pad(ctx):
    mode = ctx.attr("mode", "constant")
    if mode not in PAD_MODES:
        raise UnsupportedForm(f"mode '{mode}'")
    rank = ctx.type(0).ndim
    pads = ctx.static_ints(1, "pads")
    axes = list(range(rank))
    if ctx.has(3):
        axes = [a % rank for a in ctx.static_ints(3, "axes")]
    if len(pads) != 2 * len(axes):
        raise ModelFormatError(f"pads {pads} has {len(pads)} values, expected {2 * len(axes)}",
                               node=ctx.name, op="Pad")
    if min(pads, default=0) < 0:
        raise UnsupportedForm("negative pads (cropping)")
    pairs = [(0, 0)] * rank
    for i, axis in enumerate(axes):
        pairs[axis] = (pads[i], pads[i + len(axes)])
    value = scalar(ctx, 2, "constant_value") if ctx.has(2) else 0.0
    return ctx.emit(ops.Pad(tuple(pairs), value, mode), [ctx.input(0)])


@converts("Resize")
def resize(ctx):
    x = ctx.type(0)
    if x.ndim != 4:
        raise UnsupportedForm(f"input {x} (only NCHW is supported)")
    mode = ctx.attr("mode", "nearest")
    coords = ctx.attr("coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear"):
        raise UnsupportedForm(f"mode '{mode}'")
    if coords not in COORDINATE_MODES:
        raise UnsupportedForm(f"coordinate_transformation_mode '{coords}'")
    axes = [int(a) % 4 for a in ctx.attr("axes", range(4))]
    if ctx.has(3):
        sizes = dict(zip(axes, ctx.static_ints(3, "sizes")))
        policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            scale = pick(sizes[a] / x.shape[a] for a in axes)
            sizes = {a: int(math.floor(scale * x.shape[a] + 0.5)) for a in axes}
        out = [sizes.get(a, x.shape[a]) for a in range(4)]
    elif ctx.has(2):
        scales = dict(zip(axes, (float(v) for v in ctx.static(2, "scales").reshape(-1))))
        if not all(0 < v < math.inf for v in scales.values()):
            raise ModelFormatError(f"scales {list(scales.values())} must be positive and finite",
                                   node=ctx.name, op="Resize")
        out = [int(math.floor(x.shape[a] * scales.get(a, 1.0))) for a in range(4)]
        # ONNX maps coordinates with the given scale (even for align_corners); our op uses the
        # size ratio, so the two must agree.
        for a, scale in scales.items():
            if not math.isclose(out[a] / x.shape[a], scale, rel_tol=1e-6):
                raise UnsupportedForm(f"scale {scale:g} on axis {a} differs from the "
                                      f"output/input size ratio {out[a]}/{x.shape[a]}")
    else:
        raise ModelFormatError("Resize needs scales or sizes", node=ctx.name, op="Resize")
    if out[:2] != list(x.shape[:2]):
        raise UnsupportedForm(f"resizing the batch or channel axis ({list(x.shape)} -> {out})")
    if ctx.attr("antialias", 0) and (out[2] < x.shape[2] or out[3] < x.shape[3]):
        raise UnsupportedForm("antialias when downsampling")
    op = ops.Resize((out[2], out[3]), "nearest" if mode == "nearest" else "bilinear", coords,
                    ctx.attr("nearest_mode", "round_prefer_floor"))
    return ctx.emit(op, [ctx.input(0)])


# ---- quantized ----------------------------------------------------------------------------------
def zero_point(ctx: NodeContext, index: int, dtype: str, like: int | None = None):
    """Zero-point input `index`, or where the node omits it, zeros of `dtype` (a scalar, or
    shaped like input `like`, the scale it goes with)."""
    if ctx.has(index):
        return ctx.input(index)
    shape = ctx.type(like).shape if like is not None else ()
    return ctx.constant(f"{ctx.name}.zero_point{index}", np.zeros(shape, dtype))


def one_value(ctx: NodeContext, index: int, what: str) -> None:
    """Input `index` must hold one value: per-row parameters of a product are not supported."""
    if ctx.has(index) and not ops.quant.per_tensor(ctx.type(index)):
        raise UnsupportedForm(f"{what} of shape {ctx.type(index).shape} (per-tensor is "
                              f"supported)")


def quantized_dtype(dtype: str, what: str) -> str:
    if dtype not in ops.quant.QUANTIZED:
        raise UnsupportedForm(f"{what} dtype {dtype} (int8 and uint8 are supported)")
    return dtype


def linear_quantization(ctx: NodeContext, op_class):
    return op_class(int(ctx.attr("axis", 1)), int(ctx.attr("block_size", 0)))


@converts("QuantizeLinear")
def quantize_linear(ctx):
    x = ctx.type(0)
    if not x.is_float:
        raise UnsupportedForm(f"{x.dtype} input (floating-point inputs are supported)")
    # Runtimes divided float16 inputs in float32 until opset 23 made the division's precision the
    # scale's dtype by default (the `precision` attribute overrides it).
    precision = ctx.attr("precision", 0)
    division = onnx_dtype(precision) if precision else \
        x.dtype if ctx.importer.opset >= 23 else "float32"
    if division != "float32":
        raise UnsupportedForm(f"division in {division} (graphopt divides in float32)")
    declared = ctx.attr("output_dtype", 0)
    dtype = ctx.type(2).dtype if ctx.has(2) else onnx_dtype(declared) if declared else "uint8"
    if declared and onnx_dtype(declared) != dtype:
        raise ModelFormatError(f"output_dtype {onnx_dtype(declared)} differs from the zero "
                               f"point's dtype {dtype}", node=ctx.name, op=ctx.op_type)
    quantized_dtype(dtype, "output")
    return ctx.emit(linear_quantization(ctx, ops.QuantizeLinear),
                    [ctx.input(0), ctx.input(1), zero_point(ctx, 2, dtype, like=1)])


@converts("DequantizeLinear")
def dequantize_linear(ctx):
    x, scale = ctx.type(0), ctx.type(1)
    declared = ctx.attr("output_dtype", 0)
    if declared and onnx_dtype(declared) != scale.dtype:
        raise UnsupportedForm(f"output_dtype {onnx_dtype(declared)} other than the scale's "
                              f"{scale.dtype}")
    if x.dtype != "int32":
        quantized_dtype(x.dtype, "input")
    return ctx.emit(linear_quantization(ctx, ops.DequantizeLinear),
                    [ctx.input(0), ctx.input(1), zero_point(ctx, 2, x.dtype, like=1)])


@converts("ConvInteger")
def conv_integer(ctx):
    s, w, conv = conv_geometry(ctx)
    zero_points = [zero_point(ctx, 2, ctx.type(0).dtype), zero_point(ctx, 3, ctx.type(1).dtype)]
    return s.finish(ops.Conv2dInteger(conv), [s.x, w, *zero_points])


@converts("QLinearConv")
def qlinear_conv(ctx):
    s, w, conv = conv_geometry(ctx, weight=3)
    inputs = [s.x, ctx.input(1), ctx.input(2), w, *(ctx.input(i) for i in range(4, 8))]
    return s.finish(ops.QLinearConv2d(conv, has_bias=ctx.has(8)),
                    inputs + ([ctx.input(8)] if ctx.has(8) else []))


def expect_matrices(ctx: NodeContext, *indices: int) -> None:
    for i in indices:
        if ctx.type(i).ndim < 2:
            raise UnsupportedForm(f"1-D operand {ctx.type(i)} (rank >= 2 is supported)")


@converts("MatMulInteger")
def matmul_integer(ctx):
    expect_matrices(ctx, 0, 1)
    one_value(ctx, 2, "a_zero_point")
    zero_points = [zero_point(ctx, 2, ctx.type(0).dtype), zero_point(ctx, 3, ctx.type(1).dtype)]
    return ctx.emit(ops.MatmulInteger(), [ctx.input(0), ctx.input(1), *zero_points])


@converts("QLinearMatMul")
def qlinear_matmul(ctx):
    expect_matrices(ctx, 0, 3)
    one_value(ctx, 1, "a_scale"), one_value(ctx, 2, "a_zero_point")
    return ctx.emit(ops.QLinearMatmul(), [ctx.input(i) for i in range(8)])


# ---- recurrent -----------------------------------------------------------------------------------
@converts("ArgMax", "ArgMin")
def arg_reduce(ctx):
    op = ops.ArgMax if ctx.op_type == "ArgMax" else ops.ArgMin
    return ctx.emit(op(int(ctx.attr("axis", 0)), bool(ctx.attr("keepdims", 1)),
                       bool(ctx.attr("select_last_index", 0))), [ctx.input(0)])


# ONNX input positions of the optional inputs that graphopt's op takes after X, W, R (in its
# order); sequence_lens (input 4) becomes an attribute.
RECURRENT = {"LSTM": (ops.Lstm, (3, 5, 6, 7)), "GRU": (ops.Gru, (3, 5))}


@converts(*RECURRENT)
def recurrent(ctx):
    """lstm / gru with all their outputs. sequence_lens must be a constant (all lengths equal to
    the sequence's: dropped); a missing B or initial state before a present input is zeros."""
    from ..errors import ShapeError
    from ..ops.recurrent import resolve_activations
    op_class, optional = RECURRENT[ctx.op_type]
    x, r = ctx.type(0), ctx.type(2)
    hidden = ctx.attr("hidden_size")
    if hidden is not None and r.ndim == 3 and hidden != r.shape[2]:
        raise ModelFormatError(f"hidden_size={hidden} but R is {r}", node=ctx.name,
                               op=ctx.op_type)
    names = ctx.attr("activations")
    try:
        activations = resolve_activations(names, ctx.attr("activation_alpha", ()),
                                          ctx.attr("activation_beta", ())) if names else ()
    except ShapeError as e:
        raise UnsupportedForm(f"activations {list(names)}: {e.detail}") from None
    layout = int(ctx.attr("layout", 0))
    steps = x.shape[layout] if x.ndim == 3 else 0
    lens = None
    if ctx.has(4):
        if not ctx.is_static(4):
            raise UnsupportedForm("sequence_lens computed at run time (graphopt needs them "
                                  "constant)")
        lens = tuple(ctx.static_ints(4, "sequence_lens"))
        lens = None if all(n == steps for n in lens) else lens
    extra = {"input_forget": bool(ctx.attr("input_forget", 0))} if ctx.op_type == "LSTM" else \
        {"linear_before_reset": bool(ctx.attr("linear_before_reset", 0))}
    clip = ctx.attr("clip")
    op = op_class(ctx.attr("direction", "forward"), activations,
                  None if clip is None else float(clip), layout, lens, **extra)
    present = [i for i in optional if ctx.has(i)]
    inputs = [ctx.input(0), ctx.input(1), ctx.input(2)]
    if present:
        directions, batch = op.num_directions, x.shape[1 - layout] if x.ndim == 3 else 0
        gates, size = op.gates * r.shape[-1], r.shape[-1]
        state = (directions, batch, size) if layout == 0 else (batch, directions, size)
        zeros = {3: (directions, 2 * gates), 5: state, 6: state, 7: (directions, 3 * size)}
        for i in optional[: optional.index(present[-1]) + 1]:
            inputs.append(ctx.input(i) if ctx.has(i) else ctx.constant(
                f"{ctx.name}.zeros{i}", np.zeros(zeros[i], x.dtype)))
    name = ctx.importer.node_name(ctx)
    outputs = [o if k < len(ctx.node.output) and o else f"{name}/output{k}"
               for k, o in enumerate(list(ctx.node.output) + [""] * 3)][: 1 + op.states]
    return ctx.graph.add_node(op, inputs, name=name, output_names=outputs).outputs
