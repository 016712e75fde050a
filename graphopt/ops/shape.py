"""Ops that move data without arithmetic: concat, flatten, reshape, transpose, pad."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..ir import TensorType
from .base import (relax_type, VARIADIC, Op, expect, expect_same_dtype, int_tuple, integer, real,
                   register, relax)


def normalize_axis(axis: int, rank: int) -> int:
    expect(-rank <= axis < rank, f"expected axis in [{-rank}, {rank}), found {axis}")
    return axis % rank


@register
@dataclass(frozen=True)
class Concat(Op):
    name = "concat"
    arity = (1, VARIADIC)
    axis: int = 1

    def __post_init__(self):
        object.__setattr__(self, "axis", integer(self.axis, "axis"))

    def infer(self, *xs):
        expect_same_dtype(*xs)
        rank = xs[0].ndim
        expect(all(x.ndim == rank for x in xs), f"expected inputs of one rank, found "
               f"{', '.join(map(str, xs))}")
        axis = normalize_axis(self.axis, rank)
        for x in xs[1:]:
            expect(all(x.shape[d] == xs[0].shape[d] for d in range(rank) if d != axis),
                   f"expected shapes equal except on axis {axis}, found {xs[0]} and {x}")
        shape = list(xs[0].shape)
        shape[axis] = sum(x.shape[axis] for x in xs)
        return xs[0].with_shape(shape)

    def reference(self, *xs):
        return np.concatenate(xs, axis=self.axis)

    def lower_tvm(self, bb, *xs):
        return relax().op.concat(list(xs), axis=self.axis)


@register
@dataclass(frozen=True)
class Flatten(Op):
    """To 2-D: dimensions before `axis` form rows, the rest columns (ONNX Flatten)."""

    name = "flatten"
    axis: int = 1

    def __post_init__(self):
        object.__setattr__(self, "axis", integer(self.axis, "axis"))

    def infer(self, x):
        expect(-x.ndim <= self.axis <= x.ndim, f"expected axis in [{-x.ndim}, {x.ndim}], "
               f"found {self.axis} for {x}")
        axis = self.axis + x.ndim if self.axis < 0 else self.axis   # ONNX: -1 is the last axis
        return x.with_shape((math.prod(x.shape[:axis]), math.prod(x.shape[axis:])))

    def reference(self, x):
        return x.reshape(self.infer(TensorType.of(x)).shape)

    def lower_tvm(self, bb, x):
        shape = self.infer(relax_type(x)).shape
        return relax().op.reshape(x, shape)


@register
@dataclass(frozen=True)
class Reshape(Op):
    """Reshape to a static shape; one dimension may be -1 (inferred)."""

    name = "reshape"
    shape: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "shape", int_tuple(self.shape, "shape"))

    def infer(self, x):
        shape = list(self.shape)
        expect(shape.count(-1) <= 1 and all(d >= -1 for d in shape),
               f"expected at most one -1 and no other negative size, found {self.shape}")
        known = math.prod(d for d in shape if d != -1)
        if -1 in shape:
            expect(known > 0 and x.numel % known == 0,
                   f"expected {x} ({x.numel} elements) to fit shape {self.shape}")
            shape[shape.index(-1)] = x.numel // known
        expect(math.prod(shape) == x.numel,
               f"expected shape {self.shape} to hold {x.numel} elements of {x}")
        return x.with_shape(shape)

    def reference(self, x):
        return x.reshape(self.infer(TensorType.of(x)).shape)

    def lower_tvm(self, bb, x):
        shape = self.infer(relax_type(x)).shape
        if 0 in shape:   # Relax reads a 0 as "copy this dimension"; an empty result is a constant
            return relax().const(np.zeros(shape, relax_type(x).dtype), relax_type(x).dtype)
        return relax().op.reshape(x, shape)


@register
@dataclass(frozen=True)
class Transpose(Op):
    name = "transpose"
    perm: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "perm", int_tuple(self.perm, "perm"))

    def infer(self, x):
        expect(sorted(self.perm) == list(range(x.ndim)),
               f"expected a permutation of 0..{x.ndim - 1}, found {self.perm} for {x}")
        return x.with_shape([x.shape[p] for p in self.perm])

    def reference(self, x):
        return np.ascontiguousarray(np.transpose(x, self.perm))

    def lower_tvm(self, bb, x):
        return relax().op.permute_dims(x, list(self.perm))


@register
@dataclass(frozen=True)
class Pad(Op):
    """Constant padding: `pads` holds one (before, after) pair per axis."""

    name = "pad"
    pads: tuple[tuple[int, int], ...] = ()
    value: float = 0.0

    def __post_init__(self):
        expect(isinstance(self.pads, (tuple, list)) and all(
            isinstance(p, (tuple, list)) and len(p) == 2 for p in self.pads),
            f"expected pads as one (before, after) pair per axis, found {self.pads!r}")
        object.__setattr__(self, "pads", tuple((integer(a, "pad"), integer(b, "pad"))
                                               for a, b in self.pads))
        object.__setattr__(self, "value", real(self.value, "value", finite=False))

    def infer(self, x):
        expect(len(self.pads) == x.ndim, f"expected {x.ndim} (before, after) pairs, found "
               f"{len(self.pads)} for {x}")
        expect(all(a >= 0 and b >= 0 for a, b in self.pads),
               f"expected non-negative pads, found {self.pads}")
        return x.with_shape([d + a + b for d, (a, b) in zip(x.shape, self.pads)])

    def reference(self, x):
        return np.pad(x, self.pads, constant_values=np.array(self.value, x.dtype))

    def lower_tvm(self, bb, x):
        flat = [p for pair in self.pads for p in pair]
        return relax().op.nn.pad(x, flat, pad_mode="constant", pad_value=self.value)
