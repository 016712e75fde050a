"""The zero-padded, column-phase copy of a conv's input that the row-vectorized conv rules
(depthwise, narrow) read, and its schedule.

Those rules make output columns the vector axis, so each tap reads a contiguous input row
segment. The input is first copied, per plane, into a zero-padded buffer split into `stride`
column phases, [N, C, rows, stride, columns / stride] (phase p of row i, column j: padded
column j * stride + p), so that a strided tap also reads contiguous columns. The copy's rows,
phases and columns are partitioned into the zero borders and the real input, so that each part
is a loop without a condition that reads only inside the input. (It must not be a Select of a
clamped load: TVM drops the clamp inside the Select's true branch, and the vectorized copy then
reads outside the input, a crash where the input ends at a page boundary.)"""
from __future__ import annotations

from ....errors import LoweringError
from ....ops.base import conv_out_size
from ....ops.cast import widened
from .common import PARALLEL_MIN_ELEMENTS, blocks_of, extent, inline_elementwise, iter_kinds
from .tiled import accumulator_writer

# The copy block's annotation: [top, height, left, width], the real input's rows and columns
# in the padded buffer.
PADDING_ATTR = "graphopt.padding"


def column_phases(x, conv, kernel, block: int, name: str, dtype: str | None = None,
                  extra_columns: int = 0):
    """TE: NCHW `x` zero-padded as `conv` pads it and split into `stride` column phases, [N, C,
    rows, stride, columns / stride], with the columns that output rows padded to whole blocks
    of `block` read (and `extra_columns` more per phase), as `dtype` (x's where None: half
    precision is widened here, once per element, for a float32 kernel); and (out_h, out_w,
    padded_w)."""
    from tvm import te, tirx
    n, channels, height, width = (int(d) for d in x.shape)
    k_h, k_w = kernel
    (s_h, s_w), (d_h, d_w) = conv.stride, conv.dilation
    top, left, bottom, right = conv.padding
    out_h = conv_out_size(height, k_h, s_h, top, bottom, d_h)
    out_w = conv_out_size(width, k_w, s_w, left, right, d_w)
    padded_w = -(-out_w // block) * block
    rows = (out_h - 1) * s_h + d_h * (k_h - 1) + 1
    columns = padded_w + d_w * (k_w - 1) // s_w + extra_columns      # per phase
    dtype = dtype or str(x.dtype)
    zero = tirx.const(0, dtype)

    def phase(b, c, i, p, j):
        column = j * s_w + p
        inside = tirx.all(i >= top, i < top + height, column >= left, column < left + width)
        return tirx.if_then_else(inside, widened(x[b, c, i - top, column - left], dtype), zero)

    phases = te.compute((n, channels, rows, s_w, columns), phase, name=name,
                        attrs={PADDING_ATTR: [top, height, left, width]})
    return phases, (out_h, out_w, padded_w)


def real_columns(tile, out_w: int):
    """TE: `tile` (rows computed to whole vectors or blocks: NCHW, or a product's [M, N])
    sliced back to `out_w` columns, or `tile` itself where the rows were whole already."""
    from tvm import te
    if int(tile.shape[-1]) == out_w:
        return tile
    return te.compute((*tile.shape[:-1], out_w), lambda *i: tile(*i), name="real_columns")


def written_width(sch, writer) -> int:
    """The real row width that `writer` (the block writing a row conv's output) writes: the
    rows' columns before they were padded to whole vectors."""
    return int(sch.get(writer).writes[0].source.shape[-1])


def schedule_copy(sch, copy, at=None, parallel: bool = False) -> None:
    """Schedule the copy block: computed at loop `at` (None: at the root; `parallel`: over
    images and channels there); its rows partitioned into (top zeros, real rows, bottom zeros),
    the real rows into one loop per phase and each phase's columns into (left zeros, real
    columns, right zeros). Zeros and stride-1 columns are vector loops; strided real columns
    are left to LLVM's loop vectorizer (TVM would load their vectors element by element)."""
    if at is not None:
        sch.compute_at(copy, at)
    elif parallel:
        planes = sch.fuse(*sch.get_loops(copy)[:2])
        if extent(planes, sch) > 1:
            sch.parallel(planes)
    top, height, left, width = (int(v) for v in sch.get(copy).annotations[PADDING_ATTR])
    _, _, rows, stride, columns = (int(d) for d in sch.get(copy).writes[0].source.shape)
    row_loop = _loop_of(sch, copy, 2)   # None where the one row's loop was dropped
    if row_loop is None:
        row_parts, real_rows = [None], (0 if top == 0 and height > 0 else None)
    else:
        row_parts, real_rows = segments(sch, row_loop, top, height, rows)
    for k, part in enumerate(row_parts):
        block = copy if part is None else sch.get_child_blocks(part)[0]
        if k != real_rows:
            sch.vectorize(_loop_of(sch, block, 4))
            continue
        phase_loop = _loop_of(sch, block, 3)
        if phase_loop is None:
            # one phase read (a 1x1 strided conv's: the copy computed where it reads only
            # that phase), its loop dropped
            phase_parts, phases = [None], [_constant_phase(sch, block)]
        else:
            phase_parts = [None] if stride == 1 else \
                sch.loop_partition(phase_loop, [1] * (stride - 1) + [None])
            phases = range(len(phase_parts))
        for p, phase_part in zip(phases, phase_parts):
            phase_block = block if phase_part is None else sch.get_child_blocks(phase_part)[0]
            first = -(-(left - p) // stride) if left > p else 0
            last = -(-(left + width - p) // stride)
            parts, real = segments(sch, _loop_of(sch, phase_block, 4), first, last - first,
                                    columns)
            for c, column_part in enumerate(parts):
                if stride == 1 or c != real:
                    sch.vectorize(column_part)


def tap(phases, conv, b, c, i, j, ry, rx):
    """TE: the element of `phases` (from `column_phases`) that output (i, j) of `conv` reads at
    tap (ry, rx) of channel `c`."""
    (s_h, s_w), (d_h, d_w) = conv.stride, conv.dilation
    return phases[b, c, i * s_h + ry * d_h, (rx * d_w) % s_w, j + (rx * d_w) // s_w]


def row_conv_blocks(sch, conv_name: str, kinds: str, copy_name: str, kept: tuple = ()):
    """(conv, copy, accumulator writer) of a row-vectorized conv function: the one block named
    `conv_name` with iterator kinds `kinds`, and the copy block `copy_name`, the elementwise
    blocks around them inlined, except those named in `kept`; None for functions without
    them."""
    blocks = blocks_of(sch)
    convs = [b for b in blocks if sch.get(b).name_hint == conv_name
             and iter_kinds(sch.get(b)) == kinds]
    copies = [b for b in blocks if sch.get(b).name_hint == copy_name]
    if len(convs) != 1 or len(copies) != 1:
        return None
    inline_elementwise(sch, keep=[convs[0], copies[0],
                                  *(b for b in blocks if sch.get(b).name_hint in kept)])
    writer = accumulator_writer(sch, convs[0])
    return None if writer is None else (convs[0], copies[0], writer)


def _constant_phase(sch, block) -> int:
    """The column phase that `block` (the copy, its phase loop dropped) writes."""
    from tvm import tirx
    value = sch.get(sch.get_loops(block)[-1]).body.iter_values[3]
    if not isinstance(value, tirx.IntImm):
        raise LoweringError(f"expected the column-phase copy without a phase loop to write one "
                            f"constant phase, found {value}")
    return int(value)


def _loop_of(sch, block, axis: int):
    """The loop that `block`'s spatial axis `axis` is bound to, or None."""
    loops = sch.get_loops(block)
    value = sch.get(loops[-1]).body.iter_values[axis]
    return next((loop for loop in loops if sch.get(loop).loop_var.same_as(value)), None)


def leading_padding(block, source=None, axis: int = -1) -> int:
    """The padding columns before the input's first in a padding block's rows: minus the input
    column it reads (of `source`, default its first read) at its iterators' origin; with
    `axis=-2`, the padding rows before its first row."""
    from tvm import tirx
    from tvm.sym.analyzer import Analyzer
    read = next(r for r in block.reads if source is None or r.source.same_as(source))
    iters = [iv.var for iv in block.iter_vars]
    start = tirx.IndexMap(iters, [read.region[axis].min], None)
    return -int(Analyzer().simplify(start.map_indices([0] * len(iters))[0]))


def vectorize_padded_row(sch, block_rv, loop, source=None) -> None:
    """`loop`, the columns of a padding block's row, as up to three vector loops: the left
    padding, the input's columns (a contiguous copy of `source`, default the block's first
    read) and the right padding."""
    block = sch.get(block_rv)
    read = next(r for r in block.reads if source is None or r.source.same_as(source))
    parts, _ = segments(sch, loop, leading_padding(block, read.source),
                        int(read.source.shape[-1]), extent(loop, sch))
    for part in parts:
        sch.vectorize(part)


def vectorize_padded_plane(sch, block_rv) -> None:
    """A zero-padding block computed on its own (not under another block's loops), parallel
    over its planes where it copies at least PARALLEL_MIN_ELEMENTS of the input's columns: each
    plane's rows as up to three loops, the padding rows above the input's, its rows and the rows
    below (as `schedule_copy` splits a phase copy's), so that whether a row is the input's is
    known at compile time, and each row's columns as `vectorize_padded_row` makes them. Tested
    per row inside one loop over every row, the copy of a row was a select that LLVM built
    element by element on the stack."""
    block = sch.get(block_rv)
    source = block.reads[0].source
    *planes, row, _ = sch.get_loops(block_rv)
    fused = sch.fuse(*planes) if len(planes) > 1 else planes[0]
    rows = extent(row, sch)
    parts, _ = segments(sch, row, leading_padding(block, source, axis=-2), int(source.shape[-2]),
                        rows)
    if extent(fused, sch) > 1 and \
            extent(fused, sch) * rows * int(source.shape[-1]) >= PARALLEL_MIN_ELEMENTS:
        sch.parallel(fused)
    for part in parts:
        for child in sch.get_child_blocks(part):
            vectorize_padded_row(sch, child, sch.get_loops(child)[-1], source)


def segments(sch, loop, start: int, size: int, total: int):
    """`loop` (extent `total`) partitioned into [0, start), [start, start + size), the rest,
    leaving out empty parts: (the part loops, the index of the middle part or None)."""
    size = max(0, min(size, total - start))
    sizes = [start, size, total - start - size]
    kept = [s for s in sizes if s > 0]
    parts = [loop] if len(kept) == 1 else sch.loop_partition(loop, kept[:-1] + [None])
    return parts, (int(start > 0) if size else None)
