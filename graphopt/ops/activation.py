"""Unary elementwise ops: the identity, activations (relu, clip, the sigmoids and swishes, gelu),
softmax and dropout (identity at inference)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..ir import HALF_DTYPES, TensorType, is_float_dtype
from .base import relax_type, Op, accumulator, expect, expect_float, integer, real, register, relax
from .cast import accumulation_dtype, lower_in_float32


class Unary(Op):
    """An op whose output has its input's type."""

    float_only = True

    def infer(self, x: TensorType) -> TensorType:
        if self.float_only:
            expect_float(x)
        return x


@register
@dataclass(frozen=True)
class Identity(Unary):
    """Returns its input: gives a graph output its own node and name (an input, a constant or a
    value returned twice), and stands for ONNX Identity."""

    name = "identity"
    float_only = False

    def reference(self, x):
        return x

    def lower_tvm(self, bb, x):
        return x


@register
@dataclass(frozen=True)
class Relu(Unary):
    name = "relu"
    float_only = False

    def reference(self, x):
        return np.maximum(x, x.dtype.type(0))

    def lower_tvm(self, bb, x):
        return bb.call_te(clamp, x, 0, None, primfunc_name_hint="relu")


@register
@dataclass(frozen=True)
class Clip(Unary):
    """Clamp to [min, max]; relu6 is clip(0, 6). A bound of None means unbounded."""

    name = "clip"
    float_only = False
    min: float | None = None
    max: float | None = None

    def __post_init__(self):
        for field in ("min", "max"):
            if getattr(self, field) is not None:
                object.__setattr__(self, field, real(getattr(self, field), field, finite=False))

    def infer(self, x):
        expect(self.min is None or self.max is None or self.min <= self.max,
               f"expected min <= max, found min={self.min}, max={self.max}")
        return x

    def reference(self, x):
        lo = -np.inf if self.min is None else self.min
        hi = np.inf if self.max is None else self.max
        return np.clip(x, lo, hi).astype(x.dtype)

    def lower_tvm(self, bb, x):
        return bb.call_te(clamp, x, self.min, self.max, primfunc_name_hint="clip")


def clamp(y, low: float | None, high: float | None):
    """TE: `y` clamped to [low, high] (None: unbounded) as numpy's maximum and clip compute it,
    NaN passing through (relu, clip and their fused-conv epilogues). TIR's max(y, 0) is
    `y > 0 ? y : 0`, which would turn NaN into 0; a bound an integer dtype cannot reach is
    dropped, a fractional one truncated (what numpy's clip then cast gives). Both comparisons
    read the value itself, not the other select: a chain of clips inlined into one kernel
    grows 3x per clip, not 4x."""
    from tvm import te, tirx
    dtype = str(y.dtype)
    if not is_float_dtype(dtype):
        lowest, highest = (0, 1) if dtype == "bool" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
        low = None if low is None or low <= lowest else int(min(low, highest))
        high = None if high is None or high >= highest else int(max(high, lowest))
    low_, high_ = (None if v is None else tirx.const(v, dtype) for v in (low, high))

    def clamped(*index):
        value = y(*index)
        body = value if low_ is None else tirx.Select(value < low_, low_, value)
        return body if high_ is None else tirx.Select(value > high_, high_, body)

    return te.compute(y.shape, clamped, name="clamp")


@register
@dataclass(frozen=True)
class LeakyRelu(Unary):
    name = "leaky_relu"
    alpha: float = 0.01

    def __post_init__(self):
        object.__setattr__(self, "alpha", real(self.alpha, "alpha"))

    def reference(self, x):
        return np.where(x >= 0, x, x * x.dtype.type(self.alpha)).astype(x.dtype)

    def lower_tvm(self, bb, x):
        return relax().op.nn.leakyrelu(x, alpha=self.alpha)


@register
@dataclass(frozen=True)
class Sigmoid(Unary):
    name = "sigmoid"

    def reference(self, x):
        acc = accumulator(x.dtype)
        # Split by sign so exp never overflows.
        xa = x.astype(acc)
        e = np.exp(-np.abs(xa))
        return np.where(xa >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)

    def lower_tvm(self, bb, x):
        if relax_type(x).dtype == "float64":
            return relax().op.sigmoid(x)
        return bb.call_te(te_sigmoid, x, primfunc_name_hint="sigmoid")


@register
@dataclass(frozen=True)
class Tanh(Unary):
    name = "tanh"

    def reference(self, x):
        return np.tanh(x.astype(accumulator(x.dtype))).astype(x.dtype)

    def lower_tvm(self, bb, x):
        if relax_type(x).dtype == "float64":
            return relax().op.tanh(x)
        return bb.call_te(te_tanh, x, primfunc_name_hint="tanh")


