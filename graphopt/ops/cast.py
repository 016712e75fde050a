"""Conversion of a tensor to another dtype (ONNX Cast): between float dtypes it rounds to the
nearest representable value, ties to even (overflow gives an infinity); float to integer
truncates toward zero (NaN, infinities and values out of the integer's range are undefined, as
in ONNX); to bool it tests `x != 0` (NaN is True); integers narrow by wrapping around."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import DTYPES, HALF_DTYPES, TensorType, is_float_dtype
from .base import Op, expect, register, relax, relax_type


@register
@dataclass(frozen=True)
class Cast(Op):
    name = "cast"
    to: str = "float32"

    def __post_init__(self):
        expect(isinstance(self.to, str) and self.to in DTYPES,
               f"expected to as one of {', '.join(DTYPES)}, found {self.to!r}")

    def infer(self, x: TensorType) -> TensorType:
        return x.with_dtype(self.to)

    def reference(self, x):
        if self.to == "bool":
            return x != 0
        return x.astype(self.to)

    def lower_tvm(self, bb, x):
        rx = relax()
        if self.to == "bool" and is_float_dtype(x.ty.dtype):
            # LLVM's float -> bool conversion and TIR's x != 0 are ordered compares, which
            # make NaN False (and TVM simplifies not(x == 0) back to x != 0).
            return bb.call_te(_nonzero, x, primfunc_name_hint="cast")
        return rx.op.astype(x, self.to)


def _nonzero(x):
    """TE: x != 0 with NaN True (numpy's and ONNX's float -> bool)."""
    from tvm import te, tirx
    zero = tirx.const(0, x.dtype)
    return te.compute(x.shape, lambda *i: tirx.any(isnan(x(*i)), x(*i) != zero),
                      name="nonzero")


def isnan(value):
    """TIR: whether a float `value` is NaN, for every float dtype (TVM's isnan refuses
    bfloat16, whose NaNs stay NaNs in float32)."""
    from tvm import tirx
    dtype = value.dtype if hasattr(value, "dtype") else value.ty   # a TensorSlice or a PrimExpr
    return tirx.isnan(value.astype("float32") if str(dtype) == "bfloat16" else value)


def relax_isnan(x):
    """Relax: `isnan` of a float tensor of any dtype (a bfloat16 one widened first, which keeps
    its NaNs)."""
    R = relax().op
    return R.isnan(R.astype(x, "float32") if relax_type(x).dtype == "bfloat16" else x)


def accumulation_dtype(dtype) -> str:
    """The dtype a TVM kernel of float `dtype` accumulates in before rounding its result:
    float32 for half precision, as the reference kernels do (`base.accumulator`), else `dtype`."""
    return "float32" if str(dtype) in HALF_DTYPES else str(dtype)


def widened(value, dtype: str):
    """TE/TIR: `value` as `dtype` (a half-precision element read into a float32 kernel), or
    `value` itself where it has that dtype already."""
    return value if str(value.dtype) == str(dtype) else value.astype(dtype)


def lower_in_float32(bb, x, lower):
    """Relax: `lower(x)` computed in float32 when `x` is half precision and rounded back once
    (a reduction or a normalization, as the reference kernels compute them), else as is."""
    dtype = relax_type(x).dtype
    if dtype not in HALF_DTYPES:
        return lower(x)
    R = relax().op
    return R.astype(bb.emit(lower(bb.emit(R.astype(x, "float32")))), dtype)
