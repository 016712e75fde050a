"""The input copy of the dot-product convolutions (`conv2d_int8.py`, `conv2d_bf16.py`): NCHW to
[N, C / group, H', W', group], padded, so that one pixel's `group` input channels are one
broadcast 32-bit word.

Written as one loop over output elements, the copy gathered each element from its channel plane
with a byte load and store and a division per pixel to recover its indices: 40 % of an int8
3x3 64 -> 64 ch conv on 56x56 (1 thread, AVX-512). It is built as two stages instead:
`PLANES` copies `group` channel planes row by row, padding folded in (contiguous vector loads
and stores), and `PACKED` interleaves each run of `pixels` pixels of the group's rows into one
vector by a register shuffle (the intrinsic below), one row of the image at a time with the
planes' row computed just before it, in cache. Rows are padded to whole runs of `pixels`;
the convolution never reads the columns beyond its padded width.

The inverse shuffle, one vector split into its interleaved parts (`register_deinterleave`),
splits the Winograd row pass's columns into their phases (`winograd.DEINTERLEAVED_ROW_LANES`)."""
from __future__ import annotations

from .common import PARALLEL_MIN_ELEMENTS, blocks_of, extent, registers_with_tvm
from .phases import vectorize_padded_row

PLANES = "pad_planes"
PACKED = "pad_pack"
_registered: set[str] = set()
# Copies whose planes' rows are vectorized as their padding and input segments
# (`_vectorize_row`), not as runs of `pixels` columns each checked against the padding: the
# int8 ones. One thread, AMD Zen 4, whole models interleaved, segments / runs: int8 VGG-11
# 0.989, ResNet-18 0.964; bfloat16 VGG-11 0.983 but ResNet-18 1.012, its stride-2 convs 4 %
# slower (their rows round floats to bfloat16 as they copy).
SEGMENTED_DTYPES = ("uint8",)


