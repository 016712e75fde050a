"""3x3 stride-1 convolutions as Winograd F(2x2, 3x3), and the rule that schedules them.

Each 2x2 output tile is computed from a 4x4 input tile with 16 multiply-adds per input channel
instead of 36: the input tiles are transformed (`B^T d B`), multiplied by the weights transformed
offline (`G g G^T`, a constant) in 16 independent GEMMs over the input channels, and transformed
back (`A^T m A`). With 32 or more input channels on planes up to 112x112 the kernel beats the
direct one (one AVX2 core, batch 1, graphopt direct / Winograd / ONNX Runtime, ms): 32 ch 56x56
0.64 / 0.52 / 0.63, 64 ch 56x56 2.56 / 1.84 / 2.46, 128 ch 28x28 2.48 / 1.47 / 2.38, 256 ch 14x14
2.66 / 1.39 / 2.36, 512 ch 7x7 3.1-3.4 / 1.65 / 2.30, 64->128 ch 112x112 19.6 / 18.3 / 19.9.
With 16 channels or fewer the transforms cost what the GEMMs save (16 ch 56x56 0.17 / 0.18 /
0.22), and on a 224x224 plane the transformed tensors leave the cache (64 ch 44.6 / 43.6 /
40.8), so `applies` leaves those to the direct kernel. The transforms of F(2x2, 3x3) use only 0,
+-1 and +-1/2: the results agree with the direct convolution to ~1e-6 relative."""
from __future__ import annotations

import numpy as np

from .common import PARALLEL_MIN_MACS, VectorShape, blocks_of, extent, inline_elementwise

NAME = "winograd"
TILE, ALPHA = 2, 4  # output tile and input tile side
ROWS, INPUT, GEMM, OUTPUT = "wino_rows", "wino_input", "wino_gemm", "wino_output"
# Input channels from which the Winograd kernel beats the direct one: 32 with 8 lanes (AVX2, see
# above); with 16 lanes (AVX-512) the direct kernel's wider FMAs win below 128 (one Xeon core, ms,
# Winograd / direct / ORT: 64 ch 56x56 2.05 / 1.56 / 1.47, 64->128 ch 112x112 15.5 / 12.6 / 12.0,
# 128->256 ch 56x56 10.9 / 11.9 / 11.4, 256 ch 14x14 1.02 / 1.43 / 1.45).
MIN_CHANNELS = {8: 32, 16: 128}
# 2x2 output tiles (over the batch) from which the transformed weights, 16/9 the size of the
# direct kernel's, are reused enough: with 16 lanes a 7x7 plane at batch 1 (16 tiles) spends
# more time streaming its 512-channel weights (16 MB) than the GEMMs save (ms, weights not in
# cache, Winograd / direct: 512 ch 7x7 2.46 / 2.01 at batch 1, 12.0 / 13.8 at batch 8;
# 256 ch 14x14 1.27 / 1.61). With 8 lanes the direct kernel is slow enough that Winograd wins.
MIN_TILES = {8: 1, 16: 32}
MAX_PLANE = 112 * 112
# Input channels per weight block in the GEMMs: 64 x 16 floats (4 KB) stay in L1 while every
# tile of the block uses them.
CHANNEL_BLOCK = 64

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])