@register
@dataclass(frozen=True)
class Softmax(Unary):
    name = "softmax"
    axis: int = -1

    def __post_init__(self):
        object.__setattr__(self, "axis", integer(self.axis, "axis"))

    def infer(self, x):
        expect_float(x)
        expect(-x.ndim <= self.axis < x.ndim, f"expected axis in [{-x.ndim}, {x.ndim}), "
               f"found {self.axis} for {x}")
        return x

    def reference(self, x):
        xa = x.astype(accumulator(x.dtype))
        e = np.exp(xa - xa.max(axis=self.axis, keepdims=True))
        return (e / e.sum(axis=self.axis, keepdims=True)).astype(x.dtype)

    def lower_tvm(self, bb, x):
        return relax().op.nn.softmax(x, axis=self.axis)


@register
@dataclass(frozen=True)
class LogSoftmax(Softmax):
    """log(softmax(x)) along `axis`, as x - max - log(sum(exp(x - max))) (ONNX LogSoftmax)."""

    name = "log_softmax"

    def reference(self, x):
        xa = x.astype(accumulator(x.dtype))
        shifted = xa - xa.max(axis=self.axis, keepdims=True)
        return (shifted - np.log(np.exp(shifted).sum(axis=self.axis, keepdims=True))).astype(
            x.dtype)

    def lower_tvm(self, bb, x):
        return lower_in_float32(bb, x, lambda v: relax().op.nn.log_softmax(v, axis=self.axis))


@register
@dataclass(frozen=True)
class Dropout(Identity):
    """Identity at inference; `ratio` is kept so exports round-trip."""

    name = "dropout"
    ratio: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "ratio", real(self.ratio, "ratio"))

    def infer(self, x):
        expect(0.0 <= self.ratio < 1.0, f"expected ratio in [0, 1), found {self.ratio}")
        return x


def in_float32(te_body, x, name: str):
    """TE: `te_body(value, dtype)` elementwise on `x`, a half-precision `x` computed in float32
    and rounded once (as the reference kernels compute it)."""
    from tvm import te
    dtype = str(x.dtype)
    wide = accumulation_dtype(dtype)
    return te.compute(x.shape, lambda *i: te_body(x[i].astype(wide), wide).astype(dtype),
                      name=name)


def fast_in_float32(fast, exact, x):
    """TE: `fast(x)`, a float32 approximation TOPI vectorizes, instead of a scalar libm call
    per element (LeNet-5 spent a third of its CPU time in libm's expf; bfloat16 LeNet-5's
    first linear layer, 120 tanh outputs, 6.7 us against 3.6 in float32); a half-precision `x`
    widened and the result rounded once, as the reference computes it in float32; `exact(x)`
    for float64."""
    from tvm import topi
    dtype = str(x.dtype)
    if dtype == "float32":
        return fast(x)
    if dtype in HALF_DTYPES:
        return topi.cast(fast(topi.cast(x, "float32")), dtype)
    return exact(x)


def te_tanh(x):
    """TE: tanh(x), by TOPI's rational approximation in float32 (max relative error 3.5e-7
    over [-12, 12], about 3 ulp)."""
    from tvm import topi
    return fast_in_float32(topi.fast_tanh, topi.tanh, x)


def te_sigmoid(x):
    """TE: 1 / (1 + exp(-x)), in float32 with TOPI's exp (a polynomial, within 2 ulp over
    float32's range)."""
    from tvm import te, tirx, topi

    def sigmoid(y):
        e = topi.fast_exp(te.compute(y.shape, lambda *i: -y(*i), name="negate"))
        one = tirx.const(1, "float32")
        return te.compute(y.shape, lambda *i: one / (one + e(*i)), name="sigmoid")

    return fast_in_float32(sigmoid, topi.sigmoid, x)


def te_hard_sigmoid(value, dtype: str, alpha: float, beta: float):
    """TIR: clamp(alpha * value + beta, 0, 1) in `dtype`, NaN passing through (as numpy's
    clip)."""
    from tvm import tirx
    y = value * tirx.const(alpha, dtype) + tirx.const(beta, dtype)
    zero, one = tirx.const(0, dtype), tirx.const(1, dtype)
    return tirx.Select(y > one, one, tirx.Select(y < zero, zero, y))


