"""Spatial pooling (NCHW) and AlexNet's local response normalization."""
from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..ir import is_float_dtype
from .base import (relax_type, Op, accumulator, expect, expect_float, expect_rank, flag, integer,
                   pair, quad, real, register, relax)
from .cast import isnan, lower_in_float32


def pool_out_size(size, kernel, stride, pad_begin, pad_end, dilation, ceil_mode) -> int:
    span = dilation * (kernel - 1) + 1
    rounding = math.ceil if ceil_mode else math.floor
    out = rounding((size + pad_begin + pad_end - span) / stride) + 1
    # The last window must start inside the input or the leading padding (PyTorch and ONNX).
    if ceil_mode and (out - 1) * stride >= size + pad_begin:
        out -= 1
    return out


# The blocks of a separable max pool, by which the CPU schedule rule finds them.
ROWS_BLOCK = "pool_rows_max"
COLUMNS_BLOCK = "pool_columns_max"
# ... and of a separable average pool.
ROWS_SUM_BLOCK = "pool_rows_sum"
COLUMNS_SUM_BLOCK = "pool_columns_sum"
# The rows pass's annotation: [left, width], the input's columns in its padded rows (the CPU
# rule vectorizes the padding and the input's columns as separate loops).
COLUMNS_ATTR = "graphopt.pool_columns"


def nan_max(a, b):
    """TIR: the larger of a and b, NaN if either is NaN (numpy's maximum). TIR's max is
    `a > b ? a : b`, which drops a NaN in `a`; max pools reduce with this instead. `a` (in a
    chain, the running maximum) is bound once by a Let: written twice, a chain of k maxima
    would grow to 2**k terms, and the TIR simplifier with it."""
    from tvm import tirx
    dtype = a.dtype if hasattr(a, "dtype") else a.ty   # a TensorSlice, or any PrimExpr
    if not is_float_dtype(dtype):
        return tirx.max(a, b)
    if isinstance(a, tirx.Var):
        return tirx.Select(tirx.any(isnan(a), a > b), a, b)
    best = tirx.Var("best", str(dtype))
    return tirx.Let(best, a, tirx.Select(tirx.any(isnan(best), best > b), best, b))


def nan_max_of(values):
    """TIR: `nan_max` of all `values` without a Let: the max of the values, NaN where any is
    NaN (each value written twice, not 2**k times). For bfloat16: TVM computes bfloat16 in
    float32 but keeps the type of `nan_max`'s Let variable, which it then refuses."""
    from tvm import tirx
    first = values[0]
    dtype = str(first.dtype if hasattr(first, "dtype") else first.ty)
    best = functools.reduce(tirx.max, values)
    if not is_float_dtype(dtype):
        return best
    return tirx.Select(tirx.any(*[isnan(v) for v in values]), tirx.const(float("nan"), dtype),
                       best)


def nan_max_reducer():
    """A TE reducer with `nan_max` as its combiner."""
    from tvm import te, tirx
    return te.comm_reducer(nan_max, lambda dtype: tirx.min_value(dtype), name="nan_max")