def interleaved(value, n: int, groups: int, group: int, rows: int, width: int, pixels: int,
                dtype: str):
    """TE: [n, groups, rows, W, group] (W: `width` rounded up to whole `pixels`) holding
    `value(b, g, c, i, j)` (of `dtype`, padding included; j ranges over W) at [b, g, i, j, c]."""
    from tvm import te
    padded = -(-width // pixels) * pixels
    planes = te.compute((n, groups, rows, group, padded), lambda b, g, i, c, j:
                        value(b, g, c, i, j).astype(dtype), name=PLANES)
    return te.compute((n, groups, rows, padded, group),
                      lambda b, g, i, j, c: planes[b, g, i, c, j], name=PACKED)


def intrinsic_name(pixels: int, group: int, dtype: str) -> str:
    return f"graphopt_interleave_{group}x{pixels}_{dtype}"


@registers_with_tvm
def register(pixels: int, group: int, dtype: str) -> str:
    """Register (once per process) the intrinsic storing B[pixels, group] = A[group, pixels]^T,
    A's rows `a_stride` apart, as one shuffle of `group` vector loads into one vector store;
    return its name."""
    name = intrinsic_name(pixels, group, dtype)
    if name in _registered:
        return name
    from tvm import tirx
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as B_

    @T.prim_func(s_tir=True)
    def desc(a_handle: T.handle, b_handle: T.handle) -> None:
        a_stride = T.int64()
        A = T.match_buffer(a_handle, (group, pixels), dtype, strides=[a_stride, 1],
                           offset_factor=1)
        B = T.match_buffer(b_handle, (pixels, group), dtype, offset_factor=1)
        with T.sblock("root"):
            T.reads(A[0:group, 0:pixels])
            T.writes(B[0:pixels, 0:group])
            for j, c in T.grid(pixels, group):
                with T.sblock("interleave"):
                    vj, vc = T.axis.remap("SS", [j, c])
                    B[vj, vc] = A[vc, vj]

    with IRBuilder() as builder:
        with B_.prim_func():
            B_.func_name("impl")
            a_handle, b_handle = B_.arg("A", T.handle()), B_.arg("B", T.handle())
            a = B_.match_buffer(a_handle, (group, pixels), dtype, offset_factor=1,
                                strides=[tirx.Var("a_stride", "int64"), 1])
            b = B_.match_buffer(b_handle, (pixels, group), dtype, offset_factor=1)
            with B_.sblock("root"):
                B_.reads(a[0:group, 0:pixels])
                B_.writes(b[0:pixels, 0:group])
                rows = [a.vload([c, 0], f"{dtype}x{pixels}") for c in range(group)]
                order = [c * pixels + j for j in range(pixels) for c in range(group)]
                B_.buffer_store(b, tirx.Shuffle(rows, [tirx.IntImm("int32", i) for i in order]),
                                [0, tirx.Ramp(tirx.const(0, "int32"), 1, pixels * group)])
    TensorIntrin.register(name, desc, builder.get(), override=True)
    _registered.add(name)
    return name


def copy_blocks(sch) -> list:
    """The blocks of `interleaved` in `sch` (kept from inlining by the rules)."""
    return [b for b in blocks_of(sch) if sch.get(b).name_hint in (PLANES, PACKED)]


def schedule_copy(sch, pixels: int) -> tuple[str, ...]:
    """Schedule the two stages of `interleaved` where `sch` holds them: parallel over (image,
    group, row) where there is enough work, the planes' row computed under it and vectorized,
    the interleave tensorized `pixels` at a time. Returns the names of the blocks it
    scheduled (the tensorized block's name starts with its own)."""
    names = {sch.get(b).name_hint: b for b in blocks_of(sch)}
    if PLANES not in names or PACKED not in names:
        return ()
    planes, packed = names[PLANES], names[PACKED]
    source = sch.get(planes).writes[0].source
    group, dtype = int(source.shape[3]), str(source.dtype)
    n, g, i, j, c = sch.get_loops(packed)
    rows = sch.fuse(n, g, i)
    if extent(rows, sch) * extent(j, sch) * group >= PARALLEL_MIN_ELEMENTS:
        sch.parallel(rows)
    outer, inner = sch.split(j, [None, pixels])
    sch.reorder(outer, inner, c)
    sch.compute_at(planes, rows)
    if dtype in SEGMENTED_DTYPES:
        _vectorize_row(sch, planes)
    else:
        *_, plane_c, plane_j = sch.get_loops(planes)
        _, lanes = sch.split(plane_j, [None, pixels])
        sch.vectorize(lanes)
    sch.tensorize(inner, register(pixels, group, dtype))
    return PLANES, PACKED


def _vectorize_row(sch, planes) -> None:
    """The planes' row as up to three vector loops: the left padding, the input's columns (a
    contiguous copy) and the right padding. Vectorized as runs of 16 columns, each column
    checked against the padding, LLVM copied the row a byte at a time (a tenth of an int8
    64 -> 128 ch 112x112 conv)."""
    source = next(r.source for r in sch.get(planes).reads if len(r.source.shape) == 4)
    vectorize_padded_row(sch, planes, sch.get_loops(planes)[-1], source)


def deinterleave_name(parts: int, length: int, dtype: str) -> str:
    return f"graphopt_deinterleave_{parts}x{length}_{dtype}"


@registers_with_tvm
def register_deinterleave(parts: int, length: int, dtype: str) -> str:
    """Register (once per process) the intrinsic storing B[p, j] = A[j * parts + p] (p <
    `parts`, j < `length`; B's rows `b_stride` apart) as one vector load of A and a shuffle
    into each row of B; return its name."""
    name = deinterleave_name(parts, length, dtype)
    if name in _registered:
        return name
    from tvm import tirx
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as B_
    size = parts * length

    @T.prim_func(s_tir=True)
    def desc(a_handle: T.handle, b_handle: T.handle) -> None:
        b_stride = T.int64()
        A = T.match_buffer(a_handle, (size,), dtype, offset_factor=1)
        B = T.match_buffer(b_handle, (parts, length), dtype, strides=[b_stride, 1],
                           offset_factor=1)
        with T.sblock("root"):
            T.reads(A[0:size])
            T.writes(B[0:parts, 0:length])
            for p, j in T.grid(parts, length):
                with T.sblock("deinterleave"):
                    vp, vj = T.axis.remap("SS", [p, j])
                    B[vp, vj] = A[vj * parts + vp]

    with IRBuilder() as builder:
        with B_.prim_func():
            B_.func_name("impl")
            a_handle, b_handle = B_.arg("A", T.handle()), B_.arg("B", T.handle())
            a = B_.match_buffer(a_handle, (size,), dtype, offset_factor=1)
            b = B_.match_buffer(b_handle, (parts, length), dtype, offset_factor=1,
                                strides=[tirx.Var("b_stride", "int64"), 1])
            with B_.sblock("root"):
                B_.reads(a[0:size])
                B_.writes(b[0:parts, 0:length])
                whole = a.vload([0], f"{dtype}x{size}")
                for part in range(parts):
                    order = [tirx.IntImm("int32", j * parts + part) for j in range(length)]
                    B_.buffer_store(b, tirx.Shuffle([whole], order),
                                    [part, tirx.Ramp(tirx.const(0, "int32"), 1, length)])
    TensorIntrin.register(name, desc, builder.get(), override=True)
    _registered.add(name)
    return name
