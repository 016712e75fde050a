"""Depthwise conv2d (groups == input == output channels, NCHW) vectorized along output rows.

A depthwise conv has no reduction over channels to tile (9 or 25 products per output), so the
output row is the vector axis: the tile is a few output rows of one channel, each row whole
vectors of `weight_block` columns (`row_block`: the row padded to whole vectors at lowering,
the epilogue writing only the real columns); every step broadcasts one weight tap and
multiplies a contiguous input row segment. The input is copied into a zero-padded buffer split
into `stride` column phases (`phases.column_phases`), so that a stride-2 tap also reads
contiguous columns, a few channels at a time (`PHASE_GROUP_BYTES`). Lowered by
`depthwise_conv2d` (algorithm "depthwise", `select_conv_algorithm`), scheduled by
`schedule`."""
from __future__ import annotations

from .common import VectorShape, buffer_bytes, extent
from .phases import (column_phases, real_columns, row_conv_blocks, schedule_copy, tap,
                     written_width)
from .tiled import balanced_tile

NAME = "depthwise"
ALGORITHM = "depthwise"
PHASES_BLOCK = "depthwise_phases"
CONV_BLOCK = "depthwise_conv2d"
# The conv block's annotation: its row vector width (`row_block`, the conv's weight_block).
ROW_BLOCK_ATTR = "graphopt.row_block"
# Accumulators per tile: as many output rows as make about this many vectors (two FMA ports of
# four cycles' latency keep eight in flight). More rows share input vectors between their taps
# (row i + 1's tap 0 is row i's tap 1), which LLVM keeps in registers and spills. One AVX-512
# core, us, tiles of all 28 accumulators / of 8: 3x3 32 ch 112x112 277 / 223, 144 ch 56x56
# 323 / 205-229, 576 ch 14x14 86 / 68-100; 5x5 672 ch 7x7 91 (one row) / 58, 240 ch 28x28
# 175 (one row) / 135.
TILE_ACCUMULATORS = 8
# Planes whose phase buffers are copied together, as many as fit this many bytes. Copied one
# plane at a time, a small plane's taps read the buffer while the copy's stores are still in
# flight, and every tap load that spans two of them waits for both to reach the cache (the
# store-to-load forward fails). One AVX-512 core (Zen 4), us, one plane / 16 KB / 4 KB, SiLU:
# 5x5 1152 ch 7x7 174 / 122 / 117, 3x3 1152 ch 7x7 125 / 89, 3x3 144 ch 56x56 468 / 440 / 439.
PHASE_GROUP_BYTES = 8192


def applies(in_channels: int, out_channels: int, groups: int, vector) -> bool:
    """A depthwise conv with a channel multiplier of 1, on a CPU with vector registers."""
    return vector is not None and groups > 1 and in_channels == out_channels == groups


