"""Everything that is not a GEMM-like kernel: pooling, global reductions, softmax, batch-norm
without a conv, elementwise and layout ops. Elementwise producers are inlined into their
consumers; what remains is run with parallel outer loops and vector (or unrolled) inner loops."""
from __future__ import annotations

from .common import (VectorShape, blocks_of, inline_elementwise, is_reduction,
                     schedule_elementwise, schedule_reduction)

NAME = "generic"


def schedule(sch, vec: VectorShape) -> bool:
    inline_elementwise(sch, keep=[])
    for block in blocks_of(sch):
        if is_reduction(sch.get(block)):
            schedule_reduction(sch, block, vec.lanes)
        else:
            schedule_elementwise(sch, block, vec.lanes)
    return True