def hard_sigmoid_reference(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    acc = accumulator(x.dtype)
    xa = x.astype(acc)
    return np.clip(xa * acc(alpha) + acc(beta), acc(0), acc(1))


@register
@dataclass(frozen=True)
class HardSigmoid(Unary):
    """max(0, min(1, alpha * x + beta)) (ONNX HardSigmoid; torch's Hardsigmoid is alpha 1/6)."""

    name = "hard_sigmoid"
    alpha: float = 0.2
    beta: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "alpha", real(self.alpha, "alpha"))
        object.__setattr__(self, "beta", real(self.beta, "beta"))

    def reference(self, x):
        return hard_sigmoid_reference(x, self.alpha, self.beta).astype(x.dtype)

    def lower_tvm(self, bb, x):
        body = lambda v, dtype: te_hard_sigmoid(v, dtype, self.alpha, self.beta)  # noqa: E731
        return bb.call_te(lambda t: in_float32(body, t, "hard_sigmoid"), x,
                          primfunc_name_hint="hard_sigmoid")


# HardSwish's fixed coefficients: ONNX defines it as x * HardSigmoid(x, alpha, beta), alpha the
# float32 nearest 1/6 (its attributes are float32), which is also what ONNX Runtime multiplies by.
HARD_SWISH_ALPHA, HARD_SWISH_BETA = float(np.float32(1 / 6)), 0.5


@register
@dataclass(frozen=True)
class HardSwish(Unary):
    """x * max(0, min(1, x / 6 + 1 / 2)) (ONNX HardSwish, MobileNetV3's activation)."""

    name = "hard_swish"

    def reference(self, x):
        gate = hard_sigmoid_reference(x, HARD_SWISH_ALPHA, HARD_SWISH_BETA)
        return (x.astype(gate.dtype) * gate).astype(x.dtype)

    def lower_tvm(self, bb, x):
        def body(v, dtype):
            return v * te_hard_sigmoid(v, dtype, HARD_SWISH_ALPHA, HARD_SWISH_BETA)

        return bb.call_te(lambda t: in_float32(body, t, "hard_swish"), x,
                          primfunc_name_hint="hard_swish")


GELU_APPROXIMATIONS = ("none", "tanh")


@register
@dataclass(frozen=True)
class Gelu(Unary):
    """x * Phi(x), Phi the standard normal CDF (ONNX Gelu, opset 20): exactly with erf
    (`approximate="none"`) or by the tanh formula (`"tanh"`)."""

    name = "gelu"
    approximate: str = "none"

    def __post_init__(self):
        expect(self.approximate in GELU_APPROXIMATIONS, f"expected approximate as one of "
               f"{', '.join(GELU_APPROXIMATIONS)}, found {self.approximate!r}")

    def reference(self, x):
        acc = accumulator(x.dtype)
        xa = x.astype(acc)
        if self.approximate == "tanh":
            inner = acc(math.sqrt(2 / math.pi)) * (xa + acc(0.044715) * xa ** 3)
            return (acc(0.5) * xa * (1 + np.tanh(inner))).astype(x.dtype)
        return (acc(0.5) * xa * (1 + erf(xa * acc(1 / math.sqrt(2))))).astype(x.dtype)

    def lower_tvm(self, bb, x):
        nn = relax().op.nn
        lower = nn.gelu_tanh if self.approximate == "tanh" else nn.gelu
        return lower_in_float32(bb, x, lower)


# numpy has no erf: math.erf elementwise (correctly rounded in float64), then rounded to the
# input's dtype; a polynomial of our own would be one more thing to get wrong.
_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function elementwise, in x's (float) dtype."""
    return _erf(x.astype(np.float64)).astype(np.float64).astype(x.dtype)


