"""Quantized ops (int8 / uint8 with float scales and integer zero points), with the semantics of
ONNX QuantizeLinear / DequantizeLinear (opset 19+), ConvInteger / MatMulInteger and
QLinearConv / QLinearMatMul; `qlinear_conv2d` also carries a fusable requantize epilogue (a
quantized residual and relu/clip).

Rounding, matched bit for bit with ONNX Runtime's CPU kernels (tests/test_ops.py):

- quantize_linear: x / scale in float32 (float64 for float64 x, as the interpreter's precise mode
  gives), rounded half to even, plus the zero point, saturated to the output's range.
- dequantize_linear: (x - zero_point) in int32, times the scale in float32 (float64 for a float64
  scale), then cast to the scale's dtype.
- conv2d_integer / matmul_integer: sum((x - x_zero_point) * (w - w_zero_point)), exact, int32.
- qlinear_conv2d / qlinear_matmul ("requantize"): the int32 accumulator (plus the int32 bias)
  converted to float32 and multiplied by M = (x_scale * w_scale) / y_scale, computed in float32
  in that order (per output channel), rounded half to even, plus y_zero_point, saturated: ORT's
  QLinearConv / QLinearMatMul (its MlasRequantizeOutput); other orders of the scale product
  differ by one step at some values. A residual adds float32(r - r_zero_point) * (r_scale /
  y_scale) before the rounding, as a float residual add between DequantizeLinear and
  QuantizeLinear would; relu / clip(min, max) then clamp the rounded value to [0, inf) /
  [round(min / y_scale), round(max / y_scale)] (float32, half to even), which is the same as
  clamping the real value before quantizing it. Scales are converted to float32 first (exact for
  float16 and float32 scales), so these integer-in, integer-out ops give the same integers in
  the interpreter's float32 and float64 modes.

TVM lowering computes in integers: conv2d / matmul on the (u)int8 operands with out_dtype
int32, the zero points by the standard decomposition (x padded with its zero point, then
sum(x w) - w_zp sum(x) - x_zp sum(w) + K x_zp w_zp, the terms known at compile time folded
here), then one elementwise requantize kernel. The compiled results are exact, except where LLVM
contracts the residual epilogue's multiply and add into one fused multiply-add (one rounding
instead of two): there a value within an ulp of a rounding boundary may land one step away.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..ir import TensorType
from .activation import Clip, Relu
from .base import (Op, constant_operand, expect, expect_float, expect_rank, flag, integer,
                   register, relax, relax_constant, relax_type)
from .conv import (EXACT_FLOAT_CONV_ALGORITHMS, QUANTIZED_CONV_ALGORITHMS, Conv2d,
                   conv_out_size, expect_nonempty)
from .epilogue import QUANTIZED_EPILOGUE
from .fused import FusedConv2d

QUANTIZED = ("int8", "uint8")


# ---- shape and dtype rules shared by the family --------------------------------------------------
def expect_quantized(t: TensorType, what: str) -> None:
    expect(t.dtype in QUANTIZED, f"expected {what} of dtype int8 or uint8, found {t}")


def per_tensor(t: TensorType) -> bool:
    """A quantization parameter holding one value (a scalar or a 1-element vector)."""
    return t.ndim <= 1 and t.numel == 1


def expect_parameter(t: TensorType, what: str, dtype: str | None = None,
                     channels: int | None = None) -> None:
    """A scale or zero point of `dtype` (None: any float): per tensor, or with `channels`, also
    one value per channel."""
    if dtype is None:
        expect_float(t, what)
    else:
        expect(t.dtype == dtype, f"expected {what} of dtype {dtype}, found {t}")
    forms = "a scalar" + ("" if channels is None else f" or shape ({channels},)")
    expect(per_tensor(t) or (channels is not None and t.shape == (channels,)),
           f"expected {what} as {forms}, found {t}")


def integer_conv_type(conv: Conv2d, x: TensorType, w: TensorType) -> TensorType:
    """The int32 output of `conv` on (u)int8 x [N, C, H, W] and w [O, C / groups, KH, KW]."""
    expect_rank(x, 4, "input x"), expect_rank(w, 4, "weight")
    expect_quantized(x, "input x"), expect_quantized(w, "weight")
    expect_nonempty(x, w)
    n, c, h, width = x.shape
    o, cg, kh, kw = w.shape
    expect(c == cg * conv.groups, f"expected input channels {cg * conv.groups} (weight "
           f"{w.shape} x groups {conv.groups}), found {c} in {x}")
    expect(o % conv.groups == 0, f"expected output channels {o} divisible by groups "
           f"{conv.groups}")
    pt, pl, pb, pr = conv.padding
    oh = conv_out_size(h, kh, conv.stride[0], pt, pb, conv.dilation[0])
    ow = conv_out_size(width, kw, conv.stride[1], pl, pr, conv.dilation[1])
    expect(oh > 0 and ow > 0, f"expected a kernel that fits the padded input, found kernel "
           f"{kh}x{kw} (dilation {conv.dilation}) on {h}x{width} padded by {conv.padding}")
    return TensorType((n, o, oh, ow), "int32")


def integer_matmul_type(a: TensorType, b: TensorType) -> TensorType:
    """The int32 output of a @ b on (u)int8 operands of rank >= 2 (numpy's batch broadcast)."""
    expect_quantized(a, "input a"), expect_quantized(b, "input b")
    expect(a.ndim >= 2 and b.ndim >= 2, f"expected operands of rank >= 2, found {a} and {b}")
    expect(a.shape[-1] == b.shape[-2], f"expected matching inner dimensions, found {a} @ {b}")
    try:
        batch = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    except ValueError:
        expect(False, f"expected broadcastable batch dimensions, found {a} @ {b}")
    return TensorType((*batch, a.shape[-2], b.shape[-1]), "int32")


def conv_attribute(op, integer_kernels: tuple[str, ...] = ()) -> None:
    expect(isinstance(op.conv, Conv2d), f"expected a Conv2d for conv, found {op.conv!r}")
    # The target decisions (Winograd, oneDNN, packed weights) are float kernels, but for
    # `integer_kernels` (x86 dot-product instructions).
    expect(op.conv == op.conv.plain or op.conv.algorithm in integer_kernels,
           f"expected a convolution without target decisions"
           f"{' or computed by ' + ', '.join(integer_kernels) if integer_kernels else ''}, "
           f"found {op.conv}")


# ---- numpy: the arithmetic every kernel here is defined by ---------------------------------------
def saturate(rounded: np.ndarray, zero_point: np.ndarray, dtype: str, low=-np.inf,
             high=np.inf) -> np.ndarray:
    """`rounded` (integral floats) clamped to [low, high], plus the zero point, saturated to
    `dtype`'s range."""
    info = np.iinfo(dtype)
    clamped = np.clip(rounded, low, high) + zero_point.astype(rounded.dtype)
    return np.clip(clamped, info.min, info.max).astype(dtype)


def scale_ratio(numerators, denominator) -> np.ndarray:
    """(a * b) / c in float32, in that order (ORT's output scale)."""
    product = math.prod(np.asarray(s, np.float32) for s in numerators)
    return np.asarray(product / np.asarray(denominator, np.float32), np.float32)


def requantize(acc: np.ndarray, multiplier: np.ndarray, zero_point: np.ndarray, dtype: str,
               bounds: tuple[float, float], residual: np.ndarray | None = None) -> np.ndarray:
    """float32(acc) * multiplier (+ residual), rounded half to even, clamped to `bounds`, plus
    the zero point, saturated. `acc` wraps to int32 like the kernels' accumulators."""
    value = acc.astype(np.int32).astype(np.float32) * multiplier
    if residual is not None:
        value = value + residual
    return saturate(np.rint(value), zero_point, dtype, *bounds)


def activation_bounds(activation, y_scale: np.ndarray) -> tuple[float, float]:
    """The clamp relu / clip apply to a requantized value, in steps of y_scale."""
    if activation is None:
        return -np.inf, np.inf
    if isinstance(activation, Relu):
        return 0.0, np.inf
    scale = np.float32(y_scale.reshape(-1)[0])
    step = lambda bound, default: default if bound is None else float(  # noqa: E731
        np.rint(np.float32(bound) / scale))
    return step(activation.min, -np.inf), step(activation.max, np.inf)


def output_limits(activation, y_scale: np.ndarray, y_zero_point: np.ndarray):
    """(low, high): the integers an activation limits the requantized output to, each None
    where only the dtype's range does (for a Clip on the output, as the ONNX export writes)."""
    dtype = str(y_zero_point.dtype)
    return tuple(None if not np.isfinite(b) else
                 int(saturate(np.float32(b), y_zero_point.reshape(()), dtype))
                 for b in activation_bounds(activation, y_scale))


def exact_float(x: np.ndarray, zero_point: np.ndarray, shape=(-1,)) -> np.ndarray:
    """x - zero_point as float64: exact, and so is every sum of products of such values below
    2**53 (products of two (u)int8 differences are below 2**18), which lets the integer
    accumulation reuse the float kernels' BLAS calls."""
    return x.astype(np.float64) - zero_point.astype(np.float64).reshape(shape)


def integer_conv(conv: Conv2d, x, x_zp, w, w_zp) -> np.ndarray:
    """sum((x - x_zp) * (w - w_zp)) over each window, exact, as int64; padding holds x_zp."""
    acc = conv.reference(exact_float(x, x_zp, ()), exact_float(w, w_zp, (-1, 1, 1, 1)))
    return acc.astype(np.int64)


def integer_matmul(a, a_zp, b, b_zp) -> np.ndarray:
    return np.matmul(exact_float(a, a_zp, ()), exact_float(b, b_zp)).astype(np.int64)


def broadcast_parameter(param: np.ndarray, shape: tuple[int, ...], axis: int | None,
                        block_size: int) -> np.ndarray:
    """A scale or zero point laid out to broadcast against x of `shape`."""
    if axis is None:
        return param.reshape(())
    if block_size:
        repeated = np.repeat(param, block_size, axis=axis)
        return repeated[tuple(slice(0, d) for d in shape)]
    return param.reshape([-1 if a == axis else 1 for a in range(len(shape))])


# ---- TE / Relax: the same arithmetic for the TVM lowering ----------------------------------------
def value_at(param, index):
    """TE: a quantization parameter's value at `index` (a channel, or a full index), or its only
    value when it holds one."""
    if math.prod(int(d) for d in param.shape) == 1:
        return param[(0,) * len(param.shape)]
    return param[index]


def nearbyint(value):
    """TIR: `value` rounded to the nearest integer, ties to even (numpy's rint). TVM 0.27 does
    not mark `tirx.nearbyint` as an op its loop vectorizer may widen lane by lane (`round`,
    `floor` and `exp` are marked), so every vectorized loop computing it was emitted as a
    scalar loop: the int8 convolutions' requantize epilogue, 4 -> 128 ch 1x1 at 112x112, took
    1.33 ms where the float32 conv's takes 0.36. The mark is registered once here."""
    from tvm import ir, tirx
    op = ir.Op.get("tirx.nearbyint")
    if not op.get_attr("TVectorizable"):
        ir.register_op_attr("tirx.nearbyint", "TVectorizable", True)
    return tirx.nearbyint(value)


def te_saturate(rounded, zero_point, dtype: str, low=None, high=None,
                compute: str = "float32"):
    """TE of `saturate` for one element (`rounded` of the float dtype `compute`; bounds None:
    unbounded)."""
    from tvm import tirx
    for bound, beyond in ((low, lambda v, b: v < b), (high, lambda v, b: v > b)):
        if bound is not None:
            rounded = tirx.Select(beyond(rounded, bound), bound, rounded)
    info = np.iinfo(dtype)
    shifted = rounded + zero_point.astype(compute)
    lowest, highest = (tirx.const(float(v), compute) for v in (info.min, info.max))
    clamped = tirx.Select(shifted < lowest, lowest, tirx.Select(shifted > highest, highest,
                                                                shifted))
    return clamped.astype(dtype)


def constant_value(expr) -> np.ndarray | None:
    """The value of a Relax constant, or None for a computed expression."""
    import tvm
    return expr.value.numpy() if isinstance(expr, tvm.ir.Constant) else None


def is_zero(expr) -> bool:
    """A constant whose every element is zero (a term the decomposition can drop)."""
    value = constant_value(expr)
    return value is not None and not value.any()


def relax_dtype(expr) -> str:
    return str(expr.ty.dtype)


def relax_scale_ratio(bb, numerators, denominator):
    """Relax: `scale_ratio`, folded here when every scale is a constant."""
    rx = relax()
    values = [constant_value(e) for e in (*numerators, denominator)]
    if all(v is not None for v in values):
        return rx.const(scale_ratio(values[:-1], values[-1]), "float32")
    *factors, divisor = (bb.emit(rx.op.astype(e, "float32")) for e in (*numerators, denominator))
    product = factors[0]
    for factor in factors[1:]:
        product = bb.emit(rx.op.multiply(product, factor))
    return bb.emit(rx.op.divide(product, divisor))


def requantize_scales(bb, x_scale, w_scale, y_scale, residual):
    """Relax: a quantized conv's requantize multiplier (x_scale * w_scale) / y_scale, and its
    residual (r, r_scale, r_zp) as (r, r_scale / y_scale, r_zp), () without one."""
    multiplier = relax_scale_ratio(bb, (x_scale, w_scale), y_scale)
    if not residual:
        return multiplier, ()
    r, r_scale, r_zp = residual
    return multiplier, (r, relax_scale_ratio(bb, (r_scale,), y_scale), r_zp)


def pad_with_zero_point(x, zero_point, padding):
    """TE: NCHW x padded by (top, left, bottom, right) with its zero point (the quantized 0)."""
    from tvm import te, tirx
    top, left, bottom, right = padding
    n, c, h, w = (int(d) for d in x.shape)
    fill = value_at(zero_point, 0)

    def value(b, ch, i, j):
        inside = tirx.all(i >= top, i < top + h, j >= left, j < left + w)
        return tirx.if_then_else(inside, x[b, ch, i - top, j - left], fill)

    return te.compute((n, c, h + top + bottom, w + left + right), value, name="pad_zero_point")


def as_int32(bb, expr, shape):
    """Relax: `expr` converted to int32 and reshaped to `shape`."""
    R = relax().op
    return bb.emit(R.reshape(bb.emit(R.astype(expr, "int32")), shape))


def zero_point_term(bb, x_zp, w, w_zp, reduced_axes, keepdims: bool = False):
    """Relax: x_zp * (K * w_zp - sum(w)) with the sums over `reduced_axes` of w (K taps each),
    one value per output channel: computed here when its inputs are constants."""
    rx = relax()
    R = rx.op
    taps = math.prod(int(w.ty.shape[a]) for a in reduced_axes)
    values = [constant_value(e) for e in (x_zp, w, w_zp)]
    if all(v is not None for v in values):
        xz, weight, wz = (v.astype(np.int64) for v in values)
        sums = weight.sum(tuple(reduced_axes), keepdims=keepdims)
        return relax_constant(xz.reshape(()) * (taps * wz.reshape(-1) - sums), "int32")
    sums = bb.emit(R.sum(bb.emit(R.astype(w, "int32")), axis=list(reduced_axes),
                         keepdims=keepdims))
    scaled = bb.emit(R.multiply(as_int32(bb, w_zp, (-1,)), rx.const(taps, "int32")))
    return bb.emit(R.multiply(as_int32(bb, x_zp, ()), bb.emit(R.subtract(scaled, sums))))


def lower_integer_conv(bb, conv: Conv2d, x, w, x_zp, w_zp):
    """Relax: the int32 accumulator of `integer_conv`, computed by conv2d on x and w as they
    are (uint8/int8) and corrected for the zero points:
    sum((x - xz)(w - wz)) = sum(x w) - wz sum(x) + xz (K wz - sum(w)) over x padded with xz."""
    rx = relax()
    R = rx.op
    if any(conv.padding):
        x = bb.emit(bb.call_te(pad_with_zero_point, x, x_zp, conv.padding,
                               primfunc_name_hint="pad_zero_point"))
    out_channels, group_channels, kh, kw = (int(d) for d in w.ty.shape)
    geometry = dict(strides=conv.stride, padding=0, dilation=conv.dilation, groups=conv.groups,
                    out_dtype="int32")
    if group_channels * kh * kw == 1:
        acc, sums = single_tap_products(bb, conv, x, w)
    else:
        acc, sums = bb.emit(R.nn.conv2d(x, w, **geometry)), None
    channels = (1, -1, 1, 1)
    if not is_zero(w_zp):
        if sums is None:
            # Each group's window sums of x (a conv with a ones weight), one per output channel.
            ones = rx.const(np.ones((conv.groups, group_channels, kh, kw), relax_dtype(x)))
            sums = bb.emit(R.nn.conv2d(x, ones, **geometry))
            if 1 < conv.groups < out_channels:
                sums = bb.emit(R.repeat(sums, out_channels // conv.groups, axis=1))
        correction = bb.emit(R.multiply(sums, as_int32(bb, w_zp, channels)))
        acc = bb.emit(R.subtract(acc, correction))
    if not is_zero(x_zp):
        term = zero_point_term(bb, x_zp, w, w_zp, (1, 2, 3))
        acc = bb.emit(R.add(acc, bb.emit(R.reshape(term, channels))))
    return acc


def single_tap_products(bb, conv: Conv2d, x, w):
    """Relax: (x * w, x) per output channel, int32, for a convolution whose every output sums
    one product (a 1x1 kernel over one input channel per group): elementwise, with no
    reduction. TVM's CUDA schedules took the conv's unit-extent reduction for one they could
    inline its epilogue into, and the build failed."""
    R = relax().op
    _, _, height, width = (int(d) for d in x.ty.shape)
    out_channels = int(w.ty.shape[0])
    taps = bb.emit(R.strided_slice(x, axes=[2, 3], begin=[0, 0], end=[height, width],
                                   strides=list(conv.stride)))
    if out_channels > conv.groups:   # each group's input channel feeds its output channels
        taps = bb.emit(R.repeat(taps, out_channels // conv.groups, axis=1))
    taps = bb.emit(R.astype(taps, "int32"))
    weight = bb.emit(R.reshape(bb.emit(R.astype(w, "int32")), (1, -1, 1, 1)))
    return bb.emit(R.multiply(taps, weight)), taps


def lower_integer_matmul(bb, a, b, a_zp, b_zp):
    """Relax: the int32 accumulator of `integer_matmul`, by matmul on the (u)int8 operands and
    the decomposition of `lower_integer_conv` (row sums of a, column sums of b)."""
    R = relax().op
    acc = bb.emit(R.matmul(a, b, out_dtype="int32"))
    if not is_zero(b_zp):
        row_sums = bb.emit(R.sum(bb.emit(R.astype(a, "int32")), axis=-1, keepdims=True))
        correction = bb.emit(R.multiply(row_sums, as_int32(bb, b_zp, (-1,))))
        acc = bb.emit(R.subtract(acc, correction))
    if not is_zero(a_zp):
        rank = len(b.ty.shape)
        acc = bb.emit(R.add(acc, zero_point_term(bb, a_zp, b, b_zp, (rank - 2,), True)))
    return acc


def lower_requantize(bb, acc, multiplier, y_scale, y_zp, activation, channel_axis: int,
                     residual=()):
    """Relax: one elementwise kernel computing `requantize` of the int32 `acc` (per-channel
    values along `channel_axis`); `residual` is () or (r, r_scale / y_scale, r_zero_point)."""
    def kernel(acc, multiplier, y_scale, y_zp, *residual):
        return requantize_compute(acc, multiplier, y_scale, y_zp, activation, channel_axis,
                                  residual)

    return bb.call_te(kernel, acc, multiplier, y_scale, y_zp, *residual,
                      primfunc_name_hint="requantize")


def requantize_compute(acc, multiplier, y_scale, y_zp, activation, channel_axis: int,
                       residual=()):
    """TE of `requantize` of the int32 tensor `acc` (per-channel values along `channel_axis`);
    `residual` is () or (r, r_scale / y_scale, r_zero_point)."""
    from tvm import te, tirx
    dtype = str(y_zp.dtype)
    low = high = None
    if isinstance(activation, Relu):
        low = tirx.const(0.0, "float32")
    elif isinstance(activation, Clip):
        scale = value_at(y_scale, 0).astype("float32")
        step = lambda bound: None if bound is None else nearbyint(  # noqa: E731
            tirx.const(float(np.float32(bound)), "float32") / scale)
        low, high = step(activation.min), step(activation.max)

    def value(*index):
        v = acc[index].astype("float32") * value_at(multiplier, index[channel_axis])
        if residual:
            r, r_multiplier, r_zp = residual
            difference = r[index].astype("int32") - value_at(r_zp, 0).astype("int32")
            v = v + difference.astype("float32") * value_at(r_multiplier, 0)
        return te_saturate(nearbyint(v), value_at(y_zp, 0), dtype, low, high)

    return te.compute(acc.shape, value, name="requantize")


# ---- the ops -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearQuantization(Op):
    """What quantize_linear and dequantize_linear share: x, scale and zero point (same shape as
    the scale: a scalar for the whole tensor, a vector along `axis`, or with `block_size`, the
    rank of x with `axis` in blocks of that many elements)."""

    arity = (3, 3)
    axis: int = 1
    block_size: int = 0

    def __post_init__(self):
        object.__setattr__(self, "axis", integer(self.axis, "axis"))
        object.__setattr__(self, "block_size", integer(self.block_size, "block_size"))
        expect(self.block_size >= 0, f"expected a non-negative block_size, found "
               f"{self.block_size}")

    def quantized_axis(self, x: TensorType, scale: TensorType, zero_point: TensorType):
        """The axis the parameters vary along (None: one for the whole tensor). A per-tensor
        scale and zero point may differ in rank (a scalar and a 1-element vector), as ONNX
        Runtime's quantize_static writes bias parameters."""
        if not self.block_size and per_tensor(scale) and per_tensor(zero_point):
            return None
        expect(zero_point.shape == scale.shape, f"expected a zero point of the scale's shape "
               f"{scale.shape}, found {zero_point}")
        expect(-x.ndim <= self.axis < x.ndim, f"expected axis in [{-x.ndim}, {x.ndim}), found "
               f"{self.axis} for {x}")
        axis = self.axis % x.ndim
        if self.block_size:
            wanted = tuple(-(-d // self.block_size) if a == axis else d
                           for a, d in enumerate(x.shape))
        else:
            wanted = (x.shape[axis],)
        expect(scale.shape == wanted, f"expected a scale of shape {wanted} (axis {self.axis}"
               f"{f', blocks of {self.block_size}' if self.block_size else ''} of {x}), "
               f"found {scale}")
        return axis

    def parameters(self, x, scale, zero_point):
        """numpy: scale and zero point broadcast against x."""
        axis = self.quantized_axis(*(TensorType.of(a) for a in (x, scale, zero_point)))
        return (broadcast_parameter(scale, x.shape, axis, self.block_size),
                broadcast_parameter(zero_point, x.shape, axis, self.block_size))

    def parameter_index(self, scale, index, axis):
        """TE: the index of the parameters that apply to x[index]."""
        if axis is None:
            return (0,) * len(scale.shape)
        if self.block_size:
            return tuple(i // self.block_size if a == axis else i for a, i in enumerate(index))
        return (index[axis],)

    def lower_elementwise(self, bb, x, scale, zero_point, compute, name: str):
        """Relax: one kernel of `compute(x value, scale value, zero point value)` per element.
        (Not relax.op.quantize / dequantize: they know no blocks, quantize's te.round is C's
        round, half away from zero, on CUDA, and dequantize clips float16 results to the finite
        range where ONNX overflows to inf.)"""
        from tvm import te
        axis = self.quantized_axis(*(relax_type(e) for e in (x, scale, zero_point)))

        def kernel(x, scale, zero_point):
            def value(*index):
                return compute(x[index], scale[self.parameter_index(scale, index, axis)],
                               zero_point[self.parameter_index(zero_point, index, axis)])
            return te.compute(x.shape, value, name=name)

        return bb.call_te(kernel, x, scale, zero_point, primfunc_name_hint=name)


def compute_dtype(dtype) -> str:
    """Quantization arithmetic runs in float64 for float64 values, else in float32."""
    return "float64" if str(dtype) == "float64" else "float32"


@register
@dataclass(frozen=True)
class QuantizeLinear(LinearQuantization):
    """y = saturate(round_half_even(x / scale) + zero_point): float x to the zero point's
    dtype (int8 or uint8). Inputs: x, scale (x's dtype), zero_point."""

    name = "quantize_linear"

    def infer(self, x, scale, zero_point):
        expect_float(x, "input x")
        expect(scale.dtype == x.dtype, f"expected a scale of x's dtype {x.dtype}, found {scale}")
        expect_quantized(zero_point, "zero_point")
        self.quantized_axis(x, scale, zero_point)
        return TensorType(x.shape, zero_point.dtype)

    def reference(self, x, scale, zero_point):
        s, z = self.parameters(x, scale, zero_point)
        dtype = compute_dtype(x.dtype)
        return saturate(np.rint(x.astype(dtype) / s.astype(dtype)), z, str(zero_point.dtype))

    def lower_tvm(self, bb, x, scale, zero_point):
        from tvm import tirx
        dtype, out = compute_dtype(relax_dtype(x)), relax_dtype(zero_point)

        def compute(x, scale, zero_point):
            return te_saturate(nearbyint(x.astype(dtype) / scale.astype(dtype)),
                               zero_point, out, compute=dtype)
        return self.lower_elementwise(bb, x, scale, zero_point, compute, "quantize")


@register
@dataclass(frozen=True)
class DequantizeLinear(LinearQuantization):
    """y = (x - zero_point) * scale: int8, uint8 or int32 x to the scale's float dtype.
    Inputs: x, scale, zero_point (x's dtype)."""

    name = "dequantize_linear"

    def infer(self, x, scale, zero_point):
        expect(x.dtype in (*QUANTIZED, "int32"), f"expected input x of dtype int8, uint8 or "
               f"int32, found {x}")
        expect_float(scale, "scale")
        expect(zero_point.dtype == x.dtype, f"expected a zero point of x's dtype {x.dtype}, "
               f"found {zero_point}")
        self.quantized_axis(x, scale, zero_point)
        return TensorType(x.shape, scale.dtype)

    def reference(self, x, scale, zero_point):
        s, z = self.parameters(x, scale, zero_point)
        dtype = compute_dtype(scale.dtype)
        difference = x.astype(np.int32) - z.astype(np.int32)
        return (difference.astype(dtype) * s.astype(dtype)).astype(scale.dtype)

    def lower_tvm(self, bb, x, scale, zero_point):
        out = relax_dtype(scale)
        dtype = compute_dtype(out)

        def compute(x, scale, zero_point):
            difference = x.astype("int32") - zero_point.astype("int32")
            return (difference.astype(dtype) * scale.astype(dtype)).astype(out)
        return self.lower_elementwise(bb, x, scale, zero_point, compute, "dequantize")


@register
@dataclass(frozen=True)
class TableLookup(Op):
    """y = table[x]: each uint8 value of x replaced by its entry in a 256-entry table (any
    dtype). `tabulate_quantized_activations` makes these from elementwise float chains between a
    dequantize_linear and a quantize_linear; ONNX has no such op: it exports as Cast (to int64)
    then Gather. Inputs: x (uint8), table [256]."""

    name = "table_lookup"
    arity = (2, 2)

    def infer(self, x, table):
        expect(x.dtype == "uint8", f"expected input x of dtype uint8, found {x}")
        expect(table.shape == (256,), f"expected a table of 256 entries, found {table}")
        return TensorType(x.shape, table.dtype)

    def reference(self, x, table):
        return table[x]

    def lower_tvm(self, bb, x, table):
        from tvm import te

        def kernel(x, table):
            # a uint8 index is always inside the table: no clamp
            return te.compute(x.shape, lambda *i: table[x[i].astype("int32")],
                              name="table_lookup")
        return bb.call_te(kernel, x, table, primfunc_name_hint="table_lookup")


@register
@dataclass(frozen=True)
class Conv2dInteger(Op):
    """ONNX ConvInteger: int32 sum((x - x_zero_point) * (w - w_zero_point)) over each window of
    `conv` (its stride, padding, dilation, groups); padding holds x_zero_point. Inputs: x, w
    ((u)int8), x_zero_point (scalar), w_zero_point (scalar or one per output channel)."""

    name = "conv2d_integer"
    arity = (4, 4)
    buffer_inputs = (2, 3)
    conv: Conv2d = Conv2d()

    def __post_init__(self):
        conv_attribute(self)

    def infer(self, x, w, x_zp, w_zp):
        out = integer_conv_type(self.conv, x, w)
        expect_parameter(x_zp, "x_zero_point", x.dtype)
        expect_parameter(w_zp, "w_zero_point", w.dtype, w.shape[0])
        return out

    def reference(self, x, w, x_zp, w_zp):
        return integer_conv(self.conv, x, x_zp, w, w_zp).astype(np.int32)

    def lower_tvm(self, bb, x, w, x_zp, w_zp):
        return lower_integer_conv(bb, self.conv, x, w, x_zp, w_zp)

    def macs(self, inputs, outputs):
        return self.conv.macs(inputs, outputs)

    def __str__(self) -> str:
        return f"{self.name}[{self.conv}]"


@register
@dataclass(frozen=True)
class MatmulInteger(Op):
    """ONNX MatMulInteger: int32 (a - a_zero_point) @ (b - b_zero_point) for (u)int8 operands of
    rank >= 2 (batch dimensions broadcast). a_zero_point is a scalar, b_zero_point a scalar or
    one per column."""

    name = "matmul_integer"
    arity = (4, 4)
    buffer_inputs = (2, 3)

    def infer(self, a, b, a_zp, b_zp):
        out = integer_matmul_type(a, b)
        expect_parameter(a_zp, "a_zero_point", a.dtype)
        expect_parameter(b_zp, "b_zero_point", b.dtype, b.shape[-1])
        return out

    def reference(self, a, b, a_zp, b_zp):
        return integer_matmul(a, a_zp, b, b_zp).astype(np.int32)

    def lower_tvm(self, bb, a, b, a_zp, b_zp):
        return lower_integer_matmul(bb, a, b, a_zp, b_zp)

    def macs(self, inputs, outputs):
        return outputs[0].numel * inputs[0].shape[-1]


@register
@dataclass(frozen=True)
class QLinearMatmul(Op):
    """ONNX QLinearMatMul: a @ b on (u)int8 operands of rank >= 2, requantized (see the module
    docstring). Inputs: a, a_scale, a_zero_point (scalars), b, b_scale, b_zero_point (scalars or
    one per column), y_scale, y_zero_point (scalars; y has y_zero_point's dtype)."""

    name = "qlinear_matmul"
    arity = (8, 8)
    buffer_inputs = (1, 2, 4, 5, 6, 7)

    def infer(self, a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp):
        out = integer_matmul_type(a, b)
        columns = b.shape[-1]
        expect_parameter(a_scale, "a_scale"), expect_parameter(a_zp, "a_zero_point", a.dtype)
        expect_parameter(b_scale, "b_scale", None, columns)
        expect_parameter(b_zp, "b_zero_point", b.dtype, columns)
        expect_quantized(y_zp, "y_zero_point")
        expect_parameter(y_scale, "y_scale"), expect_parameter(y_zp, "y_zero_point", y_zp.dtype)
        return out.with_dtype(y_zp.dtype)

    def reference(self, a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp):
        acc = integer_matmul(a, a_zp, b, b_zp)
        multiplier = scale_ratio((a_scale, b_scale), y_scale).reshape(-1)
        return requantize(acc, multiplier, y_zp.reshape(()), str(y_zp.dtype),
                          (-np.inf, np.inf))

    def lower_tvm(self, bb, a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp):
        acc = lower_integer_matmul(bb, a, b, a_zp, b_zp)
        multiplier = relax_scale_ratio(bb, (a_scale, b_scale), y_scale)
        return lower_requantize(bb, acc, multiplier, y_scale, y_zp, None,
                                len(acc.ty.shape) - 1)

    def macs(self, inputs, outputs):
        return outputs[0].numel * inputs[0].shape[-1]


@register
@dataclass(frozen=True)
class QLinearConv2d(Op):
    """ONNX QLinearConv, with a fusable requantize epilogue:
    y = quantize(activation(dequantize(x) * dequantize(w) + bias + dequantize(residual))),
    computed in integers and requantized as the module docstring says.

    Inputs: x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point (ONNX's
    order), then bias (int32 [O], in steps of x_scale * w_scale) if `has_bias`, then residual,
    residual_scale, residual_zero_point (a quantized tensor of the output's shape) if
    `has_residual`. Scales are float32 (as ONNX's); x's and the residual's scale and zero point
    are scalars, w's scalars or one per output channel; y has y_zero_point's dtype. `conv`
    holds the convolution's attributes; `activation` is a Relu, a Clip (relu6 = Clip(0, 6),
    bounds in real units) or None.

    Exports to ONNX as QLinearConv (then Clip on the integers for an activation); with a
    residual, as the DequantizeLinear -> Conv -> Add -> activation -> QuantizeLinear chain it
    stands for, which ONNX Runtime computes in float32 (equal within one step).
    """

    name = "qlinear_conv2d"
    arity = (8, 12)
    buffer_inputs = (1, 2, 4, 5, 6, 7)
    conv: Conv2d = Conv2d()
    activation: Relu | Clip | None = None
    has_bias: bool = True
    has_residual: bool = False

    def __post_init__(self):
        conv_attribute(self, QUANTIZED_CONV_ALGORITHMS + EXACT_FLOAT_CONV_ALGORITHMS)
        expect(self.activation is None or self.activation.name in QUANTIZED_EPILOGUE,
               f"expected activation {', '.join(QUANTIZED_EPILOGUE)} or None, found "
               f"{self.activation!r}")
        for field in ("has_bias", "has_residual"):
            object.__setattr__(self, field, flag(getattr(self, field), field))

    def split(self, inputs):
        """(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias or None, (residual,
        residual_scale, residual_zp) or ()) from the input list."""
        count = 8 + self.has_bias + 3 * self.has_residual
        expect(len(inputs) == count, f"expected {count} inputs (x, x_scale, x_zero_point, w, "
               f"w_scale, w_zero_point, y_scale, y_zero_point{', bias' if self.has_bias else ''}"
               f"{', residual, residual_scale, residual_zero_point' if self.has_residual else ''}"
               f"), found {len(inputs)}")
        bias = inputs[8] if self.has_bias else None
        residual = tuple(inputs[-3:]) if self.has_residual else ()
        return (*inputs[:8], bias, residual)

    def infer(self, *inputs):
        x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias, residual = self.split(inputs)
        out = integer_conv_type(self.conv, x, w)
        channels = w.shape[0]
        expect_parameter(x_scale, "x_scale", "float32")
        expect_parameter(x_zp, "x_zero_point", x.dtype)
        expect_parameter(w_scale, "w_scale", "float32", channels)
        expect_parameter(w_zp, "w_zero_point", w.dtype, channels)
        expect_quantized(y_zp, "y_zero_point")
        expect_parameter(y_scale, "y_scale", "float32")
        expect_parameter(y_zp, "y_zero_point", y_zp.dtype)
        if bias is not None:
            expect(bias == TensorType((channels,), "int32"), f"expected an int32 bias of shape "
                   f"({channels},), found {bias}")
        out = out.with_dtype(y_zp.dtype)
        if residual:
            r, r_scale, r_zp = residual
            expect_quantized(r, "residual")
            expect(r.shape == out.shape, f"expected a residual of the output's shape "
                   f"{out.shape}, found {r}")
            expect_parameter(r_scale, "residual_scale", "float32")
            expect_parameter(r_zp, "residual_zero_point", r.dtype)
        return self.activation.infer(out) if self.activation is not None else out

    def reference(self, *arrays):
        x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias, residual = self.split(arrays)
        acc = integer_conv(self.conv, x, x_zp, w, w_zp)
        if bias is not None:
            acc = acc + bias.astype(np.int64).reshape(1, -1, 1, 1)
        multiplier = scale_ratio((x_scale, w_scale), y_scale).reshape(1, -1, 1, 1)
        added = None
        if residual:
            r, r_scale, r_zp = residual
            difference = r.astype(np.int32) - r_zp.astype(np.int32).reshape(())
            added = difference.astype(np.float32) * scale_ratio((r_scale,), y_scale).reshape(())
        return requantize(acc, multiplier, y_zp.reshape(()), str(y_zp.dtype),
                          activation_bounds(self.activation, y_scale), added)

    def lower_tvm(self, bb, *args):
        x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias, residual = self.split(args)
        R = relax().op
        if self.conv.algorithm in QUANTIZED_CONV_ALGORITHMS:
            return self.lower_dot_product(bb, x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp,
                                          bias, residual)
        if self.conv != self.conv.plain:
            return self.lower_in_float32(bb, x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp,
                                         bias, residual)
        acc = lower_integer_conv(bb, self.conv, x, w, x_zp, w_zp)
        if bias is not None:
            acc = bb.emit(R.add(acc, bb.emit(R.reshape(bias, (1, -1, 1, 1)))))
        multiplier, residual = requantize_scales(bb, x_scale, w_scale, y_scale, residual)
        return lower_requantize(bb, acc, multiplier, y_scale, y_zp, self.activation, 1, residual)

    def lower_in_float32(self, bb, x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias,
                         residual):
        """Relax: the convolution on a float32 kernel (`conv.algorithm` "depthwise", or
        "direct" with a weight block: the grouped convolutions no dot-product kernel
        computes, `conv2d_int8.grouped_fits`; "narrow": so few channels that a dot-product
        tile would be mostly padding), exactly: it reads x - xz and the weight w - wz as
        float32, whose products and sums are integers below 2^24 (`select_conv_algorithm`
        checks the weights), which float32 holds exactly; the epilogue converts the sums to
        int32, adds the bias and requantizes, in the same kernel."""
        from tvm import te, tirx
        from .conv_kernel import lower_conv
        rx = relax()
        decision = f"exact float32 {self.conv.algorithm} convolution"
        weight = constant_operand(w, decision).astype(np.int32) - \
            constant_operand(w_zp, decision).astype(np.int32).reshape(-1, 1, 1, 1)
        center = float(constant_operand(x_zp, decision).reshape(-1)[0])
        channels = weight.shape[0]
        bias_value = (constant_operand(bias, decision) if bias is not None
                      else np.zeros(channels, np.int32))
        multiplier, extra = requantize_scales(bb, x_scale, w_scale, y_scale, residual)
        activation = self.activation

        def centered(t):
            return te.compute(t.shape, lambda *i: t(*i).astype("float32")
                              - tirx.const(center, "float32"), name="centered")

        def finish(sums, bias, multiplier, y_scale, y_zp, *residual):
            total = te.compute(sums.shape, lambda n, c, i, j: sums[n, c, i, j].astype("int32")
                               + bias[c], name="integer_sums")
            return requantize_compute(total, multiplier, y_scale, y_zp, activation, 1,
                                      tuple(residual))

        return lower_conv(bb, self.conv, x, relax_constant(weight, "float32"),
                          read=centered, finish=finish,
                          finish_operands=[relax_constant(bias_value, "int32"),
                                           multiplier, y_scale, y_zp, *extra])

    def lower_dot_product(self, bb, x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias,
                          residual):
        """Relax: the u8 x s8 convolution on the x86 instructions `conv.algorithm` names, then
        the zero-point correction and bias (one int32 per output channel, folded here) and the
        requantize epilogue: one kernel for the dot-product instructions
        (`schedules/conv2d_int8.py`, the epilogue from the register tile), three for AMX tiles
        (`schedules/amx.py`: the input copy, the tile kernel, the epilogue)."""
        from ..targets.tvm.schedules import amx as tiles
        from ..targets.tvm.schedules import conv2d_int8 as kernels
        from .base import OPAQUE
        amx = self.conv.algorithm == "amx"
        dot = None if amx else kernels.DOT_PRODUCTS[self.conv.algorithm, self.conv.weight_block]
        decision = f"{self.conv.algorithm} convolution"
        rx = relax()
        weight, x_zero_point = constant_operand(w, decision), constant_operand(x_zp, decision)
        expect(not constant_operand(w_zp, decision).any() and weight.dtype == np.int8,
               f"the {decision} takes int8 weights with zero points of 0")
        # sum((x - xz) w) = sum(x w) - xz sum(w): x is padded with xz, so the sums of w count
        # every tap; the bias joins the same per-channel constant.
        correction = -x_zero_point.astype(np.int64).reshape(()) * \
            weight.astype(np.int64).sum(axis=(1, 2, 3))
        if bias is not None:
            correction = correction + constant_operand(bias, decision).astype(np.int64)
        multiplier, extra = requantize_scales(bb, x_scale, w_scale, y_scale, residual)
        conv, activation = self.conv, self.activation
        correction = relax_constant(correction, "int32")

        def epilogue(acc, correction, multiplier, y_scale, y_zp, residual, out_width=None):
            """acc [N, ceil(O / lanes), OH, OW, lanes] -> the requantized NCHW output (of
            `out_width` columns where the AMX kernel computed the rows to whole tiles)."""
            total = tiles.from_tiles(acc, int(correction.shape[0]), correction, out_width)
            return requantize_compute(total, multiplier, y_scale, y_zp, activation, 1,
                                      tuple(residual))

        if amx:
            # the input padded with its zero point and grouped by 64 channels, the AMX kernel
            # (written by hand, complete as lowered), then the epilogue reading its int32 tiles
            acc, out_width = tiles.lower_kernel(bb, x, int(x_zero_point.reshape(-1)[0]), weight,
                                                conv, tiles.INT8)

            def compute(acc, c, m, s, z, *r):
                return epilogue(acc, c, m, s, z, r, out_width)

            operands = [acc, correction, multiplier, y_scale, y_zp, *extra]
            call = bb.call_te(compute, *operands, primfunc_name_hint="requantize_tiles",
                              primfunc_attrs={"op_pattern": OPAQUE, **tiles.EPILOGUE_ATTRS})
            if not extra:   # no residual read in NCHW order
                tiles.remember_epilogue(bb, call, compute, operands)
            return call

        def kernel(x, packed, x_zp, correction, multiplier, y_scale, y_zp, *residual):
            # where the rows are computed to whole tiles (`padded_width`), the real ones
            real_width, _, _ = kernels.row_widths(conv, int(x.shape[3]), int(packed.shape[3]))
            return epilogue(kernels.conv2d_dot(x, packed, x_zp, conv, dot), correction,
                            multiplier, y_scale, y_zp, residual,
                            real_width if conv.padded_width else None)

        packed = kernels.pack_weight(weight, dot)
        return bb.call_te(kernel, x, relax_constant(packed), x_zp, correction,
                          multiplier, y_scale, y_zp, *extra,
                          primfunc_name_hint=f"qlinear_conv2d_{dot.algorithm}",
                          primfunc_attrs={"op_pattern": OPAQUE})

    def macs(self, inputs, outputs):
        return outputs[0].numel * math.prod(inputs[3].shape[1:])

    # Printed as fused_conv2d is: qlinear_conv2d[conv2d(...) + add + relu].
    __str__ = FusedConv2d.__str__


# ---- reading quantized values --------------------------------------------------------------------
# Ops whose integer output keeps their integer input's scale and zero point: exact on quantized
# values, since dequantizing is increasing and the same for every element of a per-tensor
# quantized value. quantize_int8 runs them on integers; `output_quantization` looks through them.
KEEPS_QUANTIZATION = ("flatten", "reshape", "max_pool2d")


def output_quantization(value) -> tuple[DequantizeLinear, np.ndarray, np.ndarray] | None:
    """How to read an integer value of a graph as the real numbers it stands for: (the
    dequantize op, scale, zero point), from the quantize_linear or qlinear op that made it
    (looking through KEEPS_QUANTIZATION ops for per-tensor values, and through a concat to
    its inputs'), or None where the graph does not say (an int32 accumulator, a computed
    scale)."""
    node, through = value.producer, False
    while node is not None and node.op_name in KEEPS_QUANTIZATION and \
            node.inputs[0].dtype in QUANTIZED:
        node, through = node.inputs[0].producer, True
    if node is None:
        return None
    if node.op_name == "concat":
        # an integer concat (quantize_int8's) holds its inputs in one scale and zero point:
        # those of the inputs that say, which must agree (a table lookup's output does not say)
        said = [q for q in map(output_quantization, node.inputs) if q is not None]
        if not said or any(np.size(s) != 1 or not (np.array_equal(s, said[0][1])
                                                   and np.array_equal(z, said[0][2]))
                           for _, s, z in said):
            return None
        return said[0]
    if node.op_name == "quantize_linear":
        op, scale, zero_point = DequantizeLinear(node.op.axis, node.op.block_size), \
            node.inputs[1], node.inputs[2]
    elif node.op_name in ("qlinear_conv2d", "qlinear_matmul"):
        op, scale, zero_point = DequantizeLinear(), node.inputs[6], node.inputs[7]
    else:
        return None
    if not (scale.is_constant and zero_point.is_constant) or \
            through and not (per_tensor(scale.type) and per_tensor(zero_point.type)):
        return None
    return op, scale.data, zero_point.data
