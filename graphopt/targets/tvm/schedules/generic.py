"""Everything that is not a GEMM-like kernel: pooling, global reductions, softmax, batch-norm
without a conv, elementwise and layout ops. Elementwise producers are inlined into their
consumers; what remains is run with parallel outer loops and vector (or unrolled) inner loops.
A concatenation is split along its axis into pieces that each read one input."""
from __future__ import annotations

import math

from .common import (PARALLEL_MIN_ELEMENTS, VectorShape, blocks_of, extent,
                     inline_elementwise, is_reduction, reverse_compute_inline,
                     schedule_elementwise, schedule_reduction)

NAME = "generic"
# TOPI's concatenate block; its body picks the input by a chain of comparisons on the axis.
CONCAT_BLOCK = "T_concat"
# The block holding a concatenation's pieces under the loops outside its axis ends so.
COMMON_SUFFIX = "_common"
# At most this many pieces per concatenation (one loop nest each).
MAX_CONCAT_PIECES = 64


def schedule(sch, vec: VectorShape) -> bool:
    concats = [sch.get(b).name_hint for b in blocks_of(sch)
               if sch.get(b).name_hint.startswith(CONCAT_BLOCK)]
    pieces = set()
    # Chained concatenations in one kernel (tile's copies along several axes) stay whole: their
    # pieces would nest one vectorized row in another.
    for name in concats if len(concats) == 1 else ():
        pieces |= partition_concat(sch, sch.get_sblock(name), vec.lanes)
    inline_elementwise(sch, keep=[])
    for block in blocks_of(sch):
        if sch.get(block).name_hint in pieces:
            continue
        if sch.get(block).name_hint.endswith(COMMON_SUFFIX):
            _schedule_loops_around_pieces(sch, block, vec.lanes)
            continue
        if is_reduction(sch.get(block)):
            schedule_reduction(sch, block, vec.lanes)
        else:
            schedule_elementwise(sch, block, vec.lanes)
    return True


def partition_concat(sch, block, lanes: int) -> set[str]:
    """Split a concatenation's loop over its axis into one piece per input, so that in each
    piece the choice of input is a constant and simplifies away, instead of a chain
    of one comparison per input for every element (DenseNet-121's 16 inputs + batch norm + relu
    at 14x14: 1.37 ms -> 0.09 ms, ORT 0.07 ms). Its elementwise consumers are first pulled into
    it, so they run in the same pieces. Pieces of the inputs' common divisor (32 channels in
    DenseNet-121, whose first inputs have 64-512) ran as fast but were more to build: its
    compile took 20.2-23.0 s against 18.5-19.0 s (two Xeon cores, three compiles each, outputs
    equal bit for bit). Left whole when the pieces would be too many. Returns
    the names of the pieces, scheduled here: parallel when a piece is big enough, rows
    vectorized (whole when shorter than 4 vectors)."""
    stmt = sch.get(block)
    out = [int(d) for d in stmt.writes[0].source.shape]
    slices = _input_slices(stmt, out)
    if slices is None:
        return set()
    axis, sizes = slices
    while True:
        consumers = sch.get_consumers(block)
        if len(consumers) != 1 or is_reduction(sch.get(consumers[0])):
            break
        # not made for, e.g., a consumer reading the concatenation in another layout
        if not reverse_compute_inline(sch, consumers[0]):
            break
    # A consumer pulled in may have merged the dimensions after the axis (a reshape of NCHW to
    # [N, C, H * W] feeding a pointwise conv): the block still iterates over the concatenation,
    # and the pieces are still slices of its axis.
    stmt = sch.get(block)
    written = [int(d) for d in stmt.writes[0].source.shape]
    loops = sch.get_loops(block)
    if written[:axis + 1] != out[:axis + 1] or len(loops) != len(out):
        return set()
    if not 1 < len(sizes) <= MAX_CONCAT_PIECES:
        return set()
    name = stmt.name_hint
    sch.loop_partition(loops[axis], sizes[:-1] + [None])
    # each piece: a "<name>_ax<k>_partition" block holding the piece's loops and block, under a
    # "<name>_ax<k>_common" block holding the loops outside the axis
    # (`_schedule_loops_around_pieces`)
    pieces = set()
    for wrapper in blocks_of(sch):
        if not sch.get(wrapper).name_hint.startswith(name):
            continue
        for part in sch.get_child_blocks(wrapper):
            if sch.get(part).name_hint.endswith("_partition"):
                for inner in sch.get_child_blocks(part):
                    pieces.add(sch.get(inner).name_hint)
    for piece_name in pieces:
        _schedule_piece(sch, sch.get_sblock(piece_name), lanes)
    return pieces


