"""Narrow conv2d (too few output channels to fill a vector register: an image's 3 colours, a
mask, a single map; or too short a reduction to pay for writing a channel-vector tile back, as
in the 3x3 convs of 3-channel images and 1x1 convs of few channels) vectorized along output
rows.

The register-tiled conv2d rule makes output channels the vector axis; with 1-5 channels most
of every register would be padding, so such convs fell to TVM's generic loop nest (a 9x9 32 -> 3
channel conv on 256x256, one AVX-512 core: 834 ms against ORT's 50). Here the output row is the
vector axis, as in the depthwise rule: a tile is every output channel (a divisor of them
where there are more than MAX_CHANNELS) times vectors of `weight_block` (the lanes) columns of
one output row, shaped by `tile` (the row padded to whole vectors at lowering, the epilogue
writing only the real columns); each step broadcasts one weight per channel and multiplies
one contiguous input row segment per vector. The input is first copied into a zero-padded
buffer split into `stride` column phases (`phases.column_phases`), so that strided taps also
read contiguous columns. Lowered by
`narrow_conv2d` (algorithm "narrow", chosen by `select_conv_algorithm`), scheduled by
`schedule`.

bfloat16 convs of stride 1 where the CPU has AVX512-BF16 but no AMX take the same tiles with
each step a `vdpbf16ps` on a pair of a kernel row's taps (`conv2d_bf16.narrow_conv2d_pairs`,
scheduled by `tile_rows`)."""
from __future__ import annotations

import math

from .common import PARALLEL_MIN_ELEMENTS, PARALLEL_MIN_MACS, VectorShape, extent
from .phases import (column_phases, real_columns, row_conv_blocks, schedule_copy, tap,
                     written_width)

NAME = "narrow"
ALGORITHM = "narrow"
PHASES_BLOCK = "narrow_phases"
CONV_BLOCK = "narrow_conv2d"
# Output channels up to which a channel register tile is mostly padding (the conv2d rule takes
# the rest: `tiled.channel_block`); each channel takes one accumulator per vector of the tile.
MAX_CHANNELS = 7
# Products per output (input channels x taps) up to which the conv2d rule spends more on writing
# its channel-vector tile back to NCHW rows than on computing it: the 3x3 convs of 3-channel
# images, LeNet's 5x5 conv of one channel. Here rows are written as whole vectors (one AVX-512
# core, ms, conv2d rule / narrow: VGG-11's 3 -> 64 ch 224x224 3.49 / 2.34, SqueezeNet's 3x3
# stride-2 stem 0.92 / 0.66; ResNet-18's 7x7 stem, 147 products, 1.88 / 2.33 stays with conv2d;
# LeNet-5 28.7 / 25.9 us).
SHORT_REDUCTION = 32
# ... on inputs of at most this many channels (images, single maps).
THIN_INPUT = 4
# 1x1 convs reading at most this many input channels, on planes that are not whole vectors (the
# pointwise rule takes those, as GEMMs with pixels as the lanes), write back as much as they
# compute: here their rows are written as whole vectors too (one AVX-512 core, ms, conv2d rule /
# narrow: SqueezeNet's 16 -> 64 ch 55x55 0.151 / 0.093, 32 -> 128 ch 27x27 0.139 / 0.083,
# 64 -> 256 ch 27x27 0.309 / 0.234, 24 -> 144 ch 55x55 0.750 / 0.438, 64 -> 128 ch stride 2
# 56x56 0.197 / 0.183; with more input channels the conv2d rule keeps up: 96 -> 96 ch 55x55
# 0.620 / 0.594, 128 -> 16 ch 55x55 0.310 / 0.337). Strided ones stay with the conv2d rule: the
# column-phase copy reads the whole input, of which the conv reads one pixel in stride^2. Alone
# and in cache that costs little (the 64 -> 128 ch stride-2 conv above); inside a model, the
# input coming from memory, it costs most of the conv: RegNetX-400MF's 32 -> 32 ch stride-2
# projection of a 112x112 plane (+ residual + relu) 0.194 ms against 0.075 on the conv2d rule
# (Intel Xeon, two threads, in a run); the whole model 0.982 / 0.992 at one / two threads,
# ResNet-18 0.999 / 1.003 (builds alternated in one process), outputs equal.
SHORT_POINTWISE = 64
# Accumulators per register tile at most (channels x row vectors): a tile filling all the
# registers leaves none for the input vectors its channels share, and LLVM spills. One AVX-512
# core, ms, at most 28 / 16: VGG-11's 3 -> 64 ch 224x224 2.51 / 1.77, style transfer's 9x9
# 32 -> 3 ch 256x256 8.64 / 7.44, SqueezeNet's stride-2 stem 0.59-0.61 / 0.61-0.62. With 16
# registers (AVX2) the target's 12 accumulators bound it: 16 spilled (one Zen 3 core, inside
# the models, ms, 16 / 12: SqueezeNet's stem 1.57 / 0.61, VGG-11's first conv 4.80 / 2.29,
# Inception-v3's 1.41 / 0.67, EfficientNet-B0's 0.77 / 0.57).
TILE_ACCUMULATORS = 16


