"""bfloat16 linear layers and matmuls by a constant on AVX512-BF16's `vdpbf16ps`: each step
adds the products of a pair of inputs (one broadcast uint32) and a [block, 2] slice of the
weight to `block` float32 accumulators, one instruction per 16 columns.

`select_dense_layout` records algorithm "dpbf16" on a bfloat16 `linear` / `matmul` whose weight
it packs (`weight_block`, whole 16-lane registers) where the CPU has AVX512-BF16 but no
AMX-BF16, as `select_conv_algorithm` does for convolutions (`conv2d_bf16.py`, whose
instruction wrapper and intrinsic this rule uses). The float32 dense rule widens each bfloat16
weight in registers (two instructions per vector), or a small weight at lowering, which
streams twice the bytes. Here the weight stays bfloat16, [ceil(N / block), ceil(K / 2), block,
2] (`pack_weight`), and the rows are copied as pairs of bits first ([M, ceil(K / 2), 2],
zero-padded). The sums are float32 in another order than the interpreter's, as on the
convolutions (`conv2d_bf16`'s docstring: denormals as zero); the caller adds the bias and
rounds once."""
from __future__ import annotations

import numpy as np

from ....errors import LoweringError
from . import conv2d_bf16, conv2d_int8
from .common import VectorShape, blocks_of, inline_elementwise, iter_kinds
from .dense import MAX_ROW_TILE
from .phases import real_columns
from .tiled import accumulator_writer, finish_tile, packed_weight, spatial_rest

NAME = "dense_bf16"
ALGORITHM = conv2d_bf16.ALGORITHM
LANES, PAIR = conv2d_bf16.LANES, conv2d_bf16.PAIR
MATMUL_BLOCK, PAIRS_BLOCK = "matmul_dpbf16", "matmul_pairs"


def pack_weight(weight_kn: np.ndarray, block: int) -> np.ndarray:
    """[K, N] bfloat16 -> its bits (uint16) as [ceil(N / block), ceil(K / 2), block, 2], zero
    rows and columns padding the last pair and block."""
    if str(weight_kn.dtype) != "bfloat16":
        raise LoweringError(f"the dpbf16 product takes a bfloat16 weight, found {weight_kn.dtype}")
    if block % LANES:
        raise LoweringError(f"the dpbf16 product packs whole {LANES}-column registers, found "
                            f"a block of {block}")
    depth, columns = weight_kn.shape
    pairs, blocks = -(-depth // PAIR), -(-columns // block)
    padded = np.zeros((pairs * PAIR, blocks * block), np.uint16)
    padded[:depth, :columns] = weight_kn.view(np.uint16)
    return np.ascontiguousarray(
        padded.reshape(pairs, PAIR, blocks, block).transpose(2, 0, 3, 1))


def matmul_dpbf16(x, packed, columns: int):
    """TE: x [M, K] (bfloat16) times the packed weight, float32 sums [M, columns] (the padded
    columns computed and sliced off)."""
    from tvm import te, tirx
    rows, depth = (int(d) for d in x.shape)
    blocks, pairs, block = (int(d) for d in packed.shape[:3])
    zero = tirx.const(0, "uint16")
    paired = te.compute(
        (rows, pairs, PAIR),
        lambda i, p, c: tirx.if_then_else(p * PAIR + c < depth,
                                          conv2d_bf16.bits_of(x[i, p * PAIR + c]), zero),
        name=PAIRS_BLOCK)
    rp, rc = te.reduce_axis((0, pairs), "rp"), te.reduce_axis((0, PAIR), "rc")
    tile = te.compute(
        (rows, blocks * block),
        lambda i, j: te.sum(conv2d_bf16.widen(paired[i, rp, rc])
                            * conv2d_bf16.widen(packed[j // block, rp, j % block, rc]),
                            axis=[rp, rc]),
        name=MATMUL_BLOCK)
    return real_columns(tile, columns)


def find_matmul(sch):
    """The matmul_dpbf16 block (i, j; pairs, pair) reading a [*, *, block, 2] uint16 weight."""
    found = [b for b in blocks_of(sch) if iter_kinds(sch.get(b)) == "SSRR"
             and sch.get(b).name_hint == MATMUL_BLOCK]
    return found[0] if len(found) == 1 else None


def schedule(sch, vec: VectorShape) -> bool | None:
    """The float32 dense rule's tile (a few rows by the block's registers, the reduction over
    pairs outside it), each register's step one vdpbf16ps; None for other functions."""
    matmul = find_matmul(sch)
    if matmul is None or not conv2d_bf16.available(vec):
        return None
    weight = packed_weight(sch.mod["main"], sch.get(matmul), rank=4)   # `pack_weight`'s
    col_block = int(weight.shape[2]) if weight is not None else 0
    if not col_block or col_block % LANES:
        return None
    conv2d_bf16.register_intrinsic()
    pairs = [b for b in blocks_of(sch) if sch.get(b).name_hint == PAIRS_BLOCK]
    # A producer stays a block of its own (lowering takes none into this function, see
    # `ops.base.OUT_ELEMWISE_FUSABLE`): inlined into the copy, a cast to bfloat16 would lose
    # its rounding (TVM computes bfloat16 expressions in float32 and rounds only on storing
    # one, so `bits_of(cast)` took the float32 value's high half: truncated).
    producers = [p for block in pairs for p in sch.get_producers(block)]
    inline_elementwise(sch, keep=[matmul, *pairs, *producers])
    matmul = find_matmul(sch)
    writer = accumulator_writer(sch, matmul)
    if writer is None:
        return None
    rows = int(sch.get(matmul).iter_vars[0].dom.extent)
    # whole tiles of rows: the instruction takes no predicate (the float32 rule's balanced
    # tiles leave the last one partial)
    row_tile = conv2d_int8.row_tile(rows, MAX_ROW_TILE)
    sch.transform_layout(matmul, ("write", 0), lambda i, j: (j // col_block, i, j % col_block))
    i, j, rp, rc = sch.get_loops(matmul)
    j_outer, j_inner = sch.split(j, [None, col_block])
    i_outer, i_inner = sch.split(i, [None, row_tile])
    j_registers, j_lanes = sch.split(j_inner, [None, LANES])
    sch.reorder(j_outer, i_outer, rp, i_inner, j_registers, j_lanes, rc)
    finish_tile(sch, matmul, None, [j_outer, i_outer], None, [i_inner, j_registers], rp,
                writer, writer_lanes=LANES)
    spatial_rest(sch, matmul, vec)
    sch.annotate(sch.get_loops(matmul)[0], "pragma_import_llvm", conv2d_bf16.WRAPPER_IR)
    sch.tensorize(j_lanes, conv2d_bf16.INTRINSIC)
    return True
