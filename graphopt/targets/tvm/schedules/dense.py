"""dense / matmul with a constant right-hand side (`linear` lowers to x @ W^T, whose transpose
FoldConstant folds): columns are the vector axis, a few rows the other side of the register
tile, and the weight [K, N] is repacked to [N / block, K, block] so the reduction streams it."""
from __future__ import annotations

from .common import VectorShape, blocks_of, inline_elementwise, iter_kinds
from .tiled import (WeightPacking, accumulator_writer, finish_tile,
                    spatial_rest, balanced_tile, weight_param_index)

NAME = "dense"
MAX_ROW_TILE = 4


def find_matmul(sch):
    found = [b for b in blocks_of(sch) if iter_kinds(sch.get(b)) == "SSR"]
    return found[0] if len(found) == 1 else None


def column_block(columns: int, rows_per_tile: int, vec: VectorShape) -> tuple[int, int] | None:
    """(columns per tile, lanes per register): as many whole vector registers as the accumulator
    budget allows after the row tile, dividing `columns`; failing that, half-width registers
    (84 classes: 3 x 4 lanes); failing that, the widest divisor of `columns` that fits, as one
    vector with a partial tail (e.g. 10 classes)."""
    registers = max(1, vec.accumulators // rows_per_tile)
    for lanes in (vec.lanes, vec.lanes // 2):
        for count in range(registers, 0, -1):
            if lanes >= 4 and columns % (count * lanes) == 0:
                return count * lanes, lanes
    fitting = [d for d in range(2, registers * vec.lanes + 1) if columns % d == 0]
    return (max(fitting), max(fitting)) if fitting else None


def schedule(sch, vec: VectorShape, packable) -> list[WeightPacking] | None:
    matmul = find_matmul(sch)
    if matmul is None:
        return None
    block = sch.get(matmul)
    i_var, j_var, k_var = (iv.var for iv in block.iter_vars)
    weight = weight_param_index(sch.mod["main"], block, [k_var, j_var])
    if weight is None or weight[0] not in packable:
        return None
    rows, columns = (int(block.iter_vars[a].dom.extent) for a in (0, 1))
    row_tile = balanced_tile(rows, MAX_ROW_TILE)
    blocking = column_block(columns, row_tile, vec)
    if blocking is None:
        return None
    col_block, lanes = blocking

    inline_elementwise(sch, keep=[matmul, *sch.get_producers(matmul)])
    matmul = find_matmul(sch)
    writer = accumulator_writer(sch, matmul)
    if writer is None:
        return None
    read_index = next(a for a, r in enumerate(sch.get(matmul).reads) if r.source.same_as(weight[1]))
    sch.transform_layout(matmul, ("read", read_index), lambda k, j: (j // col_block, k, j % col_block))
    sch.transform_layout(matmul, ("write", 0), lambda i, j: (j // col_block, i, j % col_block))

    i, j, k = sch.get_loops(matmul)
    j_outer, j_inner = sch.split(j, [None, col_block])
    i_outer, i_inner = sch.split(i, [None, row_tile])
    if col_block > lanes:
        # One register per vector: LLVM splits a wider vector (e.g. 24 lanes on AVX2) badly,
        # spilling the tile through the stack (LeNet-5's 64x400x120 layer ran 9x slower).
        j_registers, j_lanes = sch.split(j_inner, [None, lanes])
        sch.reorder(j_outer, i_outer, k, i_inner, j_registers, j_lanes)
        finish_tile(sch, matmul, None, [j_outer, i_outer], j_lanes, [i_inner, j_registers], k,
                    writer, writer_lanes=lanes)
    else:
        sch.reorder(j_outer, i_outer, k, i_inner, j_inner)
        finish_tile(sch, matmul, None, [j_outer, i_outer], j_inner, [i_inner], k, writer)
    spatial_rest(sch, matmul, vec)
    return [WeightPacking(weight[0], lambda w: _pack_kn(w, col_block))]


def _pack_kn(w, col_block: int):
    k, n = w.shape
    return w.reshape(k, n // col_block, col_block).transpose(1, 0, 2).copy()
