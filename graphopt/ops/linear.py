"""Fully connected layers and matrix products."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import TensorType, is_float_dtype
from .base import (OUT_ELEMWISE_FUSABLE, Op, accumulator, constant_operand, expect, expect_float,
                   expect_same_dtype, integer, register, relax, relax_constant)
from .cast import accumulation_dtype, widened


def weight_block_attribute(op) -> None:
    object.__setattr__(op, "weight_block", integer(op.weight_block, "weight_block"))
    expect(op.weight_block >= 0, f"expected a non-negative weight_block, found {op.weight_block}")


# How a linear layer or matmul with a packed weight is computed, a target decision beside its
# weight_block: "" float32 FMAs (half-precision operands widened), "dpbf16" bfloat16 pairs on
# vdpbf16ps (`targets/tvm/schedules/dense_bf16.py`).
PRODUCT_ALGORITHMS = ("", "dpbf16")


def product_attributes(op) -> None:
    weight_block_attribute(op)
    expect(op.algorithm in PRODUCT_ALGORITHMS,
           f"expected algorithm in {PRODUCT_ALGORITHMS}, found {op.algorithm!r}")
    expect(not op.algorithm or op.weight_block,
           f"expected a weight_block with algorithm {op.algorithm!r}")


def product_choice(op) -> str:
    """The target decisions of a linear layer or matmul, for `show` and the report."""
    if not op.weight_block:
        return ""
    blocks = f"{op.weight_block}-column weight blocks"
    return f"{blocks}, {op.algorithm}" if op.algorithm else blocks


@register
@dataclass(frozen=True)
class Linear(Op):
    """y = x @ weight.T + bias, with x [..., in], weight [out, in] (torch's layout), bias [out]."""

    name = "linear"
    arity = (2, 3)
    # A target decision (CPU pass `select_dense_layout`): the weight is packed at lowering into
    # blocks of this many output columns ([out / block, in, block], the last block padded with
    # zero columns); 0: as written.
    weight_block: int = 0
    algorithm: str = ""     # with a weight_block: PRODUCT_ALGORITHMS

    def __post_init__(self):
        product_attributes(self)

    def infer(self, x, w, b=None):
        expect_float(x), expect_same_dtype(x, w, *([b] if b else []))
        expect(x.ndim >= 1 and w.ndim == 2, f"expected x of rank >= 1 and a 2-D weight, found "
               f"{x} and {w}")
        # An empty weight (no input or no output features) is no layer; refused rather than
        # compiled to a library that cannot load.
        expect(w.numel > 0, f"expected a weight with no zero dimension, found {w}")
        expect(x.shape[-1] == w.shape[1], f"expected {w.shape[1]} input features (weight {w}), "
               f"found {x.shape[-1]} in {x}")
        if b is not None:
            expect(b.shape == (w.shape[0],), f"expected bias of shape ({w.shape[0]},), found {b}")
        return TensorType((*x.shape[:-1], w.shape[0]), x.dtype)

    def reference(self, x, w, b=None):
        acc = accumulator(x.dtype)
        y = x.astype(acc) @ w.astype(acc).T
        if b is not None:
            y = y + b.astype(acc)
        return y.astype(x.dtype)

    def lower_tvm(self, bb, x, w, b=None):
        import tvm
        rx = relax()
        R = rx.op
        # Half precision accumulates in float32, then adds the bias, then rounds once, as the
        # reference does.
        dtype = str(x.ty.dtype)
        accumulate = accumulation_dtype(dtype)
        if self.weight_block:
            weight = constant_operand(w, f"packed {self.name}")
            y = lower_blocked_matmul(bb, x, weight.T, self.weight_block, self.algorithm)
        elif not isinstance(w, tvm.ir.Constant) and len(x.ty.shape) == 2:
            # A weight given at run time (weights as parameters) is read as it is, [O, I],
            # rather than transposed by a kernel at every run (VGG-16's first linear layer,
            # 411 MB: 0.73 of the 5.3 ms a batch-1 run took on an H200).
            from tvm import topi
            y = bb.call_te(topi.nn.dense, x, w, None, accumulate, primfunc_name_hint="dense")
        else:
            # A constant weight is transposed here, once, rather than by a kernel at every run.
            w_t = (relax_constant(w.value.numpy().T, str(w.ty.dtype))
                   if isinstance(w, tvm.ir.Constant) else R.permute_dims(w, [1, 0]))
            y = R.matmul(x, w_t, out_dtype=accumulate) if accumulate != dtype else \
                R.matmul(x, w_t)
        if accumulate == dtype:
            return R.add(bb.emit(y), b) if b is not None else y
        y = R.add(bb.emit(y), R.astype(b, accumulate)) if b is not None else y
        return R.astype(bb.emit(y), dtype)

    def target_choice(self) -> str:
        return product_choice(self)

    def macs(self, inputs, outputs):
        return outputs[0].numel * inputs[1].shape[1]


@register
@dataclass(frozen=True)
class Matmul(Op):
    """numpy.matmul semantics: batched, broadcasting, 1-D operands promoted and squeezed."""

    name = "matmul"
    arity = (2, 2)
    # As Linear's: the constant right-hand side packed in blocks of this many columns; 0: as is.
    weight_block: int = 0
    algorithm: str = ""     # with a weight_block: PRODUCT_ALGORITHMS

    def __post_init__(self):
        product_attributes(self)

    def infer(self, a, b):
        expect_same_dtype(a, b)
        expect(a.ndim >= 1 and b.ndim >= 1, f"expected operands of rank >= 1, found {a} and {b}")
        sa = a.shape if a.ndim > 1 else (1, *a.shape)
        sb = b.shape if b.ndim > 1 else (*b.shape, 1)
        expect(sa[-1] == sb[-2], f"expected matching inner dimensions, found {a} @ {b}")
        try:
            batch = tuple(np.broadcast_shapes(sa[:-2], sb[:-2]))
        except ValueError:
            expect(False, f"expected broadcastable batch dimensions, found {a} @ {b}")
        shape = (*batch, *((sa[-2],) if a.ndim > 1 else ()), *((sb[-1],) if b.ndim > 1 else ()))
        return TensorType(shape, a.dtype)

    def reference(self, a, b):
        if is_float_dtype(a.dtype):
            acc = accumulator(a.dtype)
            return np.matmul(a.astype(acc), b.astype(acc)).astype(a.dtype)
        return np.matmul(a, b)

    def lower_tvm(self, bb, a, b):
        R = relax().op
        if self.weight_block:
            weight = constant_operand(b, f"packed {self.name}")
            dtype = str(a.ty.dtype)
            accumulate = accumulation_dtype(dtype)
            y = lower_blocked_matmul(bb, a, weight, self.weight_block, self.algorithm)
            # half precision: float32 sums, rounded once
            return R.astype(bb.emit(y), dtype) if accumulate != dtype else y
        dtype = str(a.ty.dtype)
        accumulate = accumulation_dtype(dtype) if is_float_dtype(dtype) else dtype
        if accumulate != dtype:   # half precision: float32 sums, rounded once
            return R.astype(bb.emit(R.matmul(a, b, out_dtype=accumulate)), dtype)
        return R.matmul(a, b)

    def target_choice(self) -> str:
        return product_choice(self)

    def macs(self, inputs, outputs):
        k = inputs[0].shape[-1]
        return outputs[0].numel * k


# ---- lowering with a packed constant right-hand side (a target's weight layout) -----------------
def pack_columns(weight, block: int) -> np.ndarray:
    """[K, N] -> [ceil(N / block), K, block]: the layout the CPU dense rule streams (one tile
    step reads `block` columns of one row of the weight as whole vectors); the last block's
    missing columns are zeros."""
    k, n = weight.shape
    padded = -(-n // block) * block
    if padded != n:
        weight = np.concatenate([weight, np.zeros((k, padded - n), weight.dtype)], axis=1)
    return np.ascontiguousarray(weight.reshape(k, padded // block, block).transpose(1, 0, 2))


# Half-precision weights of at most this many bytes once widened are widened at lowering: they
# stay in cache from one run to the next, where widening each in registers costs more than the
# bytes it saves (bfloat16 linear layers, batch 1, one thread, us, half / widened: 400 -> 120
# 3.98 / 3.51, 120 -> 84 0.92x; 1024 -> 256, 1 MB widened, 15.7 / 16.0; 1024 -> 1024 92 / 197).
WIDENED_WEIGHT_BYTES = 256 * 1024


def lower_blocked_matmul(bb, x, weight_kn: np.ndarray, block: int, algorithm: str = ""):
    """Relax: x [M, K] @ weight [K, N], the weight packed by `pack_columns` (a constant); with
    padded columns, the padded tile is computed and a slice keeps the real columns. Half
    precision operands stay half precision in memory (the weight is half the bytes a batch-1
    layer streams; a weight of at most WIDENED_WEIGHT_BYTES widened is widened here instead)
    and are widened in registers: the product sums in float32 (exact: every half value is a
    float32) and is returned in float32 for the caller to round once. Algorithm "dpbf16":
    bfloat16 pairs on vdpbf16ps, the weight packed in pairs of rows
    (`schedules/dense_bf16.py`)."""
    from tvm import te

    from ..targets.tvm.schedules.phases import real_columns
    columns = weight_kn.shape[1]
    if algorithm == "dpbf16":
        from ..targets.tvm.schedules import dense_bf16
        return bb.call_te(lambda x, packed: dense_bf16.matmul_dpbf16(x, packed, columns), x,
                          relax_constant(dense_bf16.pack_weight(weight_kn, block)),
                          primfunc_name_hint="matmul",
                          primfunc_attrs={"op_pattern": OUT_ELEMWISE_FUSABLE})
    accumulate = accumulation_dtype(str(x.ty.dtype))
    if weight_kn.size * 4 <= WIDENED_WEIGHT_BYTES:
        weight_kn = weight_kn.astype(accumulate)
    packed = pack_columns(weight_kn, block)

    def blocked_matmul(x, packed):
        rows, depth = (int(d) for d in x.shape)
        k = te.reduce_axis((0, depth), "k")
        tile = te.compute((rows, int(packed.shape[0]) * block),
                          lambda i, j: te.sum(widened(x[i, k], accumulate)
                                              * widened(packed[j // block, k, j % block],
                                                        accumulate), axis=k),
                          name="matmul")
        return real_columns(tile, columns)

    return bb.call_te(blocked_matmul, x, relax_constant(packed),
                      primfunc_name_hint="matmul")
