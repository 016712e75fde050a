"""Elementwise functions of one tensor: exp, log, sqrt, erf, reciprocal and rounding on floats
(the parts of layer normalization and erf-based GELU as exporters decompose them), abs, neg
and sign on any number."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

from ..ir import is_float_dtype
from .activation import Unary, erf
from .base import accumulator, register, relax, relax_type
from .cast import lower_in_float32, relax_isnan


class FloatFunction(Unary):
    """`function` elementwise on a float tensor, half precision computed in float32 and rounded
    once; out-of-domain inputs give NaN or infinities, as in numpy and ONNX."""

    function: ClassVar[Callable[[np.ndarray], np.ndarray]]
    relax_name: ClassVar[str]

    def reference(self, x):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return type(self).function(x.astype(accumulator(x.dtype))).astype(x.dtype)

    def lower_tvm(self, bb, x):
        return lower_in_float32(bb, x, getattr(relax().op, self.relax_name))


@register
@dataclass(frozen=True)
class Exp(FloatFunction):
    name = "exp"
    function = np.exp
    relax_name = "exp"


@register
@dataclass(frozen=True)
class Log(FloatFunction):
    name = "log"
    function = np.log
    relax_name = "log"


@register
@dataclass(frozen=True)
class Sqrt(FloatFunction):
    name = "sqrt"
    function = np.sqrt
    relax_name = "sqrt"


@register
@dataclass(frozen=True)
class Erf(FloatFunction):
    name = "erf"
    function = erf
    relax_name = "erf"


@register
@dataclass(frozen=True)
class Reciprocal(FloatFunction):
    name = "reciprocal"
    function = np.reciprocal

    def lower_tvm(self, bb, x):
        rx = relax()
        return lower_in_float32(bb, x, lambda v: rx.op.divide(rx.const(1.0,
                                                                       relax_type(v).dtype), v))


class SignedFunction(Unary):
    """`function` elementwise on a float or integer tensor, in its own dtype (integers wrap as
    numpy's do: the negative of int8's -128 is -128)."""

    float_only = False
    function: ClassVar[Callable[[np.ndarray], np.ndarray]]
    relax_name: ClassVar[str]

    def reference(self, x):
        return type(self).function(x).astype(x.dtype)

    def lower_tvm(self, bb, x):
        return getattr(relax().op, self.relax_name)(x)


@register
@dataclass(frozen=True)
class Abs(SignedFunction):
    name = "abs"
    function = np.abs
    relax_name = "abs"


@register
@dataclass(frozen=True)
class Neg(SignedFunction):
    name = "neg"
    function = np.negative
    relax_name = "negative"


@register
@dataclass(frozen=True)
class Sign(SignedFunction):
    """-1, 0 or 1 by the sign (0 for 0, NaN for NaN, as ORT), in the input's dtype (ONNX
    Sign)."""

    name = "sign"
    function = np.sign
    relax_name = "sign"

    def lower_tvm(self, bb, x):
        sign = super().lower_tvm(bb, x)
        if not is_float_dtype(relax_type(x).dtype):
            return sign
        return relax().op.where(relax_isnan(x), x, sign)   # TVM's sign of NaN is 0


@register
@dataclass(frozen=True)
class Floor(FloatFunction):
    name = "floor"
    function = np.floor
    relax_name = "floor"


@register
@dataclass(frozen=True)
class Ceil(FloatFunction):
    name = "ceil"
    function = np.ceil
    relax_name = "ceil"


@register
@dataclass(frozen=True)
class Round(FloatFunction):
    """To the nearest integer, halves to even (ONNX Round, numpy's round)."""

    name = "round"
    function = np.round
    relax_name = "round"
