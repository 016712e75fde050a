"""What every op is: a frozen dataclass of typed attributes with its shape/dtype rule, its numpy
reference kernel and its TVM Relax lowering side by side, registered once by name."""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from ..errors import ShapeError, UnsupportedOpError
from ..ir import TensorType, dimension

# TVM's operator-pattern code for a kernel FuseOps must leave alone (kOpaque): graphopt decided
# what the kernel computes (its fusion pass, or the op's own lowering), and TVM does not
# re-fuse around it.
OPAQUE = 8
# ... and for a kernel whose elementwise consumers TVM fuses into it as an epilogue, but which
# takes no producer (kOutEWiseFusable): a reduction behind a copy stage of its own, which
# TVM's own analysis would class as a reduction that takes its producers instead.
OUT_ELEMWISE_FUSABLE = 4


OPS: dict[str, type["Op"]] = {}


def register(cls: type["Op"]) -> type["Op"]:
    """Class decorator: add an op to the registry under `cls.name`."""
    if cls.name in OPS:
        raise ValueError(f"op '{cls.name}' registered twice")
    OPS[cls.name] = cls
    return cls


def get_op(name: str) -> type["Op"]:
    try:
        return OPS[name]
    except KeyError:
        raise UnsupportedOpError(f"no op named '{name}'; known ops: {', '.join(sorted(OPS))}",
                                 op=name) from None


def conv_out_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int,
                  dilation: int) -> int:
    """Output size of a convolution or pooling window along one spatial axis."""
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def expect(condition: bool, message: str) -> None:
    """Raise a ShapeError with `message` unless `condition` holds (the node is added by the caller)."""
    if not condition:
        raise ShapeError(message)


@dataclass(frozen=True)
class Op:
    """Base of all ops. Subclasses set `name` and `arity` and implement the four parts."""

    name: ClassVar[str]
    arity: ClassVar[tuple[int, int]] = (1, 1)          # (min, max) number of inputs
    buffer_inputs: ClassVar[tuple[int, ...]] = ()       # constant inputs that are not parameters

    # ---- the four parts ---------------------------------------------------------------------------
    def infer(self, *inputs: TensorType) -> TensorType | tuple[TensorType, ...]:
        """Output type(s) from input types; raises ShapeError with expected vs found."""
        raise NotImplementedError

    def reference(self, *arrays: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        """The numpy kernel: computes in the inputs' dtype (float64 when asked for precision)."""
        raise NotImplementedError

    def lower_tvm(self, bb, *args) -> Any:
        """A Relax expression computing the op from Relax expressions of the inputs."""
        raise NotImplementedError

    def macs(self, inputs: Sequence[TensorType], outputs: Sequence[TensorType]) -> int:
        """Multiply-accumulates, for summaries and GFLOP/s figures (0 for cheap ops)."""
        return 0

    def target_choice(self) -> str:
        """How a target pass decided to compute this op ("" when nothing was decided), for
        `graphopt show --target` and the reports."""
        return ""

    # ---- helpers used by the IR and the interpreter -----------------------------------------------
    def output_types(self, *inputs: TensorType) -> list[TensorType]:
        low, high = self.arity
        if not low <= len(inputs) <= high:
            count = f"{low}" if low == high else f"{low} to {high}" if high < 1 << 30 else f"{low}+"
            raise ShapeError(f"expected {count} inputs, found {len(inputs)}")
        out = self.infer(*inputs)
        return list(out) if isinstance(out, tuple) else [out]

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        out = self.reference(*arrays)
        return list(out) if isinstance(out, tuple) else [out]

    def attrs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __str__(self) -> str:
        changed = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                   if getattr(self, f.name) != f.default]
        return f"{self.name}({', '.join(changed)})" if changed else self.name


VARIADIC = 1 << 30


def relax():
    """The `tvm.relax` module, imported on first lowering so graphopt imports without TVM."""
    from tvm import relax as _relax
    return _relax