# ---- activations ONNX defines by formula (ELU, SELU, CELU, softplus, softsign, mish, ...)
class FormulaActivation(Unary):
    """An activation written once as `formula(x, m)`, where `m` holds the functions it uses: in
    numpy for the reference kernel (`NumpyMath`), as TIR for the lowering (`TirMath`); half
    precision is computed in float32 and rounded once. A NaN input gives NaN (the formulas
    avoid min and max, which TIR writes as comparisons that would drop it)."""

    def formula(self, x, m):
        raise NotImplementedError

    def reference(self, x):
        acc = accumulator(x.dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            return self.formula(x.astype(acc), NumpyMath(acc)).astype(x.dtype)

    def lower_tvm(self, bb, x):
        return bb.call_te(lambda t: in_float32(lambda v, dtype: self.formula(v, TirMath(dtype)),
                                               t, self.name), x, primfunc_name_hint=self.name)


class NumpyMath:
    """The functions the formulas use, in numpy (`dtype`: the accumulation dtype)."""

    def __init__(self, dtype):
        self.dtype = dtype

    def const(self, value): return self.dtype(value)
    def exp(self, x): return np.exp(x)
    def log(self, x): return np.log(x)
    def abs(self, x): return np.abs(x)
    def where(self, condition, a, b): return np.where(condition, a, b)


class TirMath:
    """The same functions as TIR expressions on one element of dtype `dtype`."""

    def __init__(self, dtype: str):
        self.dtype = dtype

    def const(self, value):
        from tvm import tirx
        return tirx.const(value, self.dtype)

    def exp(self, x):
        from tvm import tirx
        return tirx.exp(x)

    def log(self, x):
        from tvm import tirx
        return tirx.log(x)

    def abs(self, x):
        from tvm import tirx
        return tirx.Select(x < self.const(0), -x, x)

    def where(self, condition, a, b):
        from tvm import tirx
        return tirx.Select(condition, a, b)


def softplus(x, m):
    """log(1 + e^x) as max(x, 0) + log(1 + e^-|x|): no overflow for large x (ORT's form)."""
    zero, one = m.const(0), m.const(1)
    return m.where(x > zero, x, zero) + m.log(one + m.exp(-m.abs(x)))


@register
@dataclass(frozen=True)
class Elu(FormulaActivation):
    """x for x >= 0, alpha * (e^x - 1) below (ONNX Elu)."""

    name = "elu"
    alpha: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "alpha", real(self.alpha, "alpha"))

    def formula(self, x, m):
        return m.where(x >= m.const(0), x, m.const(self.alpha) * (m.exp(x) - m.const(1)))


# ONNX Selu's defaults (float32 values of Klambauer et al.'s constants)
SELU_ALPHA, SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875


@register
@dataclass(frozen=True)
class Selu(FormulaActivation):
    """gamma * x for x > 0, gamma * alpha * (e^x - 1) otherwise (ONNX Selu)."""

    name = "selu"
    alpha: float = SELU_ALPHA
    gamma: float = SELU_GAMMA

    def __post_init__(self):
        object.__setattr__(self, "alpha", real(self.alpha, "alpha"))
        object.__setattr__(self, "gamma", real(self.gamma, "gamma"))

    def formula(self, x, m):
        below = m.const(self.alpha) * m.exp(x) - m.const(self.alpha)
        return m.const(self.gamma) * m.where(x > m.const(0), x, below)


@register
@dataclass(frozen=True)
class Celu(FormulaActivation):
    """x for x > 0, alpha * (e^(x / alpha) - 1) otherwise (ONNX Celu)."""

    name = "celu"
    alpha: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "alpha", real(self.alpha, "alpha"))
        expect(self.alpha != 0, "expected a nonzero alpha")

    def formula(self, x, m):
        alpha = m.const(self.alpha)
        return m.where(x > m.const(0), x, alpha * (m.exp(x / alpha) - m.const(1)))


@register
@dataclass(frozen=True)
class Softplus(FormulaActivation):
    """log(1 + e^x) (ONNX Softplus)."""

    name = "softplus"

    def formula(self, x, m):
        return softplus(x, m)


@register
@dataclass(frozen=True)
class Softsign(FormulaActivation):
    """x / (1 + |x|) (ONNX Softsign)."""

    name = "softsign"

    def formula(self, x, m):
        return x / (m.const(1) + m.abs(x))


MISH_LINEAR_FROM = 20.0


@register
@dataclass(frozen=True)
class Mish(FormulaActivation):
    """x * tanh(softplus(x)) (ONNX Mish, opset 18; YOLOv4's activation)."""

    name = "mish"

    def formula(self, x, m):
        """tanh(softplus(x)) as n (n + 2) / (n (n + 2) + 2), n = e^x: tanh of a small softplus
        lost most of its digits to cancellation in TIR's tanh (relative error 1e-3 at x = -8).
        From x = 20 on the ratio is 1 in float32 and float64, so mish is x there (and e^x is
        never taken of a larger x, which would overflow)."""
        limit = m.const(MISH_LINEAR_FROM)
        n = m.exp(m.where(x > limit, limit, x))
        p = n * (n + m.const(2))
        return m.where(x > limit, x, x * p / (p + m.const(2)))


@register
@dataclass(frozen=True)
class ThresholdedRelu(FormulaActivation):
    """x for x > alpha, else 0 (ONNX ThresholdedRelu)."""

    name = "thresholded_relu"
    alpha: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "alpha", real(self.alpha, "alpha"))

    def formula(self, x, m):
        return m.where(x > m.const(self.alpha), x, m.const(0))