def applies(out_channels: int, groups: int, out_width: int, vector, in_channels: int | None,
            taps: int, channel_block: int, *, strided: bool) -> bool:
    """An ungrouped conv with output rows of at least one vector, on a CPU with vector
    registers, that the conv2d rule computes badly: no channel block fits its few output
    channels (`tiled.channel_block` gave 0), its input is thin (at most THIN_INPUT
    channels; None: unknown) and its reduction (input channels x `taps`) at most
    SHORT_REDUCTION, or it is an unstrided 1x1 conv of at most SHORT_POINTWISE input channels
    (with 16 lanes, where it was measured; with 8 the conv2d rule keeps 1x1 convs)."""
    if vector is None or groups != 1 or out_width < vector.lanes:
        return False
    return ((not channel_block and out_channels <= MAX_CHANNELS)
            or (in_channels is not None and in_channels <= THIN_INPUT
                and in_channels * taps <= SHORT_REDUCTION)
            or (in_channels is not None and taps == 1 and not strided
                and in_channels <= SHORT_POINTWISE and vector.lanes >= 16))


def tile(channels: int, vectors: int, accumulators: int = TILE_ACCUMULATORS) -> tuple[int, int]:
    """(output channels, row vectors) per register tile: the fewest loads per product (each
    step loads one weight per channel and one input vector per row vector for channels x
    vectors products) within `accumulators`, the channels dividing the output channels
    (all of them up to MAX_CHANNELS) and the vectors the row; then the most accumulators.
    Rows of a prime number of vectors had 4 channels x 1 vector tiles before, a load per
    product (one AVX-512 core, ms, 4-channel tiles / this: SqueezeNet's stride-2 stem, 7
    vectors, 0.59 / 0.44 as 2 x 7; Inception-v3's, 10 vectors, 1.03 / 0.78; VGG-11's 3 -> 64
    ch 224x224, 14 vectors, 1.98 / 1.83 as 8 x 2)."""
    channel_counts = [channels] if channels <= MAX_CHANNELS else \
        [d for d in range(1, accumulators + 1) if channels % d == 0]
    shapes = [(o, v) for o in channel_counts for v in range(1, vectors + 1)
              if vectors % v == 0 and o * v <= accumulators]
    return min(shapes, key=lambda s: ((s[0] + s[1]) / (s[0] * s[1]), -s[0] * s[1]))


