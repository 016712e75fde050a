"""Running sums along an axis (ONNX CumSum): position-encoding offsets, counting and cumulative
masks in exported models."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import TensorType
from .base import Op, accumulator, expect, flag, integer, register, relax, relax_type
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
            sums = np.concatenate([np.zeros_like(np.take(sums, [0], axis)),
                                   np.delete(sums, -1, axis)], axis)
        if self.reverse:
            sums = np.flip(sums, axis)
        return np.ascontiguousarray(sums.astype(x.dtype))

    def lower_tvm(self, bb, x):
        R = relax().op
        axis = normalize_axis(self.axis, relax_type(x).ndim)

        def running_sum(v):
            if self.reverse:
                v = bb.emit(R.flip(v, axis))
            sums = R.cumsum(v, axis, exclusive=self.exclusive)
            return R.flip(bb.emit(sums), axis) if self.reverse else sums
        return lower_in_float32(bb, x, running_sum)
