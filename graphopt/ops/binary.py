"""Binary elementwise arithmetic with numpy (ONNX multidirectional) broadcasting."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import TensorType
from .base import relax_type, Op, expect, expect_same_dtype, register, relax


def broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(a, b))
    except ValueError:
        expect(False, f"expected broadcastable shapes, found {a} and {b}")
        raise  # unreachable


class Binary(Op):
    arity = (2, 2)
    relax_name: str

    def infer(self, a: TensorType, b: TensorType) -> TensorType:
        expect_same_dtype(a, b)
        return TensorType(broadcast_shape(a.shape, b.shape), a.dtype)

    def lower_tvm(self, bb, a, b):
        return getattr(relax().op, self.relax_name)(a, b)


@register
@dataclass(frozen=True)
class Add(Binary):
    name = "add"
    relax_name = "add"

    def reference(self, a, b):
        return np.add(a, b)


@register
@dataclass(frozen=True)
class Sub(Binary):
    name = "sub"
    relax_name = "subtract"

    def reference(self, a, b):
        return np.subtract(a, b)


@register
@dataclass(frozen=True)
class Mul(Binary):
    name = "mul"
    relax_name = "multiply"

    def reference(self, a, b):
        return np.multiply(a, b)


@register
@dataclass(frozen=True)
class Div(Binary):
    """True division for floats; integer division truncates toward zero (ONNX/C semantics)."""

    name = "div"
    relax_name = "divide"

    def reference(self, a, b):
        if np.issubdtype(a.dtype, np.integer):
            return (np.trunc(a.astype(np.float64) / b)).astype(a.dtype)
        return np.divide(a, b)

    def lower_tvm(self, bb, a, b):
        R = relax().op
        if not relax_type(a).dtype.startswith("float"):
            # Relax's integer divide floors; ONNX's truncates.
            q = R.floor_divide(a, b)
            rem = R.subtract(a, R.multiply(q, b))
            fix = R.logical_and(R.not_equal(rem, relax().const(0, relax_type(a).dtype)),
                                R.not_equal(R.less(a, relax().const(0, relax_type(a).dtype)),
                                            R.less(b, relax().const(0, relax_type(b).dtype))))
            return R.add(q, R.astype(fix, relax_type(a).dtype))
        return R.divide(a, b)