def narrow_conv2d(x, weight, conv, block: int):
    """TE: the conv of NCHW `x` with the OIHW `weight`, computed on rows padded to whole blocks
    of `block` columns and sliced back to the real width, in the weight's dtype (float32: a
    half-precision input is widened as it is copied into the phase buffer)."""
    from tvm import te
    n, channels = (int(d) for d in x.shape[:2])
    out_channels, _, k_h, k_w = (int(d) for d in weight.shape)
    phases, (out_h, out_w, padded_w) = column_phases(x, conv, (k_h, k_w), block, PHASES_BLOCK,
                                                      str(weight.dtype))
    rc = te.reduce_axis((0, channels), "rc")
    ry, rx = te.reduce_axis((0, k_h), "ry"), te.reduce_axis((0, k_w), "rx")
    tile = te.compute(
        (n, out_channels, out_h, padded_w),
        lambda b, o, i, j: te.sum(tap(phases, conv, b, rc, i, j, ry, rx) * weight[o, rc, ry, rx],
                                  axis=[rc, ry, rx]),
        name=CONV_BLOCK)
    return real_columns(tile, out_w)


def schedule(sch, vec: VectorShape) -> bool:
    """The phase buffer first (parallel over images and channels), then parallel over (image,
    output row): tiles of every output channel times a few vectors of the row, the reduction
    (input channels, then taps, unrolled) outside the tile; the epilogue writes each tile from
    registers. None for functions this rule does not lower."""
    found = row_conv_blocks(sch, CONV_BLOCK, "SSSSRRR", PHASES_BLOCK)
    if found is None:
        return None
    return True if tile_rows(sch, *found, vec) is not None else None


def tile_rows(sch, conv, copy, writer, vec: VectorShape, vectorize: bool = True):
    """Schedule a row conv block (n, o, oh, ow, then the reduction: input channels, kernel rows,
    kernel columns, and any further reduction loops, which stay innermost) found by
    `row_conv_blocks`: the tiles, the epilogue under them and the phase copy, as `schedule`
    says. Returns the lane loop of the row vectors (vectorized here, or with `vectorize`
    False left to the caller, which tensorizes it: `conv2d_bf16`'s paired kernel), or None
    where the rows are not whole vectors."""
    n, o, oh, ow, rc, kh, kw, *inner = sch.get_loops(conv)
    lanes = vec.lanes
    if extent(ow, sch) % lanes:
        return None   # rows are padded to whole vectors at lowering
    vectors = extent(ow, sch) // lanes
    channels = extent(o, sch)
    o_tile, per_tile = tile(channels, vectors, min(TILE_ACCUMULATORS, vec.accumulators))
    ow_vectors, ow_lanes = sch.split(ow, [None, lanes])
    ow_outer, ow_vectors = sch.split(ow_vectors, [None, per_tile])
    o_outer, o = sch.split(o, [None, o_tile])
    # Where the row is padded and takes several tiles, the last tile's writer would keep only
    # some of its lanes: TVM writes such a predicated vector loop element by element (LeNet-5's
    # 5x5 conv with tanh, 28 of 32 columns, 8 lanes: 1.92 ms, 0.24 with relu). Then every tile
    # of the row is computed first and the writer writes the real row as one vector loop.
    whole_rows = written_width(sch, writer) != vectors * lanes and extent(ow_outer, sch) > 1
    if whole_rows:
        sch.reorder(n, oh, o_outer, ow_outer, rc, kh, kw, o, ow_vectors, ow_lanes, *inner)
    else:
        sch.reorder(n, oh, ow_outer, o_outer, rc, kh, kw, o, ow_vectors, ow_lanes, *inner)
    rows = sch.fuse(n, oh)
    macs = math.prod(extent(loop, sch) for loop in sch.get_loops(conv))
    if macs >= PARALLEL_MIN_MACS and extent(rows, sch) > 1:
        sch.parallel(rows)
    sch.reverse_compute_at(writer, o_outer)
    if vectorize:
        sch.vectorize(ow_lanes)
    for loop in (o, ow_vectors):
        sch.unroll(loop)
    init = sch.decompose_reduction(conv, rc)
    sch.vectorize(sch.get_loops(init)[-1])
    last = sch.get_loops(writer)[-1]
    if extent(last, sch) > 1:
        sch.vectorize(last)
    # the copy: parallel over (image, channel) where it is large
    elements = math.prod(extent(loop, sch) for loop in sch.get_loops(copy))
    schedule_copy(sch, copy, parallel=elements >= PARALLEL_MIN_ELEMENTS)
    return ow_lanes
