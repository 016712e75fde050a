"""Ops that move data without arithmetic: concat, flatten, reshape, transpose, pad, expand, tile,
slice and gather."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..ir import TensorType
from .binary import broadcast_shape
from .base import (relax_type, VARIADIC, Op, expect, expect_same_dtype, flag, int_tuple, integer,
                   real, register, relax)


def normalize_axis(axis: int, rank: int) -> int:
    expect(-rank <= axis < rank, f"expected axis in [{-rank}, {rank}), found {axis}")
    return axis % rank


def normalize_axes(axes, rank: int, sort: bool = True) -> tuple[int, ...]:
    """`axes` (negative counting from the end) as non-negative axes, each once; sorted unless
    `sort` is False (then in the given order)."""
    expect(all(-rank <= a < rank for a in axes), f"expected axes in [{-rank}, {rank}), found "
           f"{list(axes)}")
    normalized = [a % rank for a in axes]
    expect(len(set(normalized)) == len(normalized), f"expected distinct axes, found {list(axes)}")
    return tuple(sorted(normalized) if sort else normalized)


# The PrimFunc attribute of an `in_place` concatenation's kernel: the byte offset of each
# input's slice in the output. The CPU pipeline's `targets/tvm/concat_in_place.py` finds the
# kernel's calls by it.
IN_PLACE_ATTR = "graphopt.concat_in_place"


@register
@dataclass(frozen=True)
class Concat(Op):
    """Concatenation along `axis`. `in_place` (a target decision, see the CPU pass
    `place_concatenations`): the inputs are to be computed straight into their slices of the
    output; it lowers to a kernel that TVM does not fuse, marked IN_PLACE_ATTR, whose calls the
    CPU pipeline drops where every input can be placed (and keeps as a copy otherwise)."""

    name = "concat"
    arity = (1, VARIADIC)
    axis: int = 1
    in_place: bool = False

    def __post_init__(self):
        object.__setattr__(self, "axis", integer(self.axis, "axis"))
        object.__setattr__(self, "in_place", flag(self.in_place, "in_place"))

    def target_choice(self) -> str:
        return "in place" if self.in_place else ""

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
        if not self.in_place:
            return relax().op.concat(list(xs), axis=self.axis)
        from tvm import topi
        from .base import OPAQUE
        axis = normalize_axis(self.axis, len(xs[0].ty.shape))
        sizes = [relax_type(x).nbytes for x in xs]
        offsets = [sum(sizes[:i]) for i in range(len(xs))]
        return bb.call_te(topi.concatenate, list(xs), axis, primfunc_name_hint="concatenate",
                          primfunc_attrs={"op_pattern": OPAQUE, IN_PLACE_ATTR: offsets})


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


PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate",  # -> Relax's
             "wrap": "circular"}


@register
@dataclass(frozen=True)
class Pad(Op):
    """Padding: `pads` holds one (before, after) pair per axis; `mode` "constant" (with
    `value`), "reflect" (mirrored without repeating the edge), "edge" (the edge repeated) or
    "wrap" (the other end's values, as on a torus; pads may exceed the axis), as ONNX's Pad and
    numpy's pad define them."""

    name = "pad"
    pads: tuple[tuple[int, int], ...] = ()
    value: float = 0.0
    mode: str = "constant"

    def __post_init__(self):
        expect(isinstance(self.pads, (tuple, list)) and all(
            isinstance(p, (tuple, list)) and len(p) == 2 for p in self.pads),
            f"expected pads as one (before, after) pair per axis, found {self.pads!r}")
        object.__setattr__(self, "pads", tuple((integer(a, "pad"), integer(b, "pad"))
                                               for a, b in self.pads))
        object.__setattr__(self, "value", real(self.value, "value", finite=False))
        expect(isinstance(self.mode, str) and self.mode in PAD_MODES,
               f"expected mode one of {', '.join(PAD_MODES)}, found {self.mode!r}")

    def infer(self, x):
        expect(len(self.pads) == x.ndim, f"expected {x.ndim} (before, after) pairs, found "
               f"{len(self.pads)} for {x}")
        expect(all(a >= 0 and b >= 0 for a, b in self.pads),
               f"expected non-negative pads, found {self.pads}")
        if self.mode != "constant":
            expect(x.numel > 0, f"expected a non-empty input to pad in mode {self.mode}")
        if self.mode == "reflect":   # a mirror reaches at most size - 1 elements inward
            expect(all(a < d and b < d for d, (a, b) in zip(x.shape, self.pads)),
                   f"expected reflect pads smaller than each axis, found {self.pads} for {x}")
        return x.with_shape([d + a + b for d, (a, b) in zip(x.shape, self.pads)])

    def reference(self, x):
        if self.mode != "constant":
            return np.pad(x, self.pads, mode=self.mode)
        return np.pad(x, self.pads, constant_values=np.array(self.value, x.dtype))

    def lower_tvm(self, bb, x):
        if self.mode == "reflect":
            return bb.call_te(reflect_pad, x, self.pads, primfunc_name_hint="reflect_pad")
        flat = [p for pair in self.pads for p in pair]
        return relax().op.nn.pad(x, flat, pad_mode=PAD_MODES[self.mode], pad_value=self.value)


def reflect_pad(x, pads):
    """TE: `x` padded by reflection, each index i of an axis of size n read at
    (n - 1) - |(n - 1) - |i - before|| with |v| written max(v, -v). TOPI writes the same
    index with TIR's abs, which lowers to selects: two reflection pads inlined one into the
    other (and into their producers) nest those selects, and TVM's simplifiers took 8 s to
    build the pair (0.1 s with maxima, which they bound directly)."""
    from tvm import te, tirx

    def index(i, size: int, before: int, after: int):
        if not before and not after:
            return i
        offset = i - before
        distance = tirx.max(offset, -offset)
        return (size - 1) - tirx.max((size - 1) - distance, distance - (size - 1))

    sizes = [int(d) for d in x.shape]
    shape = [n + before + after for n, (before, after) in zip(sizes, pads)]
    return te.compute(shape, lambda *i: x(*(index(v, n, before, after) for v, n, (before, after)
                                            in zip(i, sizes, pads))), name="ReflectPadInput")


def zero_size(dtype: str, shape) -> object:
    """Relax: an empty tensor of `shape` (Relax ops do not produce zero-size results)."""
    return relax().const(np.zeros(shape, dtype), dtype)


@register
@dataclass(frozen=True)
class Expand(Op):
    """Broadcast to `shape` (ONNX Expand: the result is the input and `shape` broadcast
    together, so a 1 in `shape` keeps the input's size)."""

    name = "expand"
    shape: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "shape", int_tuple(self.shape, "shape"))

    def infer(self, x):
        expect(all(d >= 0 for d in self.shape), f"expected non-negative sizes, found {self.shape}")
        return x.with_shape(broadcast_shape(x.shape, self.shape))

    def reference(self, x):
        return np.broadcast_to(x, self.infer(TensorType.of(x)).shape).copy()

    def lower_tvm(self, bb, x):
        out = self.infer(relax_type(x))
        if out.numel == 0:
            return zero_size(out.dtype, out.shape)
        return relax().op.broadcast_to(x, out.shape)