def applies(in_channels: int, out_channels: int, out_h: int, out_w: int, kernel, stride,
            dilation, groups: int, padding, vec: VectorShape, batch: int = 1) -> bool:
    """Whether a conv takes the Winograd kernel: 3x3, stride 1, 'same' padding, no dilation or
    groups, many channels (output channels in whole two-register blocks) on a small plane with
    enough tiles to reuse the transformed weights."""
    tiles = batch * -(-out_h // TILE) * -(-out_w // TILE)
    return (tuple(kernel) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and groups == 1 and tuple(padding) == (1, 1, 1, 1)
            and in_channels >= MIN_CHANNELS.get(vec.lanes, 32)
            and tiles >= MIN_TILES.get(vec.lanes, 1)
            and out_channels % channel_block(vec) == 0 and out_h * out_w <= MAX_PLANE)


def channel_block(vec: VectorShape) -> int:
    """Output channels per GEMM tile: two vector registers."""
    return 2 * vec.lanes


def transform_weight(weight: np.ndarray, block: int) -> np.ndarray:
    """OIHW 3x3 weight -> `G g G^T` packed [4, 4, O / block, I, block] (in float64, then the
    weight's dtype), the layout the GEMM stage streams."""
    u = np.einsum("ea,kcab,vb->evkc", G, weight.astype(np.float64), G)
    o, i = weight.shape[:2]
    packed = u.reshape(ALPHA, ALPHA, o // block, block, i).transpose(0, 1, 2, 4, 3)
    return np.ascontiguousarray(packed, dtype=weight.dtype)


def _combine(values, coefficients):
    """sum(c * v) over the non-zero coefficients, with +-1 as plain adds/subtracts."""
    total = None
    for v, c in zip(values, coefficients):
        if c == 0:
            continue
        term = v if c == 1 else (-v if c == -1 else v * float(c))
        total = term if total is None else total + term
    return total


def _select(index, choices):
    """choices[index] for a loop variable `index` (folded once the loop is unrolled)."""
    from tvm import tirx
    out = choices[-1]
    for i in range(len(choices) - 2, -1, -1):
        out = tirx.if_then_else(index == i, choices[i], out)
    return out


def winograd_conv2d(x, u):
    """TE compute of a 3x3 stride-1 'same' conv on NCHW `x` with the transformed weight `u`
    ([4, 4, O / block, I, block], from `transform_weight`). Stages: `ROWS` (B^T down the columns
    of whole padded input rows, contiguous), `INPUT` (B along the rows: V[e, n, c, tile]),
    `GEMM` (M[e, n, tile, o] = sum_c U V) and `OUTPUT` (A^T M A, written as NCHW)."""
    from tvm import te, tirx
    n, c, h, w = (int(d) for d in x.shape)
    blocks, block = int(u.shape[2]), int(u.shape[4])
    out_c = blocks * block
    tiles_h, tiles_w = -(-h // TILE), -(-w // TILE)
    tiles = n * tiles_h * tiles_w
    zero = tirx.const(0, x.dtype)

    def padded(b, ch, row, col):
        inside = tirx.all(row >= 1, row < h + 1, col >= 1, col < w + 1)
        return tirx.if_then_else(inside, x[b, ch, row - 1, col - 1], zero)

    rows = te.compute(
        (n, c, tiles_h, ALPHA, TILE * tiles_w + 2),
        lambda b, ch, th, e, col: _select(e, [_combine(
            [padded(b, ch, TILE * th + a, col) for a in range(ALPHA)], B_T[k]) for k in range(ALPHA)]),
        name=ROWS)

    def input_tile(e, v, ch, t):
        b, th, tw = t // (tiles_h * tiles_w), (t // tiles_w) % tiles_h, t % tiles_w
        return _select(v, [_combine([rows[b, ch, th, e, TILE * tw + a] for a in range(ALPHA)], B_T[k])
                            for k in range(ALPHA)])

    transformed = te.compute((ALPHA, ALPHA, c, tiles), input_tile, name=INPUT)
    rc = te.reduce_axis((0, c), "rc")
    products = te.compute(
        (ALPHA, ALPHA, tiles, out_c),
        lambda e, v, t, o: te.sum(u[e, v, o // block, rc, o % block] * transformed[e, v, rc, t],
                                  axis=rc),
        name=GEMM)

    def output(b, o, row, col):
        t = b * tiles_h * tiles_w + (row // TILE) * tiles_w + col // TILE
        per_row = []
        for i in range(TILE):
            columns = [_combine([products[e, v, t, o] for e in range(ALPHA)], A_T[i])
                       for v in range(ALPHA)]
            per_row.append(_select(col % TILE, [_combine(columns, A_T[j]) for j in range(TILE)]))
        return _select(row % TILE, per_row)

    return te.compute((n, out_c, h, w), output, name=OUTPUT)


def schedule(sch, vec: VectorShape) -> bool:
    """Input transform per input channel, the GEMMs register-tiled like the direct conv (output
    channels as the vector axis, a few tiles as the other side; weights streamed in L1-sized
    channel blocks), the output transform per 2x2 tile, vectorized over output channels, with
    the epilogue inlined."""
    names = {sch.get(b).name_hint: b for b in blocks_of(sch)}
    if not all(k in names for k in (ROWS, INPUT, GEMM, OUTPUT)):
        return None
    inline_elementwise(sch, keep=[names[k] for k in (ROWS, INPUT, GEMM, OUTPUT)])
    for block in blocks_of(sch):  # the epilogue that writes the function's output
        if sch.get(block).name_hint not in names:
            sch.reverse_compute_inline(block)
    names = {sch.get(b).name_hint: b for b in blocks_of(sch)}
    rows, transformed, products, output = (names[k] for k in (ROWS, INPUT, GEMM, OUTPUT))

    # The input transform reads each row pass result at 2 * tile + a: stored with even and odd
    # columns apart, those reads are contiguous and the transform vectorizes over the tiles of a
    # row (the row pass writes both halves with contiguous stores). Measured on 128 channels at
    # 28x28: 2.17 ms with the scalar transform, 1.43 ms this way.
    tiles_w = (int(sch.get(rows).writes[0].source.shape[4]) - 2) // 2
    sch.transform_layout(rows, ("write", 0),
                         lambda b, c, th, e, col: (b, c, th, e, col % 2, col // 2))
    e, v, ch, t = sch.get_loops(transformed)
    t_rows, t_in_row = sch.split(t, [None, tiles_w])
    sch.reorder(ch, t_rows, e, v, t_in_row)
    sch.compute_at(rows, ch)
    sch.unroll(e)
    sch.unroll(v)
    sch.vectorize(t_in_row)
    if extent(ch, sch) > 1:
        sch.parallel(ch)
    *_, row_e, row_col = sch.get_loops(rows)
    sch.unroll(row_e)
    half, parity = sch.split(row_col, [None, 2])
    sch.reorder(parity, half)
    sch.vectorize(half)

    e, v, t, o, rc = sch.get_loops(products)
    weight = next(r.source for r in sch.get(products).reads if len(r.source.shape) == 5)
    tiles, block, in_channels = extent(t, sch), int(weight.shape[4]), int(weight.shape[3])
    tile = 4 if tiles % 4 == 0 else 6
    o_outer, o_inner = sch.split(o, [None, block])
    t_outer, t_inner = sch.split(t, [None, tile])
    rc_outer, rc_inner = (sch.split(rc, [None, CHANNEL_BLOCK]) if in_channels % CHANNEL_BLOCK == 0
                          else (None, rc))
    if rc_outer is not None:
        sch.reorder(e, v, o_outer, rc_outer, t_outer, rc_inner, t_inner, o_inner)
    else:
        sch.reorder(e, v, o_outer, t_outer, rc_inner, t_inner, o_inner)
    accumulators = sch.cache_write(products, 0, "local")
    outer = sch.fuse(e, v, o_outer)
    macs = extent(outer, sch) * block * tiles * in_channels
    if macs >= PARALLEL_MIN_MACS:
        sch.parallel(outer)
    sch.reverse_compute_at(accumulators, outer if rc_outer is not None else t_outer)
    sch.vectorize(o_inner)
    sch.unroll(t_inner)
    init = sch.decompose_reduction(products, rc_outer if rc_outer is not None else rc_inner)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(accumulators)[-1])

    # Vectors over output channels: the 16 transformed values of a tile are contiguous there
    # (scalar reads strided by the channel count cost 0.4-0.8 ms per conv and made the kernel
    # lose to the direct one below 256 channels).
    b, o, row, col = sch.get_loops(output)
    row_outer, row_inner = sch.split(row, [None, TILE])
    col_outer, col_inner = sch.split(col, [None, TILE])
    o_outer, o_inner = sch.split(o, [None, vec.lanes])
    sch.reorder(b, o_outer, row_outer, col_outer, row_inner, col_inner, o_inner)
    sch.unroll(row_inner)
    sch.unroll(col_inner)
    sch.vectorize(o_inner)
    planes = sch.fuse(b, o_outer)
    if extent(planes, sch) > 1:
        sch.parallel(planes)
    return True