def _schedule_loops_around_pieces(sch, block, lanes: int) -> None:
    """The loops outside a concatenation's axis, which hold its pieces (the "<name>_ax<k>_common"
    block): as an elementwise block's, but a loop of whole vectors stays serial. Split and
    vectorized it held the pieces' vector rows and the kernel failed to build (16 channels
    along the rows, 16 images along the channels). A shorter one, vectorized whole around
    them, builds (TVM drops the inner vectorization) and stays so: all serial, GoogLeNet at
    batch 4 (its concatenations along the channels) took 1.10-1.13x the time at one thread
    and 0.83x at two, DenseNet-121 at batch 2 0.99-1.01x and 0.89-1.02x (AMD Zen 5, builds
    alternated in one process)."""
    loops = sch.get_loops(block)
    if loops and extent(loops[-1], sch) % lanes == 0:
        return
    schedule_elementwise(sch, block, lanes)


def _input_slices(stmt, out: list[int]):
    """(axis, [size of each input's slice, in the order of the axis]) of a concatenation block,
    or None where they differ from it in more than one axis. The block reads its inputs in the
    order of its chain of comparisons (TOPI's: the last input first), so each slice's place is
    read from its index: input i is read at `axis - offset_i`. An input joined twice has one
    read region for both: then the axis is cut in pieces of the sizes' common divisor."""
    from tvm import tirx
    from tvm.sym.analyzer import Analyzer
    analyzer = Analyzer()
    iter_vars = [iv.var for iv in stmt.iter_vars]
    slices, axes = [], set()
    for region in stmt.reads:
        shape = [int(d) for d in region.source.shape]
        differing = [i for i, (a, b) in enumerate(zip(shape, out)) if a != b]
        if len(shape) != len(out) or len(differing) != 1:
            continue
        axis = differing[0]
        axes.add(axis)
        if not shape[axis]:     # an empty input adds no slice
            continue
        start = tirx.IndexMap(iter_vars, [region.region[axis].min], None).map_indices(
            [tirx.const(0, "int64") for _ in iter_vars])[0]
        at_zero = analyzer.simplify(start)
        # a start that is no constant gets -1, which fails the tiling test below
        offset = -int(at_zero) if isinstance(at_zero, tirx.IntImm) else -1
        slices.append((offset, shape[axis]))
    if len(axes) != 1 or not slices:
        return None
    (axis,) = axes
    slices.sort()
    ends = [offset + size for offset, size in slices]
    if slices[0][0] == 0 and ends[-1] == out[axis] and all(
            offset == end for (offset, _), end in zip(slices[1:], ends)):
        return axis, [size for _, size in slices]
    piece = math.gcd(*(size for _, size in slices))
    return axis, [piece] * (out[axis] // piece)


def _schedule_piece(sch, block, lanes: int) -> None:
    *outer, row = sch.get_loops(block)
    width = extent(row, sch)
    if width % lanes == 0:
        sch.vectorize(sch.split(row, [None, lanes])[1])
    elif 1 < width <= 4 * lanes:
        sch.vectorize(row)
    if outer and math.prod(extent(l, sch) for l in outer) * width >= PARALLEL_MIN_ELEMENTS:
        # a piece's loop over the axis starts at its offset, and fuse takes only loops from 0
        starts_at_zero = all(int(sch.get(l).min) == 0 for l in outer)
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 and starts_at_zero else outer[0])
