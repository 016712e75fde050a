"""Reductions over any axes (ONNX ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceProd,
ReduceL1, ReduceL2, ReduceSumSquare, ReduceLogSumExp) and the layer normalization built on
them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import TensorType, is_float_dtype
from .base import (Op, accumulator, expect, expect_float, expect_same_dtype, flag, int_tuple,
                   integer, real, register, relax, relax_type)
from .cast import isnan, lower_in_float32
from .pool import nan_max_reducer
from .shape import normalize_axes, te_type


@dataclass(frozen=True)
class Reduce(Op):
    """A reduction over `axes` (None: every axis), keeping them as size 1 with `keepdims`."""

    axes: tuple[int, ...] | None = None
    keepdims: bool = True

    def __post_init__(self):
        if self.axes is not None:
            object.__setattr__(self, "axes", int_tuple(self.axes, "axes"))
        object.__setattr__(self, "keepdims", flag(self.keepdims, "keepdims"))

    def reduced(self, rank: int) -> tuple[int, ...]:
        return tuple(range(rank)) if self.axes is None else normalize_axes(self.axes, rank)

    def infer(self, x: TensorType) -> TensorType:
        axes = self.reduced(x.ndim)
        if self.keepdims:
            shape = [1 if a in axes else d for a, d in enumerate(x.shape)]
        else:
            shape = [d for a, d in enumerate(x.shape) if a not in axes]
        return x.with_shape(shape)

    def numpy_args(self, x: np.ndarray) -> dict:
        return dict(axis=self.reduced(x.ndim), keepdims=self.keepdims)


@register
@dataclass(frozen=True)
class ReduceMean(Reduce):
    name = "reduce_mean"

    def infer(self, x):
        expect_float(x)
        return super().infer(x)

    def reference(self, x):
        return np.asarray(x.astype(accumulator(x.dtype)).mean(**self.numpy_args(x))).astype(
            x.dtype)

    def lower_tvm(self, bb, x):
        axes = list(self.reduced(relax_type(x).ndim))
        return lower_in_float32(bb, x, lambda v: relax().op.mean(v, axes, self.keepdims))


@register
@dataclass(frozen=True)
class ReduceSum(Reduce):
    """Floats accumulate in float32 (or float64); integers in their own dtype, wrapping."""

    name = "reduce_sum"

    def infer(self, x):
        expect(x.dtype != "bool", f"expected a numeric input, found {x}")
        return super().infer(x)

    def reference(self, x):
        if x.dtype.kind in "iu":
            return np.asarray(np.sum(x, dtype=x.dtype, **self.numpy_args(x)))
        return np.asarray(x.astype(accumulator(x.dtype)).sum(**self.numpy_args(x))).astype(
            x.dtype)

    def lower_tvm(self, bb, x):
        axes = list(self.reduced(relax_type(x).ndim))
        return lower_in_float32(bb, x, lambda v: relax().op.sum(v, axes, self.keepdims))


@register
@dataclass(frozen=True)
class ReduceMax(Reduce):
    """The largest value, NaN if any is NaN (numpy's max); reduced axes may not be empty."""

    name = "reduce_max"

    def infer(self, x):
        out = super().infer(x)
        empty = [a for a in self.reduced(x.ndim) if x.shape[a] == 0]
        expect(not empty, f"expected non-empty reduced axes, found axes {empty} of {x} empty")
        return out

    def reference(self, x):
        return np.asarray(x.max(**self.numpy_args(x)))

    def lower_tvm(self, bb, x):
        if relax_type(x).dtype == "bool":   # as int8: TVM cannot vectorize bool reductions
            R = relax().op
            axes = list(self.reduced(relax_type(x).ndim))
            extreme = R.max if self.name == "reduce_max" else R.min
            return R.astype(extreme(R.astype(x, "int8"), axes, self.keepdims), "bool")
        return bb.call_te(self.te_max, x, primfunc_name_hint=self.name)

    def reducer(self):
        return nan_max_reducer()

    def te_max(self, x):
        """TE: the max (min) over the reduced axes, NaN-propagating (see `pool.nan_max`)."""
        from tvm import te
        shape = [int(d) for d in x.shape]
        axes = self.reduced(len(shape))
        loops = {a: te.reduce_axis((0, shape[a]), f"r{a}") for a in axes}
        reducer = self.reducer()
        out_shape = self.infer(te_type(x)).shape

        def body(*index):
            rest, source = list(index), []
            for a in range(len(shape)):
                if a in loops:
                    source.append(loops[a])
                    if self.keepdims:
                        rest.pop(0)
                else:
                    source.append(rest.pop(0))
            return reducer(x[tuple(source)], axis=list(loops.values()))

        return te.compute(out_shape, body, name=self.name)


@register
@dataclass(frozen=True)
class ReduceMin(ReduceMax):
    """The smallest value, NaN if any is NaN (numpy's min); reduced axes may not be empty."""

    name = "reduce_min"

    def reference(self, x):
        return np.asarray(x.min(**self.numpy_args(x)))

    def reducer(self):
        from tvm import te, tirx

        def nan_min(a, b):
            if not is_float_dtype(a.dtype if hasattr(a, "dtype") else a.ty):
                return tirx.min(a, b)
            return tirx.Select(tirx.any(isnan(a), a < b), a, b)
        return te.comm_reducer(nan_min, lambda dtype: tirx.max_value(dtype), name="nan_min")


@dataclass(frozen=True)
class SumOf(Reduce):
    """finish(sum of term(x)) over the axes: floats accumulate in float32 (or float64),
    integers in their own dtype, wrapping (ONNX ReduceL1, ReduceSumSquare, ReduceL2). `term`
    and `finish` take numpy or Relax's op module (`np.abs` / `R.abs`, ...)."""

    floats_only = False

    def term(self, m, x):
        return x

    def finish(self, m, total):
        return total

    def infer(self, x):
        expect(x.dtype != "bool", f"expected a numeric input, found {x}")
        if self.floats_only:
            expect_float(x)
        return super().infer(x)

    def reference(self, x):
        acc = x.dtype if x.dtype.kind in "iu" else accumulator(x.dtype)
        total = np.sum(self.term(np, x.astype(acc)), dtype=acc, **self.numpy_args(x))
        return np.asarray(self.finish(np, total)).astype(x.dtype)

    def lower_tvm(self, bb, x):
        R = relax().op
        axes = list(self.reduced(relax_type(x).ndim))
        return lower_in_float32(bb, x, lambda v: self.finish(
            R, R.sum(self.term(R, v), axes, self.keepdims)))


@register
@dataclass(frozen=True)
class ReduceL1(SumOf):
    name = "reduce_l1"

    def term(self, m, x):
        return m.abs(x)


@register
@dataclass(frozen=True)
class ReduceSumSquare(SumOf):
    name = "reduce_sum_square"

    def term(self, m, x):
        return m.multiply(x, x)


@register
@dataclass(frozen=True)
class ReduceL2(ReduceSumSquare):
    name = "reduce_l2"
    floats_only = True

    def finish(self, m, total):
        return m.sqrt(total)


@register
@dataclass(frozen=True)
class ReduceProd(Reduce):
    """The product; floats multiply in float32 (or float64), integers in their own dtype."""

    name = "reduce_prod"

    def infer(self, x):
        expect(x.dtype != "bool", f"expected a numeric input, found {x}")
        return super().infer(x)

    def reference(self, x):
        acc = x.dtype if x.dtype.kind in "iu" else accumulator(x.dtype)
        return np.asarray(np.prod(x.astype(acc), dtype=acc, **self.numpy_args(x))).astype(
            x.dtype)

    def lower_tvm(self, bb, x):
        axes = list(self.reduced(relax_type(x).ndim))
        return lower_in_float32(bb, x, lambda v: relax().op.prod(v, axes, self.keepdims))


@register
@dataclass(frozen=True)
class ReduceLogSumExp(Reduce):
    """log(sum(exp(x))) over the axes, computed as m + log(sum(exp(x - m))) with m the max
    (0 where the max is infinite or the axes are empty), so that large values do not overflow;
    -inf over empty axes."""

    name = "reduce_log_sum_exp"

    def infer(self, x):
        expect_float(x)
        return super().infer(x)

    def reference(self, x):
        acc = accumulator(x.dtype)
        xa, args = x.astype(acc), self.numpy_args(x)
        shift = np.max(xa, axis=args["axis"], keepdims=True, initial=-np.inf)
        shift = np.where(np.isfinite(shift), shift, acc(0))
        total = np.log(np.sum(np.exp(xa - shift), axis=args["axis"], keepdims=True)) + shift
        return np.asarray(total if self.keepdims else np.squeeze(total, args["axis"])).astype(
            x.dtype)

    def lower_tvm(self, bb, x):
        # One PrimFunc (max, shift, sum of exponentials, result): as separate Relax ops, the
        # fused sum(exp(x - shift)) trips dlight's GEMV rule on CUDA.
        return lower_in_float32(bb, x, lambda v: bb.call_te(
            self.te_log_sum_exp, v, primfunc_name_hint="reduce_log_sum_exp"))

    def te_log_sum_exp(self, x):
        from tvm import te, tirx
        shape = [int(d) for d in x.shape]
        axes = self.reduced(len(shape))
        kept = [1 if a in axes else d for a, d in enumerate(shape)]

        def source(index, loops):
            loops = iter(loops)
            return tuple(next(loops) if a in axes else index[a] for a in range(len(shape)))

        over = [te.reduce_axis((0, shape[a]), f"m{a}") for a in axes]
        top = te.compute(kept, lambda *i: te.max(x[source(i, over)], axis=over), name="lse_max")
        shift = te.compute(kept, lambda *i: tirx.Select(
            tirx.any(tirx.isinf(top[i]), isnan(top[i])), tirx.const(0, x.dtype), top[i]),
            name="lse_shift")
        over = [te.reduce_axis((0, shape[a]), f"s{a}") for a in axes]
        total = te.compute(kept, lambda *i: te.sum(te.exp(x[source(i, over)] - shift[i]),
                                                   axis=over), name="lse_sum")

        def result(*out):
            out = iter(out)
            i = tuple((next(out) if self.keepdims else 0) if a in axes else next(out)
                      for a in range(len(shape)))
            return te.log(total[i]) + shift[i]

        return te.compute(self.infer(te_type(x)).shape, result, name="reduce_log_sum_exp")


@register
@dataclass(frozen=True)
class LayerNorm(Op):
    """(x - mean) / sqrt(var + epsilon) * scale + bias over the axes from `axis` on (ONNX
    LayerNormalization, statistics in float32 or wider); scale and bias broadcast to those
    axes. Inputs: x, scale, optional bias."""

    name = "layer_norm"
    arity = (2, 3)
    axis: int = -1
    epsilon: float = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "axis", integer(self.axis, "axis"))
        object.__setattr__(self, "epsilon", real(self.epsilon, "epsilon"))

    def normalized(self, x: TensorType) -> tuple[int, ...]:
        expect(-x.ndim <= self.axis < x.ndim, f"expected axis in [{-x.ndim}, {x.ndim}), found "
               f"{self.axis} for {x}")
        return tuple(range(self.axis % x.ndim, x.ndim))

    def infer(self, x, scale, bias=None):
        expect_float(x)
        params = [scale] + ([bias] if bias is not None else [])
        expect_same_dtype(x, *params)
        shape = x.shape[self.normalized(x)[0]:]
        for p, what in zip(params, ("scale", "bias")):
            try:
                fits = np.broadcast_shapes(p.shape, shape) == shape
            except ValueError:
                fits = False
            expect(fits, f"expected {what} broadcastable to {shape} (the normalized axes of "
                   f"{x}), found {p}")
        return x

    def reference(self, x, scale, bias=None):
        acc = accumulator(x.dtype)
        axes = self.normalized(TensorType.of(x))
        xa = x.astype(acc)
        centred = xa - xa.mean(axis=axes, keepdims=True)
        variance = np.square(centred).mean(axis=axes, keepdims=True)
        y = centred / np.sqrt(variance + acc(self.epsilon)) * scale.astype(acc)
        if bias is not None:
            y = y + bias.astype(acc)
        return y.astype(x.dtype)

    def lower_tvm(self, bb, x, scale, bias=None):
        # Two passes (mean, then the mean of squared deviations) as the reference computes
        # them; TOPI's layer_norm takes E[x^2] - E[x]^2, which cancels when |mean| >> std.
        rx = relax()
        R = rx.op
        axes = list(self.normalized(relax_type(x)))

        def normalize(v):
            wide = relax_type(v).dtype
            cast = (lambda p: p) if wide == relax_type(x).dtype else \
                (lambda p: R.astype(p, wide))
            centred = bb.emit(R.subtract(v, R.mean(v, axes, keepdims=True)))
            variance = R.mean(R.multiply(centred, centred), axes, keepdims=True)
            y = R.divide(centred, R.sqrt(R.add(variance, rx.const(self.epsilon, wide))))
            y = R.multiply(y, cast(scale))
            return R.add(y, cast(bias)) if bias is not None else y

        return lower_in_float32(bb, x, normalize)