@register
@dataclass(frozen=True)
class Tile(Op):
    """The input repeated `repeats[i]` times along each axis i (ONNX Tile, numpy's tile)."""

    name = "tile"
    repeats: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "repeats", int_tuple(self.repeats, "repeats"))

    def infer(self, x):
        expect(len(self.repeats) == x.ndim and all(r >= 0 for r in self.repeats),
               f"expected {x.ndim} non-negative repeats for {x}, found {self.repeats}")
        return x.with_shape([d * r for d, r in zip(x.shape, self.repeats)])

    def reference(self, x):
        return np.tile(x, self.repeats)

    def lower_tvm(self, bb, x):
        out = self.infer(relax_type(x))
        if out.numel == 0:
            return zero_size(out.dtype, out.shape)
        # Copies concatenated along each repeated axis: the modulo indexing of Relax's tile (or
        # of a TE x[i % d]) compiles to garbage for AVX-512 targets (TVM 0.27, LLVM 22:
        # float32[2,3,4,5] tiled (7, 6, 4, 1)).
        R = relax().op
        for axis, count in enumerate(self.repeats):
            if count > 1:
                x = bb.emit(R.concat([x] * count, axis=axis))
        return x


@register
@dataclass(frozen=True)
class Slice(Op):
    """ONNX Slice with static bounds: along each of `axes`, every `steps`-th element from
    `starts` towards `ends` (negative values count from the end; out-of-range bounds are
    clamped, as ONNX defines)."""

    name = "slice"
    starts: tuple[int, ...] = ()
    ends: tuple[int, ...] = ()
    axes: tuple[int, ...] = ()
    steps: tuple[int, ...] = ()

    def __post_init__(self):
        for field in ("starts", "ends", "axes", "steps"):
            object.__setattr__(self, field, int_tuple(getattr(self, field), field))

    def ranges(self, x: TensorType) -> list[tuple[int, int, int]]:
        """(first index, step, count) for every axis of `x`."""
        n = len(self.starts)
        expect(len(self.ends) == n and len(self.axes) == n and len(self.steps) == n,
               f"expected starts, ends, axes and steps of one length, found {self}")
        expect(0 not in self.steps, f"expected non-zero steps, found {self.steps}")
        ranges = [(0, 1, d) for d in x.shape]
        for axis, start, end, step in zip(normalize_axes(self.axes, x.ndim, sort=False),
                                          self.starts, self.ends, self.steps):
            dim = x.shape[axis]
            start, end = (v + dim if v < 0 else v for v in (start, end))
            if step > 0:
                start, end = min(max(start, 0), dim), min(max(end, 0), dim)
                count = max(0, -(-(end - start) // step))
            else:
                start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
                count = max(0, -(-(start - end) // -step))
            ranges[axis] = (start, step, count)
        return ranges

    def infer(self, x):
        return x.with_shape([count for _, _, count in self.ranges(x)])

    def reference(self, x):
        for axis, (start, step, count) in enumerate(self.ranges(TensorType.of(x))):
            x = np.take(x, np.arange(count, dtype=np.int64) * step + start, axis=axis)
        return np.ascontiguousarray(x)

    def lower_tvm(self, bb, x):
        out = self.infer(relax_type(x))
        if out.numel == 0:
            return zero_size(out.dtype, out.shape)
        return bb.call_te(self.te_slice, x, primfunc_name_hint="slice")

    def te_slice(self, x):
        from tvm import te
        ranges = self.ranges(te_type(x))
        return te.compute([count for _, _, count in ranges],
                          lambda *i: x[tuple(start + step * k for k, (start, step, _)
                                             in zip(i, ranges))], name="slice")


INDEX_DTYPES = ("int32", "int64")


@register
@dataclass(frozen=True)
class Gather(Op):
    """Entries of `data` along `axis` at `indices` (ONNX Gather, numpy's take); negative indices
    count from the end. Inputs: data, indices (int32 or int64)."""

    name = "gather"
    arity = (2, 2)
    axis: int = 0

    def __post_init__(self):
        object.__setattr__(self, "axis", integer(self.axis, "axis"))

    def infer(self, data, indices):
        expect(data.ndim >= 1, f"expected data of rank >= 1, found {data}")
        expect(indices.dtype in INDEX_DTYPES, f"expected int32 or int64 indices, found {indices}")
        axis = normalize_axis(self.axis, data.ndim)
        return data.with_shape(data.shape[:axis] + indices.shape + data.shape[axis + 1:])

    def reference(self, data, indices):
        axis = normalize_axis(self.axis, data.ndim)
        size = data.shape[axis]
        index = indices.astype(np.int64)
        bad = index[(index < -size) | (index >= size)]
        if bad.size:
            raise InputError(f"gather index {bad.flat[0]} is out of range [{-size}, {size}) for "
                             f"axis {axis} of {TensorType.of(data)}")
        return np.take(data, np.where(index < 0, index + size, index), axis=axis)

    def lower_tvm(self, bb, data, indices):
        out = self.infer(relax_type(data), relax_type(indices))
        if out.numel == 0:
            return zero_size(out.dtype, out.shape)
        return bb.call_te(self.te_gather, data, indices, primfunc_name_hint="gather")

    def te_gather(self, data, indices):
        """TE: an index past either end reads the nearest valid entry (ONNX leaves it undefined;
        this keeps every read inside `data`)."""
        from tvm import te, tirx
        axis = normalize_axis(self.axis, len(data.shape))
        size, rank = int(data.shape[axis]), len(indices.shape)
        out = self.infer(te_type(data), te_type(indices)).shape

        def body(*i):
            k, dtype = indices[tuple(i[axis: axis + rank])], str(indices.dtype)
            k = tirx.Select(k < 0, k + tirx.const(size, dtype), k)
            k = tirx.max(tirx.min(k, tirx.const(size - 1, dtype)), tirx.const(0, dtype))
            return data[(*i[:axis], k.astype("int32"), *i[axis + rank:])]

        return te.compute(out, body, name="gather")


def te_type(tensor) -> TensorType:
    """Our TensorType of a (statically shaped) TE tensor."""
    return TensorType(tuple(int(d) for d in tensor.shape), str(tensor.dtype))