@dataclass(frozen=True)
class Pool2d(Op):
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] | None = None          # None: equal to the kernel
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False

    def __post_init__(self):
        object.__setattr__(self, "kernel", pair(self.kernel, "kernel"))
        object.__setattr__(self, "stride", pair(self.kernel if self.stride is None else self.stride,
                                                "stride"))
        object.__setattr__(self, "padding", quad(self.padding))
        object.__setattr__(self, "dilation", pair(self.dilation, "dilation"))
        object.__setattr__(self, "ceil_mode", flag(self.ceil_mode, "ceil_mode"))
        for field in ("separable", "count_include_pad"):   # the subclasses' flags
            if hasattr(self, field):
                object.__setattr__(self, field, flag(getattr(self, field), field))
        expect(min(self.kernel) >= 1 and min(self.stride) >= 1 and min(self.dilation) >= 1
               and min(self.padding) >= 0,
               f"expected positive kernel/stride/dilation and non-negative padding, found {self}")
        pt, pl, pb, pr = self.padding
        span_h = self.dilation[0] * (self.kernel[0] - 1) + 1
        span_w = self.dilation[1] * (self.kernel[1] - 1) + 1
        # A window lying wholly in the padding would have nothing to pool.
        expect(max(pt, pb) < span_h and max(pl, pr) < span_w,
               f"expected padding smaller than the kernel, found padding {self.padding} "
               f"for kernel {self.kernel}")

    def out_hw(self, h, w):
        pt, pl, pb, pr = self.padding
        return (pool_out_size(h, self.kernel[0], self.stride[0], pt, pb, self.dilation[0],
                              self.ceil_mode),
                pool_out_size(w, self.kernel[1], self.stride[1], pl, pr, self.dilation[1],
                              self.ceil_mode))

    def infer(self, x):
        expect_rank(x, 4, "input x")
        oh, ow = self.out_hw(*x.shape[2:])
        expect(oh > 0 and ow > 0, f"expected a window that fits the padded input, found kernel "
               f"{self.kernel} on {x} padded by {self.padding}")
        return x.with_shape((*x.shape[:2], oh, ow))

    def windows(self, xp, oh, ow):
        """Yield the (N, C, oh, ow) strided view of every kernel tap of the padded input."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        for i in range(kh):
            for j in range(kw):
                yield xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                         j * dw: j * dw + sw * (ow - 1) + 1: sw]

    def two_passes(self, x, out_h: int, out_w: int, fill, combine, names, finish=None,
                   pieces: bool = True):
        """TE of the pool as two passes, which the CPU rule `schedules/pool2d.py` finds by
        their block `names`: the rows pass combines (`combine(values)`) the kernel's rows for
        each input column (padding reading as `fill`, the width padded so that the columns
        pass needs no bounds checks; only the sides a window can cross are checked, as TVM
        runs a loop with a per-lane check a lane at a time), the columns pass combines that
        short row buffer's columns of each window; `finish(total, oh, ow)`, where given, maps
        each window's result. `pieces`: the rows pass may be vectorized in pieces (`combine`
        binds no Let), recorded on it for the CPU rule (`COLUMNS_ATTR`: [left padding, input
        width, pieces])."""
        from tvm import te, tirx
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        pad_top, pad_left = self.padding[:2]
        n, c, h, w = (int(v) for v in x.shape)
        padded_w = (out_w - 1) * sw + dw * (kw - 1) + 1

        def rows(b, ch, oh, col):
            values = []
            for i in range(kh):
                row, src_col = oh * sh + i * dh - pad_top, col - pad_left
                first_row, last_row = i * dh - pad_top, (out_h - 1) * sh + i * dh - pad_top
                inside = [check for check, needed in (
                    (row >= 0, first_row < 0), (row < h, last_row >= h),
                    (src_col >= 0, pad_left > 0), (src_col < w, padded_w - pad_left > w))
                    if needed]
                values.append(tirx.if_then_else(tirx.all(*inside), x[b, ch, row, src_col], fill)
                              if inside else x[b, ch, row, src_col])
            return combine(values)

        rows_done = te.compute((n, c, out_h, padded_w), rows, name=names[0],
                               attrs={COLUMNS_ATTR: [pad_left, w, int(pieces)]})

        def columns(b, ch, oh, ow):
            total = combine([rows_done[b, ch, oh, ow * sw + j * dw] for j in range(kw)])
            return total if finish is None else finish(total, oh, ow)

        return te.compute((n, c, out_h, out_w), columns, name=names[1])

    def padded(self, x, fill, oh, ow):
        """Pad explicitly, plus the ceil-mode overhang at the end (filled with `fill` too)."""
        pt, pl, pb, pr = self.padding
        need_h = (oh - 1) * self.stride[0] + self.dilation[0] * (self.kernel[0] - 1) + 1
        need_w = (ow - 1) * self.stride[1] + self.dilation[1] * (self.kernel[1] - 1) + 1
        extra_h = max(0, need_h - (x.shape[2] + pt + pb))
        extra_w = max(0, need_w - (x.shape[3] + pl + pr))
        return np.pad(x, ((0, 0), (0, 0), (pt, pb + extra_h), (pl, pr + extra_w)),
                      constant_values=fill), extra_h, extra_w


@register
@dataclass(frozen=True)
class MaxPool2d(Pool2d):
    """Max pooling. `separable` (a target decision, see the CPU pass `separate_pools`)
    lowers it as a row max then a column max (`separable_max_pool`), which the CPU rule
    `targets/tvm/schedules/pool2d.py` schedules by its block names."""

    name = "max_pool2d"
    separable: bool = False

    def target_choice(self) -> str:
        return "separable" if self.separable else ""

    def reference(self, x):
        oh, ow = self.out_hw(*x.shape[2:])
        lowest = -np.inf if is_float_dtype(x.dtype) else np.iinfo(x.dtype).min
        xp, _, _ = self.padded(x, lowest, oh, ow)
        out = None
        for win in self.windows(xp, oh, ow):
            out = win.copy() if out is None else np.maximum(out, win)
        return out

    def lower_tvm(self, bb, x):
        n, c, h, w = x.ty.shape
        compute = self.separable_max_pool if self.separable else self.max_pool
        return bb.call_te(compute, x, *self.out_hw(int(h), int(w)),
                          primfunc_name_hint="max_pool2d")

    def separable_max_pool(self, x, out_h: int, out_w: int):
        """TE: the max pool as a row max (`ROWS_BLOCK`) followed by a column max
        (`COLUMNS_BLOCK`), padding reading as -inf (`Pool2d.two_passes`), each maximum
        written without Lets (`nan_max_of`). A pool padding its columns has its rows pass
        vectorized in pieces by the CPU rule (the padding columns, the input's), which a
        chain of Lets came out wrong in; as one loop its per-lane bounds checks made it
        scalar (3x3 stride-1 pools, 480 ch 28x28, one core: bfloat16 5.6 -> 0.59 ms, float32
        0.74 -> 0.57). Unpadded pools were a chain of Lets, which LLVM took 25 s to compile
        for an 8x8 window (a global max pool as torch exports AdaptiveMaxPool2d) and minutes
        for 12x12, and which ran slower: one core, chain / no Lets, VGG's 2x2 pool of 64 ch
        224x224 1.28 / 0.24 ms, GoogLeNet's 3x3 stride-2 one of 192 ch 56x56 79 / 49 us.
        (bfloat16 cannot take a Let: TVM computes it in float32 but keeps the type of the
        Let variable, which it then refuses.)"""
        from tvm import tirx
        # padding columns (a ceil-mode overhang alone stays one loop: SqueezeNet's pools ran
        # 1.18x slower at two threads in pieces)
        pieces = self.padding[1] > 0 or self.padding[3] > 0
        return self.two_passes(x, out_h, out_w, tirx.min_value(x.dtype), nan_max_of,
                               (ROWS_BLOCK, COLUMNS_BLOCK), pieces=pieces)

    def max_pool(self, x, out_h: int, out_w: int):
        """TE: the max over each window (padding reads as -inf), NaN-propagating."""
        from tvm import te, tirx
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        pad_top, pad_left = self.padding[:2]
        n, c, h, w = (int(v) for v in x.shape)
        ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
        reducer, lowest = nan_max_reducer(), tirx.min_value(x.dtype)

        def window(b, ch, i, j):
            row, col = i * sh + ry * dh - pad_top, j * sw + rx * dw - pad_left
            inside = tirx.all(row >= 0, row < h, col >= 0, col < w)
            return reducer(tirx.if_then_else(inside, x[b, ch, row, col], lowest), axis=[ry, rx])

        return te.compute((n, c, out_h, out_w), window, name="max_pool2d")


def flat_index(n, c, row, col, channels: int, h: int, w: int, storage_order: int):
    """ONNX MaxPool's index of input element [n, c, row, col] in the whole input tensor
    flattened: row-major (storage_order 0) or with H and W swapped (1)."""
    plane = n * channels + c
    return (plane * h + row) * w + col if storage_order == 0 else (plane * w + col) * h + row


@register
@dataclass(frozen=True)
class MaxPool2dIndices(Pool2d):
    """The indices output of ONNX MaxPool (int64): where in the input each window's maximum
    is, as a flat index into the whole input tensor (row-major, or with `storage_order` 1 the
    spatial axes column-major). The first maximum in row-major window order wins, a NaN
    counting as the largest value (torch's max_pool2d(return_indices=True) within each plane);
    padding is never chosen. The values are the `max_pool2d` of the same attributes."""

    name = "max_pool2d_indices"
    storage_order: int = 0

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "storage_order", integer(self.storage_order, "storage_order"))
        expect(self.storage_order in (0, 1),
               f"expected storage_order 0 or 1, found {self.storage_order}")

    def values(self) -> MaxPool2d:
        return MaxPool2d(self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode)

    def infer(self, x):
        return super().infer(x).with_dtype("int64")

    def reference(self, x):
        n, c, h, w = x.shape
        oh, ow = self.out_hw(h, w)
        pt, pl = self.padding[:2]
        lowest = -np.inf if is_float_dtype(x.dtype) else np.iinfo(x.dtype).min
        xp, _, _ = self.padded(x, lowest, oh, ow)
        rows = np.arange(oh)[:, None] * self.stride[0] - pt
        cols = np.arange(ow)[None, :] * self.stride[1] - pl
        best = np.zeros((n, c, oh, ow), x.dtype)
        where = np.full((n, c, oh, ow), -1, np.int64)
        plane = np.arange(n * c).reshape(n, c, 1, 1)
        taps = ((i, j) for i in range(self.kernel[0]) for j in range(self.kernel[1]))
        for win, (i, j) in zip(self.windows(xp, oh, ow), taps):
            row, col = rows + i * self.dilation[0], cols + j * self.dilation[1]
            inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
            better = inside & ((where < 0) | (win > best) | (isnan_np(win) & ~isnan_np(best)))
            index = flat_index(plane // c, plane % c, row, col, c, h, w, self.storage_order)
            best = np.where(better, win, best)
            where = np.where(better, index, where)
        return where

    def lower_tvm(self, bb, x):
        n, c, h, w = x.ty.shape
        return bb.call_te(self.argmax, x, *self.out_hw(int(h), int(w)),
                          primfunc_name_hint="max_pool2d_indices")

    def argmax(self, x, out_h: int, out_w: int):
        """TE: the window's maximum (`MaxPool2d.max_pool`), then the first tap in window order
        that holds it (both NaN counting as equal), as a min over tap keys: a matching tap's
        number, else a real tap's number plus the tap count (a window whose real values are
        all -inf, below the pool's padding value, takes its first real tap), else twice the
        count. Plain single-output reductions, which every schedule rule handles."""
        from tvm import te, tirx
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        pad_top, pad_left = self.padding[:2]
        n, c, h, w = (int(v) for v in x.shape)
        floating, taps = is_float_dtype(x.dtype), kh * kw
        best = self.values().max_pool(x, out_h, out_w)
        tap = te.reduce_axis((0, taps), "tap")

        def position(i, j, t):
            return i * sh + t // kw * dh - pad_top, j * sw + t % kw * dw - pad_left

        def first_tap(b, ch, i, j):
            row, col = position(i, j, tap)
            inside = tirx.all(row >= 0, row < h, col >= 0, col < w)
            value = tirx.if_then_else(inside, x[b, ch, row, col], tirx.min_value(x.dtype))
            top = best[b, ch, i, j]
            same = value == top
            if floating:
                same = tirx.any(same, tirx.all(isnan(value), isnan(top)))
            key = tirx.Select(tirx.all(inside, same), tap,
                              tirx.Select(inside, tap + taps, tirx.const(2 * taps, "int32")))
            return te.min(key, axis=tap)

        first = te.compute((n, c, out_h, out_w), first_tap, name="max_pool2d_first_tap")

        def index(b, ch, i, j):
            row, col = position(i, j, first[b, ch, i, j] % taps)
            wide = [v.astype("int64") for v in (b, ch, row, col)]
            return flat_index(*wide, c, h, w, self.storage_order)

        return te.compute((n, c, out_h, out_w), index, name="max_pool2d_indices")


def isnan_np(a: np.ndarray) -> np.ndarray:
    """numpy: where `a` is NaN (nowhere for integers; bfloat16 included)."""
    return np.isnan(a) if is_float_dtype(a.dtype) else np.zeros(a.shape, bool)


@register
@dataclass(frozen=True)
class MaxUnpool2d(Op):
    """ONNX MaxUnpool: an output of zeros [N, C, *output_size] into which each input value is
    written at its index (inputs: x and int64 indices of the same shape, flat indices into the
    whole output, as max_pool2d_indices gives them). `output_size` None: the size the pooling
    geometry gives back, (in - 1) * stride + kernel - padding; a pooling that dropped rows or
    columns names its input's size instead. Where indices repeat, the last value wins.

    `window_indices` records that the indices are those of a max pool of this geometry over a
    tensor of the output's shape (`indices_from_pool`, checked where the node is built): each
    then points into its own window, and lowering gathers each output element from the few
    windows that cover it (an injective kernel every schedule rule handles) instead of
    scattering (one serial loop over the input, left unscheduled)."""

    name = "max_unpool2d"
    arity = (2, 2)
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] | None = None
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    output_size: tuple[int, int] | None = None
    window_indices: bool = False

    def __post_init__(self):
        object.__setattr__(self, "kernel", pair(self.kernel, "kernel"))
        object.__setattr__(self, "stride", pair(self.kernel if self.stride is None else self.stride,
                                                "stride"))
        object.__setattr__(self, "padding", quad(self.padding))
        if self.output_size is not None:
            object.__setattr__(self, "output_size", pair(self.output_size, "output_size"))
        object.__setattr__(self, "window_indices", flag(self.window_indices, "window_indices"))
        expect(min(self.kernel) >= 1 and min(self.stride) >= 1 and min(self.padding) >= 0,
               f"expected positive kernel/stride and non-negative padding, found {self}")

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        if self.output_size is not None:
            return self.output_size
        pt, pl, pb, pr = self.padding
        return ((h - 1) * self.stride[0] + self.kernel[0] - pt - pb,
                (w - 1) * self.stride[1] + self.kernel[1] - pl - pr)

    def infer(self, x, indices):
        expect_rank(x, 4, "input x")
        expect(indices.shape == x.shape and indices.dtype == "int64",
               f"expected int64 indices of x's shape {list(x.shape)}, found {indices}")
        oh, ow = self.out_hw(*x.shape[2:])
        expect(oh > 0 and ow > 0, f"expected a positive output size, found {oh}x{ow} for {x} "
               f"with kernel {self.kernel}, stride {self.stride}, padding {self.padding}")
        return x.with_shape((*x.shape[:2], oh, ow))

    def reference(self, x, indices):
        out_shape = (*x.shape[:2], *self.out_hw(*x.shape[2:]))
        total = int(np.prod(out_shape))
        flat = indices.reshape(-1)
        bad = flat[(flat < 0) | (flat >= total)]
        if bad.size:
            raise InputError(f"index {int(bad[0])} lies outside the output "
                             f"{list(out_shape)} ({total} elements)")
        y = np.zeros(total, x.dtype)
        y[flat] = x.reshape(-1)
        return y.reshape(out_shape)

    def indices_from_pool(self, indices, output_shape) -> bool:
        """Whether the Value `indices` is computed by a max_pool2d_indices of this geometry
        (row-major, undilated) over a tensor of `output_shape`: what `window_indices` records."""
        pool = indices.producer.op if indices.producer is not None else None
        return (isinstance(pool, MaxPool2dIndices) and pool.storage_order == 0
                and pool.dilation == (1, 1)
                and (pool.kernel, pool.stride, pool.padding) == (self.kernel, self.stride,
                                                                 self.padding)
                and tuple(indices.producer.inputs[0].shape) == tuple(output_shape))

    def lower_tvm(self, bb, x, indices):
        R = relax().op
        ty = relax_type(x)
        out_shape = (*ty.shape[:2], *self.out_hw(*ty.shape[2:]))
        if self.window_indices:
            return bb.call_te(self.gather, x, indices, *out_shape[2:],
                              primfunc_name_hint="max_unpool2d")
        total = int(np.prod(out_shape))
        zeros = relax().const(np.zeros(total, ty.dtype), ty.dtype)
        # An index outside the output would write outside it: clamp it out of harm's way.
        flat = R.clip(R.reshape(indices, (ty.numel,)), 0, total - 1)
        y = R.scatter_elements(zeros, flat, R.reshape(x, (ty.numel,)), axis=0)
        return R.reshape(y, out_shape)

    def gather(self, x, indices, out_h: int, out_w: int):
        """TE (window_indices): each output element takes the value of the last window
        covering it whose index names it, else 0; at most ceil(kernel / stride) windows
        per axis cover an element."""
        from tvm import te, tirx
        (kh, kw), (sh, sw) = self.kernel, self.stride
        pt, pl = self.padding[:2]
        n, c, ph, pw = (int(v) for v in x.shape)

        def windows(pos, pad, kernel, stride, pooled):
            """(window, inside) for each window that may cover `pos` along one axis."""
            last = (pos + pad) // stride
            for back in range((kernel + stride - 1) // stride):
                k = last - back
                yield k, tirx.all(k >= 0, k < pooled, k * stride - pad + kernel > pos)

        def element(b, ch, i, j):
            flat = ((b.astype("int64") * c + ch) * out_h + i) * out_w + j
            value = tirx.const(0, x.dtype)
            for wi, inside_i in windows(i, pt, kh, sh, ph):
                for wj, inside_j in windows(j, pl, kw, sw, pw):
                    row = tirx.max(tirx.min(wi, ph - 1), 0)
                    col = tirx.max(tirx.min(wj, pw - 1), 0)
                    hit = tirx.all(inside_i, inside_j, indices[b, ch, row, col] == flat)
                    # if_then_else, not Select: the simplifier drops the clamps of a load in a
                    # Select's true branch, and a Select loads on both sides
                    value = tirx.if_then_else(hit, x[b, ch, row, col], value)
            return value

        return te.compute((n, c, out_h, out_w), element, name="max_unpool2d")


@register
@dataclass(frozen=True)
class AvgPool2d(Pool2d):
    """Average pooling; `count_include_pad` counts the explicit padding (never the ceil-mode
    overhang) in the divisor, as PyTorch and ONNX do. `separable` (a target decision, see the
    CPU pass `separate_pools`; undilated pools only) lowers it as a row sum then a column
    sum (`separable_avg_pool`), as separable max pools are."""

    name = "avg_pool2d"
    count_include_pad: bool = False
    separable: bool = False

    def target_choice(self) -> str:
        return "separable" if self.separable else ""

    def infer(self, x):
        expect_float(x)
        return super().infer(x)

    def reference(self, x):
        oh, ow = self.out_hw(*x.shape[2:])
        acc = accumulator(x.dtype)
        xp, extra_h, extra_w = self.padded(x.astype(acc), 0, oh, ow)
        h, w = x.shape[2:]
        pt, pl, pb, pr = self.padding
        # The divisor is the pooled count of ones over the region that counts.
        ones = np.zeros((1, 1) + xp.shape[2:], acc)
        if self.count_include_pad:
            ones[..., : pt + h + pb, : pl + w + pr] = 1
        else:
            ones[..., pt: pt + h, pl: pl + w] = 1
        total = sum(win for win in self.windows(xp, oh, ow))
        count = sum(win for win in self.windows(ones, oh, ow))
        return (total / count).astype(x.dtype)

    def lower_tvm(self, bb, x):
        if self.separable:
            _, _, h, w = x.ty.shape
            return lower_in_float32(bb, x, lambda x: bb.call_te(
                self.separable_avg_pool, x, *self.out_hw(int(h), int(w)),
                primfunc_name_hint="avg_pool2d"))
        return lower_in_float32(bb, x, lambda x: relax().op.nn.avg_pool2d(
            x, pool_size=self.kernel, strides=self.stride, padding=self.padding,
            dilation=self.dilation, ceil_mode=self.ceil_mode,
            count_include_pad=self.count_include_pad))

    def separable_avg_pool(self, x, out_h: int, out_w: int):
        """TE of an undilated average pool: a row sum (`ROWS_SUM_BLOCK`) and a column sum
        (`COLUMNS_SUM_BLOCK`) with zero padding (`Pool2d.two_passes`), divided by the window's
        count: its rows and columns inside the region that counts (the input, or the input
        with its explicit padding)."""
        from tvm import tirx
        (kh, kw), (sh, sw) = self.kernel, self.stride
        pad_top, pad_left, pad_bottom, pad_right = self.padding
        _, _, h, w = (int(v) for v in x.shape)
        # the counted region in padded coordinates: [low, high) along each axis
        low_h, high_h = (0, pad_top + h + pad_bottom) if self.count_include_pad else \
            (pad_top, pad_top + h)
        low_w, high_w = (0, pad_left + w + pad_right) if self.count_include_pad else \
            (pad_left, pad_left + w)

        def counted(start, size, low, high):
            return tirx.max(tirx.min(start + size, high) - tirx.max(start, low), 1)

        def average(total, oh, ow):
            # times the count's reciprocal (within an ulp of dividing), which folds to a
            # constant where every window counts alike: a vector division per row took a
            # fifth of Inception-v3's 3x3 pools of 768 ch 17x17 (one core, 0.20 ms dividing,
            # 0.15-0.16 multiplying)
            count = counted(oh * sh, kh, low_h, high_h) * counted(ow * sw, kw, low_w, high_w)
            return total * (tirx.const(1, x.dtype) / count.astype(x.dtype))

        return self.two_passes(x, out_h, out_w, tirx.const(0, x.dtype),
                               lambda values: functools.reduce(operator.add, values),
                               (ROWS_SUM_BLOCK, COLUMNS_SUM_BLOCK), average)


@register
@dataclass(frozen=True)
class GlobalAvgPool2d(Op):
    name = "global_avg_pool2d"

    def infer(self, x):
        expect_rank(x, 4, "input x"), expect_float(x)
        return x.with_shape((*x.shape[:2], 1, 1))

    def reference(self, x):
        return x.astype(accumulator(x.dtype)).mean(axis=(2, 3), keepdims=True).astype(x.dtype)

    def lower_tvm(self, bb, x):
        return lower_in_float32(bb, x, lambda x: relax().op.mean(x, axis=[2, 3], keepdims=True))


@register
@dataclass(frozen=True)
class GlobalMaxPool2d(Op):
    name = "global_max_pool2d"

    def infer(self, x):
        expect_rank(x, 4, "input x")
        return x.with_shape((*x.shape[:2], 1, 1))

    def reference(self, x):
        return x.max(axis=(2, 3), keepdims=True)

    def lower_tvm(self, bb, x):
        return bb.call_te(global_max_pool, x, primfunc_name_hint="global_max_pool2d")


def global_max_pool(x):
    """TE: the max over H and W, NaN-propagating (see `nan_max`)."""
    from tvm import te
    n, c, h, w = (int(v) for v in x.shape)
    ry, rx = te.reduce_axis((0, h), "ry"), te.reduce_axis((0, w), "rx")
    reducer = nan_max_reducer()
    return te.compute((n, c, 1, 1), lambda b, ch, i, j: reducer(x[b, ch, ry, rx], axis=[ry, rx]),
                      name="global_max_pool2d")


@register
@dataclass(frozen=True)
class Lrn(Op):
    """Local response normalization across channels (AlexNet; ONNX LRN semantics):
    y = x / (bias + alpha / size * sum of x^2 over `size` neighbouring channels) ** beta."""

    name = "lrn"
    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    bias: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "size", integer(self.size, "size"))
        expect(self.size >= 1, f"expected size >= 1, found {self.size}")
        for field in ("alpha", "beta", "bias"):
            object.__setattr__(self, field, real(getattr(self, field), field))

    def infer(self, x):
        expect_rank(x, 4, "input x"), expect_float(x)
        return x

    def reference(self, x):
        acc = accumulator(x.dtype)
        sq = np.square(x.astype(acc))
        before, after = (self.size - 1) // 2, self.size - 1 - (self.size - 1) // 2
        padded = np.pad(sq, ((0, 0), (before, after), (0, 0), (0, 0)))
        c = x.shape[1]
        window = sum(padded[:, i: i + c] for i in range(self.size))
        scale = (acc(self.bias) + acc(self.alpha) / self.size * window) ** acc(self.beta)
        return (x.astype(acc) / scale).astype(x.dtype)

    def lower_tvm(self, bb, x):
        return lower_in_float32(bb, x, lambda x: self.lower_float(bb, x))

    def lower_float(self, bb, x):
        rx = relax()
        R = rx.op
        dtype = relax_type(x).dtype
        before, after = (self.size - 1) // 2, self.size - 1 - (self.size - 1) // 2
        # Sum of squares over a channel window, as a sum pool over a [N, 1, C, H*W] view.
        n, c, h, w = relax_type(x).shape
        sq = bb.emit(R.reshape(R.multiply(x, x), (n, 1, c, h * w)))
        window = R.nn.avg_pool2d(sq, pool_size=(self.size, 1), strides=(1, 1),
                                 padding=(before, 0, after, 0), count_include_pad=True)
        window = bb.emit(R.reshape(window, (n, c, h, w)))   # mean over size = sum / size
        base = R.add(rx.const(self.bias, dtype), R.multiply(rx.const(self.alpha, dtype), window))
        return R.divide(x, R.power(base, rx.const(self.beta, dtype)))