def row_block(out_w: int, vector) -> int:
    """Output columns per vector: the target's lanes, or half of them for rows that fit in
    half a vector (a 7-wide row as 8 lanes, not 16) and, on cores that split 512-bit
    instructions in two (`split_512`), for rows that half vectors pad less: there half vectors
    cost no arithmetic (Zen 4, rows of 8 / 16 lanes, ReLU, us: 56-wide rows, stride 2 96 ch
    112x112 641 / 733, 144 ch 56x56 265 / 288). A row both widths pad alike keeps full ones
    (3x3 32 ch 112x112 with SiLU: 793 us on 8 lanes, 377 on 16)."""
    half = vector.lanes // 2
    if half < 4:
        return vector.lanes
    padded = lambda lanes: -(-out_w // lanes) * lanes  # noqa: E731
    return half if out_w <= half or (vector.split_512 and padded(half) < padded(vector.lanes)) \
        else vector.lanes


def depthwise_conv2d(x, weight, conv, block: int):
    """TE: the depthwise conv of NCHW `x` with `weight` [C, KH, KW], computed on rows padded to
    whole blocks of `block` columns and sliced back to the real width, in the weight's dtype
    (float32: a half-precision input is widened as it is copied into the phase buffer)."""
    from tvm import te
    n, channels = (int(d) for d in x.shape[:2])
    _, k_h, k_w = (int(d) for d in weight.shape)
    phases, (out_h, out_w, padded_w) = column_phases(x, conv, (k_h, k_w), block, PHASES_BLOCK,
                                                      str(weight.dtype))
    ry, rx = te.reduce_axis((0, k_h), "ry"), te.reduce_axis((0, k_w), "rx")
    tile = te.compute(
        (n, channels, out_h, padded_w),
        lambda b, c, i, j: te.sum(tap(phases, conv, b, c, i, j, ry, rx) * weight[c, ry, rx],
                                  axis=[ry, rx]),
        name=CONV_BLOCK, attrs={ROW_BLOCK_ATTR: block})
    return real_columns(tile, out_w)


def schedule(sch, vec: VectorShape) -> bool:
    """Parallel over groups of (image, channel) planes; per group the phase buffers, then per
    plane tiles of output rows (about TILE_ACCUMULATORS vectors; whole rows); per tile a loop
    over the kernel's rows, its columns, the tile's rows and vectors unrolled; the epilogue
    writes each tile from registers. None for functions this rule does not lower."""
    found = row_conv_blocks(sch, CONV_BLOCK, "SSSSRR", PHASES_BLOCK)
    if found is None:
        return None
    conv, copy, writer = found
    n, c, oh, ow, kh, kw = sch.get_loops(conv)
    lanes = int(sch.get(conv).annotations.get(ROW_BLOCK_ATTR, 0))
    if not lanes or extent(ow, sch) % lanes:
        return None   # rows are padded to whole vectors of `row_block`'s lanes at lowering
    vectors = extent(ow, sch) // lanes
    rows = balanced_tile(extent(oh, sch), max(1, TILE_ACCUMULATORS // vectors))
    oh_outer, oh_inner = sch.split(oh, [None, rows])
    ow_vectors, ow_lanes = sch.split(ow, [None, lanes])
    if vectors > vec.accumulators:   # very wide rows: tiles of whole vectors along the row
        per_tile = balanced_tile(vectors, vec.accumulators)
        ow_outer, ow_vectors = sch.split(ow_vectors, [None, per_tile])
        sch.reorder(n, c, oh_outer, ow_outer, kh, kw, oh_inner, ow_vectors, ow_lanes)
        # A padded row, or tiles that do not divide it, would leave the last tile's writer a
        # predicate on its lanes, and TVM writes such a loop element by element (EfficientNet's
        # 112-wide depthwise conv with SiLU, 8 lanes, tiles of 12 vectors: 5.4 ms, 13x ORT):
        # there the writer writes the row once all its tiles are done.
        whole = vectors % per_tile == 0 and written_width(sch, writer) == vectors * lanes
        tile = ow_outer if whole else oh_outer
    else:
        sch.reorder(n, c, oh_outer, kh, kw, oh_inner, ow_vectors, ow_lanes)
        tile = oh_outer
    planes = sch.fuse(n, c)
    group = _phase_group(sch, copy, extent(planes, sch))
    groups = sch.split(planes, [None, group])[0] if group > 1 else planes
    if extent(groups, sch) > 1:
        sch.parallel(groups)
    schedule_copy(sch, copy, at=groups)
    sch.reverse_compute_at(writer, tile)
    sch.vectorize(ow_lanes)
    # The kernel's rows stay a loop: unrolled too, LLVM merges the loads that rows i and i + 1
    # share, keeps the 25 weights and every input vector of a 5x5 tile live, and spills them
    # (5x5, 672 channels 14x14, SiLU: 304 us unrolled, 216 as a loop; ORT 210).
    for loop in (kw, oh_inner, ow_vectors):
        sch.unroll(loop)
    init = sch.decompose_reduction(conv, kh)
    sch.vectorize(sch.get_loops(init)[-1])
    inner = sch.get_loops(writer)[-1]
    if extent(inner, sch) > 1:
        sch.vectorize(inner)
    return True


def _phase_group(sch, copy, planes: int) -> int:
    """Planes per phase copy: the largest divisor of `planes` whose buffers fit
    PHASE_GROUP_BYTES (1 for planes larger than that)."""
    per_plane = buffer_bytes(sch.get(copy).writes[0].source) // planes
    limit = min(planes, PHASE_GROUP_BYTES // per_plane)
    return max((d for d in range(1, limit + 1) if planes % d == 0), default=1)
