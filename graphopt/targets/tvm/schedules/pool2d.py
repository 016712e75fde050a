"""The rule that schedules max and average pools lowered as two separable passes.

A max pool written directly (TOPI's form) reads every window element through a strided, padded
gather: ResNet-18's 3x3 stride-2 pool took 1.5-2 ms on one core, ten times ONNX Runtime. The
max of a window is the max over its columns of the max over its rows, so the CPU target pass
`separate_pools` marks max pools `separable`, which lower to `MaxPool2d.separable_max_pool`:
a row pass over whole contiguous input rows (`ROWS_BLOCK`, vectorized, padding folded into
-inf) and a column pass reading that short row buffer (0.09 ms for the same pool, measured in
one process against ORT's 0.17 ms). Undilated average pools are split the same way into sums
(`AvgPool2d.separable_avg_pool`; Inception-v3's 3x3 stride-1 pools of 768 ch 17x17 0.95 ->
0.25 ms each, 2048 ch 8x8 0.77 -> 0.24, ORT's 0.09 and 0.06). Short rows are TVM's vector
code, long ones LLVM's (`vectorize_short`)."""
from __future__ import annotations

from ....ops.pool import COLUMNS_ATTR, COLUMNS_BLOCK, COLUMNS_SUM_BLOCK, ROWS_BLOCK, \
    ROWS_SUM_BLOCK
from .common import (PARALLEL_MIN_ELEMENTS, blocks_of, extent, inline_elementwise,
                     reverse_compute_inline, schedule_elementwise)
from .phases import segments

NAME = "pool2d"
# Rows (of either pass) up to this many vector registers long are vectorized by TVM.
SHORT_ROW_REGISTERS = 2


def schedule(sch, vec) -> bool:
    """Parallel over (n, c), the row pass computed per output row and both passes vectorized
    along the row; None for functions without the separable pool blocks."""
    names = {sch.get(b).name_hint: b for b in blocks_of(sch)}
    pair = next(((r, c) for r, c in ((ROWS_BLOCK, COLUMNS_BLOCK),
                                     (ROWS_SUM_BLOCK, COLUMNS_SUM_BLOCK))
                 if r in names and c in names), None)
    if pair is None:
        return None
    rows, columns = names[pair[0]], names[pair[1]]
    inline_elementwise(sch, keep=[rows, columns])
    _consumers_into_columns(sch, rows, columns, vec)
    n, c, oh, ow = sch.get_loops(columns)
    planes = sch.fuse(n, c)
    if extent(planes, sch) * extent(oh, sch) * extent(ow, sch) >= PARALLEL_MIN_ELEMENTS:
        sch.parallel(planes)
    lanes = register_lanes(sch, columns, vec)
    sch.compute_at(rows, oh)
    vectorize_short(sch, ow, lanes)
    if len(sch.get_loops(rows)) == 2:
        # A row of one column: TVM gives the row pass no loop of its own under (planes, oh),
        # and its last loop is the columns' oh, which splitting or vectorizing would break
        # (a width-1 max pool computed wrong values, an average pool's build crashed).
        return True
    if sch.get(rows).annotations[COLUMNS_ATTR][2]:
        _vectorize_rows(sch, rows, lanes)
    else:
        vectorize_short(sch, sch.get_loops(rows)[-1], lanes)
    return True


def register_lanes(sch, block, vec) -> int:
    """Elements of the block's output dtype in one vector register."""
    bits = sch.get(block).writes[0].source.dtype.bits
    return vec.lanes * 32 // bits


def vectorize_short(sch, loop, lanes: int) -> None:
    """`loop` as TVM vector code where it spans at most SHORT_ROW_REGISTERS registers; a longer
    one is left to LLVM's loop vectorizer, whose unrolled vector loops ran the passes faster
    than a TVM vector of the whole row, which LLVM then splits (3x3 stride 2, 64 ch 112x112:
    0.09 ms, against 1.15), or one a register at a time (2x2 stride 2, 128 ch 112x112: 0.10
    ms, against 0.19). On short rows LLVM's vectors (16 lanes, unrolled 4 times) never start,
    and it ran the strided columns pass a lane at a time with gathers: 16 ch 28x28, 2x2
    stride 2, on Zen 4, 7.4 us, 1.1 in TVM's."""
    if extent(loop, sch) <= SHORT_ROW_REGISTERS * lanes:
        sch.vectorize(loop)


def _vectorize_rows(sch, rows, lanes: int) -> None:
    """The rows pass's columns as up to three vector loops: the left padding, the input's
    columns and the right padding. As one loop each lane would read under its own bounds check,
    which TVM's vectorizer turns into scalar code (Inception-v3's 3x3 average pools of 768 ch
    17x17, one core: 0.15-0.16 ms, 0.134 in parts; GoogLeNet's 3x3 stride-1 max pools in
    bfloat16 9x slower). A padded max pool's maximum is written without Lets for this
    (`MaxPool2d.separable_max_pool`): as a chain of Lets, vectorized in parts, it came out
    wrong on the rows where part of the window is padding."""
    loop = sch.get_loops(rows)[-1]
    left, width = (int(v) for v in sch.get(rows).annotations[COLUMNS_ATTR][:2])
    parts, _ = segments(sch, loop, left, width, extent(loop, sch))
    for part in parts:
        vectorize_short(sch, part, lanes)


def _consumers_into_columns(sch, rows, columns, vec) -> None:
    """Blocks after the pool in the same kernel (the reshape that flattens its output for a
    pointwise conv, a concatenation, an unpooling) are computed by the column pass where they
    read only its output, else scheduled as elementwise loops: left alone they ran as serial
    scalar copies (GoogLeNet's stem pool + reshape, 64 ch 56x56: 200,704 serial iterations)."""
    pooled = sch.get(columns).writes[0].source
    for block in blocks_of(sch):
        if any(sch.get(block).same_as(sch.get(b)) for b in (rows, columns)):
            continue
        reads = sch.get(block).reads
        if len(reads) == 1 and reads[0].source.same_as(pooled) and \
                reverse_compute_inline(sch, block):
            continue
        schedule_elementwise(sch, block, vec.lanes)
