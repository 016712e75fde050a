"""Binary elementwise arithmetic with numpy (ONNX multidirectional) broadcasting."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import TensorType
from .base import Op, expect, expect_same_dtype, register, relax


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
    relax_name = "divide"   # on integers it is TIR's Div, which truncates toward zero too

    def reference(self, a, b):
        if np.issubdtype(a.dtype, np.integer):   # exact, unlike a round trip through float64
            return (np.abs(a) // np.abs(b) * np.sign(a) * np.sign(b)).astype(a.dtype)
        return np.divide(a, b)
