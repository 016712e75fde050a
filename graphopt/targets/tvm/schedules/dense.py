"""dense / matmul with a constant right-hand side: columns are the vector axis, a few rows the
other side of the register tile. The weight arrives packed as [N / block, K, block] (the block
chosen by the target pass `select_dense_layout` with `dense_blocking`, the packing done at
lowering by `ops.linear.pack_columns`, zero columns padding the last block), so the reduction
streams it; the rule changes no weight. The epilogue placed under each tile writes its real
columns (a predicate where the last tile is padded)."""
from __future__ import annotations

from .common import PARALLEL_MIN_MACS, VectorShape, blocks_of, inline_elementwise, iter_kinds
from .tiled import (MAX_PADDING, accumulator_writer, balanced_tile, finish_tile, packed_weight,
                    spatial_rest)

NAME = "dense"
MAX_ROW_TILE = 4
# Tiles (row tiles x column tiles) a parallel product is split into at least, where it can be.
PARALLEL_TASKS = 8


def find_matmul(sch):
    found = [b for b in blocks_of(sch) if iter_kinds(sch.get(b)) == "SSR"]
    return found[0] if len(found) == 1 else None


def dense_blocking(rows: int, columns: int, vec: VectorShape, depth: int | None = None,
                   half_width: bool = True) -> tuple[int, int] | None:
    """(columns per tile, lanes per register) for a rows x columns product (summing `depth`
    products per output, None: unknown), or None: what the target pass records (as the packed
    weight's block). Whole vector registers, or half-width ones, up to the accumulator budget
    left after the row tile, the last tile's columns padded with zeros where they do not
    divide (the kernel writes only the real ones). Chosen by instructions per reduction step
    over all tiles (a tile's FMAs, row broadcasts and weight loads), then a dividing block,
    then the wider; None where padding would more than double the work (`tiled.MAX_PADDING`).
    A tile of one partial vector (39 columns as one 39-lane vector) ran 6-13x slower than
    whole registers (16 x 1024 -> 39, 97 columns: 0.46 and 1.04 ms against 0.07 ms for 48 and
    0.08 ms for 96). A product big enough to run in parallel takes a block that makes at
    least PARALLEL_TASKS tiles where one does: a classifier's single row as three tiles of
    336 columns left one of two threads idle for a third of the time. `half_width`: whether
    half-width registers may be chosen (not for vdpbf16ps, `dense_bf16.py`)."""
    row_tile = balanced_tile(rows, MAX_ROW_TILE)
    registers = max(1, vec.accumulators // row_tile)

    def cost(choice):
        count, lanes = choice
        tiles = -(-columns // (count * lanes))
        return (tiles * (row_tile * count + row_tile + count),
                columns % (count * lanes) != 0, -count * lanes)

    widths = (vec.lanes, vec.lanes // 2) if half_width else (vec.lanes,)
    choices = [(count, lanes) for lanes in widths if lanes >= 4
               for count in range(1, registers + 1)
               if -(-columns // (count * lanes)) * count * lanes <= MAX_PADDING * columns]
    if not choices:
        return None
    if depth is not None and rows * columns * depth >= PARALLEL_MIN_MACS:
        row_tiles = -(-rows // row_tile)
        parallel = [(count, lanes) for count, lanes in choices
                    if row_tiles * -(-columns // (count * lanes)) >= PARALLEL_TASKS]
        choices = parallel or choices
    count, lanes = min(choices, key=cost)
    return count * lanes, lanes


def schedule(sch, vec: VectorShape) -> bool:
    matmul = find_matmul(sch)
    if matmul is None:
        return None
    block = sch.get(matmul)
    weight = packed_weight(sch.mod["main"], block, rank=3)   # ops.linear.pack_columns
    if weight is None:
        return None  # no weight layout was chosen for this product (select_dense_layout)
    rows = int(block.iter_vars[0].dom.extent)
    row_tile = balanced_tile(rows, MAX_ROW_TILE)
    col_block = int(weight.shape[2])
    lanes = next((lanes for lanes in (vec.lanes, vec.lanes // 2)
                  if lanes >= 4 and col_block % lanes == 0), None)
    if lanes is None:
        return None  # packed for another vector width

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