@register
@dataclass(frozen=True)
class InstanceNorm(Op):
    """(x - mean) / sqrt(var + epsilon) * scale[c] + bias[c], the statistics over the spatial
    axes of each sample and channel (ONNX InstanceNormalization; style transfer's
    normalization). Inputs: x [N, C, ...], scale [C], bias [C]."""

    name = "instance_norm"
    arity = (3, 3)
    epsilon: float = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "epsilon", real(self.epsilon, "epsilon"))

    def infer(self, x, scale, bias):
        expect_float(x), expect_same_dtype(x, scale, bias)
        expect(x.ndim >= 3, f"expected an input [N, C, spatial...], found {x}")
        for p, what in ((scale, "scale"), (bias, "bias")):
            expect(p.shape == (x.shape[1],), f"expected {what} of shape ({x.shape[1]},), "
                   f"found {p}")
        return x

    def layer_norm(self, x: TensorType) -> LayerNorm:
        """The same statistics: a layer norm over the axes from 2 on."""
        return LayerNorm(2 - x.ndim, self.epsilon)

    def reference(self, x, scale, bias):
        shape = (-1,) + (1,) * (x.ndim - 2)
        return self.layer_norm(TensorType.of(x)).reference(x, scale.reshape(shape),
                                                           bias.reshape(shape))

    def lower_tvm(self, bb, x, scale, bias):
        R = relax().op
        shape = [-1] + [1] * (len(relax_type(x).shape) - 2)
        return self.layer_norm(relax_type(x)).lower_tvm(bb, x, R.reshape(scale, shape),
                                                        R.reshape(bias, shape))
