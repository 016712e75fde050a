"""dense / matmul with a constant right-hand side: columns are the vector axis, a few rows the
other side of the register tile. The weight arrives packed as [N / block, K, block] (the block
chosen by the target pass `select_dense_layout` with `dense_blocking`, the packing done at
lowering by `ops.linear.pack_columns`), so the reduction streams it; the rule changes no
weight."""
from __future__ import annotations

from .common import VectorShape, blocks_of, inline_elementwise, iter_kinds
from .tiled import accumulator_writer, balanced_tile, finish_tile, packed_weight, spatial_rest

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


def dense_blocking(rows: int, columns: int, vec: VectorShape) -> tuple[int, int] | None:
    """(columns per tile, lanes per register) for a rows x columns product, or None: what the
    target pass records (as the packed weight's block) and the rule reads back."""
    return column_block(columns, balanced_tile(rows, MAX_ROW_TILE), vec)


def schedule(sch, vec: VectorShape) -> bool:
    matmul = find_matmul(sch)
    if matmul is None:
        return None
    block = sch.get(matmul)
    weight = packed_weight(sch.mod["main"], block, rank=3)   # ops.linear.pack_columns
    if weight is None:
        return None  # no weight layout was chosen for this product (select_dense_layout)
    rows, columns = (int(block.iter_vars[a].dom.extent) for a in (0, 1))
    row_tile = balanced_tile(rows, MAX_ROW_TILE)
    blocking = column_block(columns, row_tile, vec)
    if blocking is None or blocking[0] != int(weight.shape[2]):
        return None  # packed for another vector width
    col_block, lanes = blocking

    inline_elementwise(sch, keep=[matmul, *sch.get_producers(matmul)])
    matmul = find_matmul(sch)
    writer = accumulator_writer(sch, matmul)
    if writer is None:
        return None
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
    return True
