"""Running sums along an axis (ONNX CumSum): position-encoding offsets, counting and cumulative
masks in exported models."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import TensorType
from .base import Op, accumulator, expect, flag, integer, register, relax_type
from .cast import lower_in_float32
from .shape import normalize_axis


@register
@dataclass(frozen=True)
class CumSum(Op):
    """The sum of each entry and those before it along `axis`; `exclusive` leaves the entry
    itself out (the first sum is 0), `reverse` sums from the end. Float inputs of half
    precision sum in float32 and round once; integers wrap as numpy's do. Inputs: a numeric
    tensor."""

    name = "cumsum"
    axis: int = 0
    exclusive: bool = False
    reverse: bool = False

    def __post_init__(self):
        object.__setattr__(self, "axis", integer(self.axis, "axis"))
        object.__setattr__(self, "exclusive", flag(self.exclusive, "exclusive"))
        object.__setattr__(self, "reverse", flag(self.reverse, "reverse"))

    def infer(self, x: TensorType) -> TensorType:
        expect(x.dtype != "bool", f"expected a numeric input, found {x}")
        expect(x.ndim > 0, f"expected an input of rank 1 or more, found {x}")
        expect(-x.ndim <= self.axis < x.ndim, f"expected axis in [{-x.ndim}, {x.ndim}), found "
               f"{self.axis} for {x}")
        return x

    def reference(self, x):
        axis = normalize_axis(self.axis, x.ndim)
        wide = x.astype(accumulator(x.dtype)) if x.dtype.kind == "f" else x
        if self.reverse:
            wide = np.flip(wide, axis)
        sums = np.cumsum(wide, axis=axis, dtype=wide.dtype)
        if self.exclusive:          # shift one step along the axis, a zero first
            later, earlier = [slice(None)] * x.ndim, [slice(None)] * x.ndim
            later[axis], earlier[axis] = slice(1, None), slice(None, -1)
            shifted = np.zeros_like(sums)
            shifted[tuple(later)] = sums[tuple(earlier)]
            sums = shifted
        if self.reverse:
            sums = np.flip(sums, axis)
        return np.ascontiguousarray(sums.astype(x.dtype))

    def lower_tvm(self, bb, x):
        axis = normalize_axis(self.axis, relax_type(x).ndim)
        return lower_in_float32(bb, x, lambda v: bb.call_te(
            running_sum, v, axis, self.exclusive, self.reverse, primfunc_name_hint="cumsum"))


# Columns (the entries after the axis) one parallel task sums together.
CHUNK = 1024


def running_sum(x, axis: int, exclusive: bool, reverse: bool):
    """TE: the running sum of `x` along `axis`, as loops written out (a scan has no block form
    for the schedule rules): parallel over the entries before the axis and chunks of those after
    it, each step along the axis adding a contiguous row of them to the previous step's, which
    LLVM vectorizes. TOPI's cumsum walks each column along the axis alone, a scalar add per
    entry with a stride between (a 64-channel 56x56 map summed over channels: 4x ORT's time)."""
    import math
    from tvm import te, tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T
    shape = [int(d) for d in x.shape]
    if not math.prod(shape):       # an empty tensor (the loops' flat indices divide by 0)
        return te.compute(shape, lambda *i: tirx.const(0, str(x.dtype)), name="cumsum")
    before, n, after = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])
    chunk = min(after, CHUNK)
    chunks = -(-after // chunk)

    def loops(ins, outs):
        with IRBuilder() as builder:
            data, out = T.buffer_proxy(ins[0]), T.buffer_proxy(outs[0])
            with T.parallel(0, before * chunks) as task:
                base = task // chunks * n * after + task % chunks * chunk
                width = tirx.min(chunk, after - task % chunks * chunk)
                first = base + (n - 1) * after if reverse else base
                with T.serial(0, width) as j:
                    out[first + j] = tirx.const(0, str(x.dtype)) if exclusive else data[first + j]
                with T.serial(1, n) as step:
                    at = base + ((n - 1 - step) if reverse else step) * after
                    previous = at + after if reverse else at - after
                    with T.serial(0, width) as j:
                        out[at + j] = out[previous + j] + data[(previous if exclusive else at) + j]
        return builder.get()
    return te.extern([shape], [x], loops, dtype=str(x.dtype), name="cumsum")
