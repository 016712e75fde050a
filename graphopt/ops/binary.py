"""Elementwise ops of several inputs with numpy (ONNX multidirectional) broadcasting: arithmetic,
power, maximum and minimum, PReLU, logical and / or / xor / not, and where."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import LoweringError
from ..ir import HALF_DTYPES, TensorType, is_float_dtype
from .base import (Op, accumulator, expect, expect_float, expect_same_dtype, register, relax,
                   relax_type)
from .cast import lower_in_float32, relax_isnan


def broadcast_shape(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        expect(False, f"expected broadcastable shapes, found {' and '.join(map(str, shapes))}")
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
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.divide(a, b)

    def lower_tvm(self, bb, a, b):
        """A float divided by a scalar constant zero (torch's unbiased variance of one value,
        n / (n - 1)) is a product with 1 / 0 = +-inf, the same IEEE result: TVM folds a scalar
        constant into the kernel and refuses to divide by a zero there."""
        import tvm
        rx = relax()
        if isinstance(b, tvm.ir.Constant) and not relax_type(b).shape:
            value = b.value.numpy()
            if value == 0:
                if not is_float_dtype(relax_type(a).dtype):
                    raise LoweringError("integer division by a constant zero (undefined in ONNX)")
                with np.errstate(divide="ignore"):
                    return rx.op.multiply(a, rx.const(np.reciprocal(value), relax_type(b).dtype))
        return super().lower_tvm(bb, a, b)


@register
@dataclass(frozen=True)
class Pow(Binary):
    """a ** b for floats (ONNX Pow; a negative base with a fractional exponent gives NaN)."""

    name = "pow"

    def infer(self, a: TensorType, b: TensorType) -> TensorType:
        expect_float(a, "base")
        return super().infer(a, b)

    def reference(self, a, b):
        acc = accumulator(a.dtype)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.power(a.astype(acc), b.astype(acc)).astype(a.dtype)

    def lower_tvm(self, bb, a, b):
        R = relax().op
        if relax_type(a).dtype not in HALF_DTYPES:
            return R.power(a, b)
        return lower_in_float32(bb, a, lambda wide: R.power(wide, R.astype(b, "float32")))


class Extremum(Binary):
    """The larger (or smaller) of two tensors elementwise, NaN where either is NaN (numpy's
    maximum and minimum; ONNX Max and Min of two inputs). TIR's max and min are comparisons,
    which would drop a NaN in one of them: a NaN is put back by adding the two."""

    def lower_tvm(self, bb, a, b):
        R = relax().op
        value = getattr(R, self.relax_name)(a, b)
        if not is_float_dtype(relax_type(a).dtype):
            return value
        return R.where(R.logical_or(relax_isnan(a), relax_isnan(b)), R.add(a, b), value)


@register
@dataclass(frozen=True)
class Maximum(Extremum):
    name = "maximum"
    relax_name = "maximum"

    def reference(self, a, b):
        return np.maximum(a, b)


@register
@dataclass(frozen=True)
class Minimum(Extremum):
    name = "minimum"
    relax_name = "minimum"

    def reference(self, a, b):
        return np.minimum(a, b)


# operation -> (numpy function, Relax op name, ONNX op type)
LOGICAL = {"and": (np.logical_and, "logical_and", "And"), "or": (np.logical_or, "logical_or", "Or"),
           "xor": (np.logical_xor, "logical_xor", "Xor")}


@register
@dataclass(frozen=True)
class Logical(Op):
    """a <operation> b elementwise on bool tensors (ONNX And, Or, Xor)."""

    name = "logical"
    arity = (2, 2)
    operation: str = "and"

    def __post_init__(self):
        expect(self.operation in LOGICAL, f"expected operation as one of "
               f"{', '.join(LOGICAL)}, found {self.operation!r}")

    def infer(self, a: TensorType, b: TensorType) -> TensorType:
        expect(a.dtype == "bool" and b.dtype == "bool", f"expected bool operands, found {a} "
               f"and {b}")
        return TensorType(broadcast_shape(a.shape, b.shape), "bool")

    def reference(self, a, b):
        return LOGICAL[self.operation][0](a, b)

    def lower_tvm(self, bb, a, b):
        return getattr(relax().op, LOGICAL[self.operation][1])(a, b)


@register
@dataclass(frozen=True)
class Not(Op):
    """The negation of a bool tensor (ONNX Not)."""

    name = "not"
    arity = (1, 1)

    def infer(self, x: TensorType) -> TensorType:
        expect(x.dtype == "bool", f"expected a bool tensor, found {x}")
        return x

    def reference(self, x):
        return np.logical_not(x)

    def lower_tvm(self, bb, x):
        # x xor true: TVM's simplifier rewrites logical_not(a > b) as a <= b, which is False
        # where a is NaN (numpy's and ORT's not(NaN > 0) is True)
        return relax().op.bitwise_xor(x, relax().const(True, "bool"))


@register
@dataclass(frozen=True)
class PRelu(Op):
    """x for x >= 0, slope * x below (ONNX PRelu), the learned slope broadcast to x (torch's
    nn.PReLU: one per channel, shape [C, 1, 1] for NCHW, or one for the whole tensor)."""

    name = "prelu"
    arity = (2, 2)

    def infer(self, x: TensorType, slope: TensorType) -> TensorType:
        expect_float(x)
        expect_same_dtype(x, slope)
        expect(broadcast_shape(x.shape, slope.shape) == tuple(x.shape),
               f"expected a slope that broadcasts to {x}, found {slope}")
        return x

    def reference(self, x, slope):
        acc = accumulator(x.dtype)
        return np.where(x >= 0, x, x.astype(acc) * slope.astype(acc)).astype(x.dtype)

    def lower_tvm(self, bb, x, slope):
        R, rx = relax().op, relax()
        dtype = relax_type(x).dtype
        return R.where(R.greater_equal(x, rx.const(0, dtype)), x, R.multiply(x, slope))


@register
@dataclass(frozen=True)
class Where(Op):
    """x where the bool condition holds, else y (ONNX Where), all three broadcast together."""

    name = "where"
    arity = (3, 3)

    def infer(self, condition: TensorType, x: TensorType, y: TensorType) -> TensorType:
        expect(condition.dtype == "bool", f"expected a bool condition, found {condition}")
        expect_same_dtype(x, y)
        return TensorType(broadcast_shape(condition.shape, x.shape, y.shape), x.dtype)

    def reference(self, condition, x, y):
        return np.where(condition, x, y)

    def lower_tvm(self, bb, condition, x, y):
        return relax().op.where(condition, x, y)


# relation -> (numpy function, Relax op name, ONNX op type)
RELATIONS = {"greater": (np.greater, "greater", "Greater"), "less": (np.less, "less", "Less"),
             "equal": (np.equal, "equal", "Equal"),
             "greater_equal": (np.greater_equal, "greater_equal", "GreaterOrEqual"),
             "less_equal": (np.less_equal, "less_equal", "LessOrEqual")}


@register
@dataclass(frozen=True)
class Compare(Op):
    """a <relation> b elementwise, a bool tensor (ONNX Greater, Less, Equal, GreaterOrEqual,
    LessOrEqual); any comparison with NaN is False."""

    name = "compare"
    arity = (2, 2)
    relation: str = "greater"

    def __post_init__(self):
        expect(self.relation in RELATIONS, f"expected relation as one of "
               f"{', '.join(RELATIONS)}, found {self.relation!r}")

    def infer(self, a: TensorType, b: TensorType) -> TensorType:
        expect_same_dtype(a, b)
        return TensorType(broadcast_shape(a.shape, b.shape), "bool")

    def reference(self, a, b):
        with np.errstate(invalid="ignore"):
            return RELATIONS[self.relation][0](a, b)

    def lower_tvm(self, bb, a, b):
        return getattr(relax().op, RELATIONS[self.relation][1])(a, b)