def relax_constant(array: np.ndarray, dtype: str | None = None):
    """A Relax constant of `array` as `dtype` (None: its own), copied once, into TVM's memory.
    `relax.const(array, dtype)` converts with `astype` first, a second copy of every weight
    (VGG-16's compile spent 0.3 s on them), and without a dtype narrows int64 to int32."""
    import ml_dtypes  # noqa: F401  (numpy's bfloat16)
    import tvm
    data = np.asarray(array, dtype=dtype or array.dtype)     # no copy if it already is
    if not data.flags.c_contiguous:         # (np.ascontiguousarray makes a scalar 1-d)
        data = data.copy(order="C")
    return relax().const(tvm.runtime.tensor(data))


def constant_operand(expr, decision: str) -> np.ndarray:
    """The numpy value of a Relax constant operand that a target decision (`decision`, e.g.
    "winograd convolution") repacks at lowering; a computed operand is refused."""
    import tvm
    expect(isinstance(expr, tvm.ir.Constant), f"{decision} needs a constant weight, found a "
           "computed one")
    return expr.value.numpy()


def relax_type(expr) -> TensorType:
    """Our TensorType of a (statically shaped) Relax expression."""
    ty = expr.ty
    return TensorType(tuple(int(d) for d in ty.shape), str(ty.dtype))


# ---- attribute checks shared by op families (each op validates its attributes once, in its
# __post_init__, so the DSL, the ONNX importer and hand-built graphs get the same error) ---------
def integer(value, what: str) -> int:
    """An integer attribute as a Python int; a float (1.5), a bool or a string is refused."""
    return dimension(value, what)


def real(value, what: str, finite: bool = True) -> float:
    """A real-valued attribute as a Python float; NaN (and infinities when `finite`), bools,
    strings and None are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ShapeError(f"expected a number for {what}, found {value!r}")
    value = float(value)
    expect(not math.isnan(value) and (not finite or math.isfinite(value)),
           f"expected a {'finite ' if finite else ''}number for {what}, found {value}")
    return value


def flag(value, what: str) -> bool:
    """A boolean attribute: True/False (or 0/1)."""
    expect(isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer))
                                                    and value in (0, 1)),
           f"expected True or False for {what}, found {value!r}")
    return bool(value)


def integers(value, lengths: tuple[int, ...], what: str, forms: str) -> tuple[int, ...]:
    """A tuple of Python ints from an int (repeated `lengths[0]` times) or a sequence whose
    length is one of `lengths`; `forms` says what is accepted, for the error."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return (int(value),) * lengths[0]
    expect(isinstance(value, (tuple, list, np.ndarray)) and len(value) in lengths,
           f"expected {what} as {forms}, found {value!r}")
    return tuple(integer(x, what) for x in value)


def int_tuple(value, what: str) -> tuple[int, ...]:
    """A sequence of integers (a shape, a permutation) as a tuple of Python ints."""
    expect(isinstance(value, (tuple, list, range, np.ndarray)),
           f"expected {what} as a sequence of ints, found {value!r}")
    return tuple(integer(x, what) for x in value)


def pair(v: int | Sequence[int], what: str = "value") -> tuple[int, int]:
    return integers(v, (2,), what, "an int or an (h, w) pair")  # type: ignore[return-value]


def quad(v: int | Sequence[int], what: str = "padding") -> tuple[int, int, int, int]:
    """Padding as (top, left, bottom, right) from an int, an (h, w) pair or a 4-tuple."""
    t = integers(v, (4, 2), what, "an int, (h, w) or (top, left, bottom, right)")
    return t if len(t) == 4 else (t[0], t[1], t[0], t[1])  # type: ignore[return-value]


def expect_rank(t: TensorType, rank: int, what: str = "input") -> None:
    expect(t.ndim == rank, f"expected {what} of rank {rank}, found {t} (rank {t.ndim})")


def expect_float(t: TensorType, what: str = "input") -> None:
    expect(t.is_float, f"expected a floating-point {what}, found {t}")


def expect_same_dtype(*types: TensorType) -> None:
    dtypes = {t.dtype for t in types}
    expect(len(dtypes) == 1, f"expected inputs of one dtype, found {', '.join(map(str, types))}")


def accumulator(dtype: np.dtype) -> type:
    """The numpy dtype the reference kernels accumulate in: float64 stays float64, any narrower
    float accumulates in float32 (like the GPUs and CPUs we compare with)."""
    return np.float64 if dtype == np.float64 else np.float32
