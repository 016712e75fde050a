"""The index of the largest or smallest entry along an axis (ONNX ArgMax / ArgMin), as int64:
greedy decoding's word choice."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..ir import TensorType
from .base import Op, expect, flag, integer, register, relax, relax_type
from .shape import normalize_axis


@dataclass(frozen=True)
class ArgReduce(Op):
    """Ties go to the first index, or the last with `select_last_index`; the reduced axis stays
    as size 1 with `keepdims`. Inputs: a numeric tensor with a non-empty axis."""

    largest: ClassVar[bool]
    axis: int = 0
    keepdims: bool = True
    select_last_index: bool = False

    def __post_init__(self):
        object.__setattr__(self, "axis", integer(self.axis, "axis"))
        object.__setattr__(self, "keepdims", flag(self.keepdims, "keepdims"))
        object.__setattr__(self, "select_last_index",
                           flag(self.select_last_index, "select_last_index"))

    def infer(self, x: TensorType) -> TensorType:
        expect(x.dtype != "bool", f"expected a numeric input, found {x}")
        expect(-x.ndim <= self.axis < x.ndim, f"expected axis in [{-x.ndim}, {x.ndim}), found "
               f"{self.axis} for {x}")
        axis = normalize_axis(self.axis, x.ndim)
        expect(x.shape[axis] > 0, f"expected a non-empty axis {axis}, found {x}")
        shape = list(x.shape)
        if self.keepdims:
            shape[axis] = 1
        else:
            del shape[axis]
        return TensorType(tuple(shape), "int64")

    def reference(self, x):
        axis = normalize_axis(self.axis, x.ndim)
        pick = np.argmax if self.largest else np.argmin
        if self.select_last_index:
            index = x.shape[axis] - 1 - pick(np.flip(x, axis), axis=axis)
        else:
            index = pick(x, axis=axis)
        index = index.astype(np.int64)
        return np.expand_dims(index, axis) if self.keepdims else index

    def lower_tvm(self, bb, x):
        R = relax().op
        axis = normalize_axis(self.axis, relax_type(x).ndim)
        pick = R.argmax if self.largest else R.argmin
        if not self.select_last_index:
            return pick(x, axis, self.keepdims)
        # the first index in the reversed axis is the last one in the original
        last = relax().const(relax_type(x).shape[axis] - 1, "int64")
        return R.subtract(last, bb.emit(pick(bb.emit(R.flip(x, axis)), axis, self.keepdims)))


@register
@dataclass(frozen=True)
class ArgMax(ArgReduce):
    name = "argmax"
    largest = True


@register
@dataclass(frozen=True)
class ArgMin(ArgReduce):
    name = "argmin"
    largest = False
