"""Everything that is not a GEMM-like kernel: pooling, global reductions, softmax, batch-norm
without a conv, elementwise and layout ops. Elementwise producers are inlined into their
consumers; what remains is run with parallel outer loops and vector (or unrolled) inner loops.
A concatenation is split along its axis into pieces that each read one input."""
from __future__ import annotations

import math

from .common import (VectorShape, blocks_of, inline_elementwise, is_reduction,
                     schedule_elementwise, schedule_reduction)

NAME = "generic"
# TOPI's concatenate block; its body picks the input by a chain of comparisons on the axis.
CONCAT_BLOCK = "T_concat"
# At most this many pieces per concatenation (one loop nest each).
MAX_CONCAT_PIECES = 64


def schedule(sch, vec: VectorShape) -> bool:
    concats = [sch.get(b).name_hint for b in blocks_of(sch)
               if sch.get(b).name_hint.startswith(CONCAT_BLOCK)]
    for name in concats:
        partition_concat(sch, sch.get_sblock(name))
    inline_elementwise(sch, keep=[])
    for block in blocks_of(sch):
        if is_reduction(sch.get(block)):
            schedule_reduction(sch, block, vec.lanes)
        else:
            schedule_elementwise(sch, block, vec.lanes)
    return True


def partition_concat(sch, block) -> None:
    """Split a concatenation's loop over its axis into pieces of the inputs' common divisor, so
    that in each piece the choice of input is a constant and simplifies away, instead of a chain
    of one comparison per input for every element (DenseNet-121's 16 inputs + batch norm + relu
    at 14x14: 1.37 ms -> 0.09 ms, ORT 0.07 ms). Its elementwise consumers are first pulled into
    it, so they run in the same pieces. Left whole when the pieces would be too many."""
    from tvm.s_tir import ScheduleError
    while True:
        consumers = sch.get_consumers(block)
        if len(consumers) != 1 or is_reduction(sch.get(consumers[0])):
            break
        try:
            sch.reverse_compute_inline(consumers[0])
        except ScheduleError:   # e.g. a consumer reading the concatenation in another layout
            break
    stmt = sch.get(block)
    out = [int(d) for d in stmt.writes[0].source.shape]
    sizes, axes = [], set()
    for region in stmt.reads:
        shape = [int(d) for d in region.source.shape]
        differing = [i for i, (a, b) in enumerate(zip(shape, out)) if a != b]
        if len(shape) == len(out) and len(differing) == 1:
            sizes.append(shape[differing[0]])
            axes.add(differing[0])
    loops = sch.get_loops(block)
    if len(axes) != 1 or len(loops) != len(out):
        return
    axis = axes.pop()
    piece = math.gcd(*sizes)
    if not 1 < out[axis] // piece <= MAX_CONCAT_PIECES:
        return
    sch.loop_partition(loops[axis], [piece] * (out[axis] // piece - 1) + [None])
