"""1x1 stride-1 convolutions as a GEMM over the flattened plane, with the pixels as the vector
lanes ("pointwise"), and the rule that schedules them.

out[n, o, p] = sum_c w[o, c] x[n, c, p] with p = h * W + w: in NCHW both the input and the
output are contiguous along p, so a register tile of `vectors` pixel vectors x `block` output
channels reads its input as whole vector loads, broadcasts one weight scalar per channel and
writes each channel's pixels as whole vectors: no input repacking and no transposing epilogue
(the register-tiled conv2d rule, with channels as the lanes, does both). The weight is packed at
lowering as [O / block, C, block] (`block` scalars of one input channel side by side).
Projections and same-width convs take the plane's pixel tiles as the outer loop, so a tile's
input (C x 16 `vectors` floats) is read from cache by every block of output channels;
expansions (more output than input channels: few products per output, much to write) take the
channel blocks outside, so each block writes its channels' rows from start to end.

Used for such convs with 16 and 8 lanes. On planes of whole vectors, measured inside the
models, each 1x1 conv timed in two compiles of one model run interleaved (one AVX-512 core, ms,
conv2d rule / pointwise): MobileNetV2 projections 32 -> 16 ch 112x112 0.37 / 0.17, 192 -> 32
ch 28x28 0.28 / 0.16, 144 -> 32 ch 0.105 / 0.080; expansions 16 -> 96 ch 112x112 0.91 / 0.53
(0.96 with the pixel tiles outside), 24 -> 144 ch 56x56 0.355 / 0.215, 32 -> 192 ch 28x28 0.130
/ 0.105; ResNet-50 256 -> 64 ch 56x56 1.07 / 0.93-1.01, 64 -> 64 ch 1.04 / 0.85, 64 -> 256 ch
1.19-1.21 / 1.01-1.03, 128 -> 512 ch 28x28 0.88 / 0.75, 512 -> 128 ch 0.90 / 0.78. With 8
lanes (AVX2, 12 accumulators: tiles of 3 vectors x 4 channels, 2 x 6), one Zen 3 core, ms:
MobileNetV2 32 -> 16 ch 112x112 0.43 / 0.16, 16 -> 96 ch 112x112 0.72 / 0.55, 144 -> 24 ch 56x56
0.26 / 0.15; ResNet-50 256 -> 64 ch 56x56 1.45-1.56 / 1.22-1.27, 512 -> 128 ch 28x28 1.53-1.60 /
1.12-1.25; whole models (the two compiles' medians, interleaved): MobileNetV2 0.92x, EfficientNet-B0
0.87x, DenseNet-121 0.96x, MobileNetV3-Large 0.95x, ResNet-50 and GoogLeNet 0.99x.

Planes that are not whole vectors (Inception's 35x35 and 17x17, SqueezeNet's 55x55, 27x27 and
13x13) end in a partial vector. Its lanes are guarded by a predicate, which TVM's vectorizer can
only scalarize, and a scalar copy of the whole tile loop would run 16 times slower. So there the
tile is one vector, the pixel tiles are a serial loop inside each thread's block of output
channels (so the parallel tasks are the batch's channel blocks, at least two; where they are
fewer than the threads the compile is for, the conv2d rule's bands of rows keep every thread
busy instead), and `finish` marks the predicates
`likely`: TVM's LoopPartition (`tir_lowering.py`) then splits that loop into the whole tiles,
with no predicate, and the last one. Kernel alone, one Zen 4 core, ms, conv2d rule / pointwise:
288 -> 64 ch 35x35 0.55 / 0.41 (ORT's whole run 0.49), 192 -> 64 ch 35x35 0.44 / 0.28, 768 -> 192
ch 17x17 0.89 / 0.78, 128 -> 32 ch 27x27 0.114 / 0.059, 32 -> 128 ch 0.091 / 0.061, 64 -> 16 ch
55x55 0.099 (narrow rule) / 0.059, 384 -> 48 ch 13x13 0.078 / 0.059, ResNet-50's 256 -> 1024 ch
14x14 1.14 / 1.07, 1024 -> 256 ch 0.96 / 0.92, GoogLeNet's 512 -> 24 ch 14x14 0.083 / 0.044. On
7x7 planes (three vectors and one pixel) it lost (2048 -> 512 ch 1.03 / 1.17, 512 -> 2048 ch
0.98 / 1.13): those, and planes under MIN_PARTIAL_VECTORS vectors, stay on the conv2d rule, as
do all such planes on cores with more L1 than PARTIAL_PLANE_MAX_L1D (measured slower there)."""
from __future__ import annotations

from ....ops.cast import widened
from .common import PARALLEL_MIN_MACS, VectorShape, blocks_of, extent, inline_elementwise, \
    iter_kinds
from .tiled import accumulator_writer, packed_weight

NAME = ALGORITHM = "pointwise"
# The vector widths the rule is written for (AVX2's and AVX-512's float32 lanes).
LANES = (8, 16)
# Pixel vectors per register tile, most first: the tile is vectors x block accumulators.
MAX_VECTORS = 4
# A tile's accumulators, its input vectors and one broadcast weight must fit in the vector
# registers (`VectorShape.registers`), or LLVM spills accumulators in the inner loop. 4 vectors
# x 7 channels (28 accumulators and 4 inputs) did on AVX-512: Inception-v3's 2048 -> 448 1x1
# conv on 8x8, one Zen 4 core, 3.02 ms, against 1.10 for 2 x 14 and 1.09 for 1 x 28 (1280 ->
# 448: 1.95 / 0.68 / 0.65).
# Below this many pixel tiles, the last of them partial, the channel blocks are the outer loop
# of the parallel tasks, not the pixel tiles (whose split left one thread the whole tiles):
# Inception-v3's 1280 -> 320 and 2048 -> 320 ch 8x8 projections (tiles of 48 pixels), one Zen
# 4 core / two, us, 447 / 337 -> 446 / 228 and 715 / 538 -> 713 / 359.
FEW_PIXEL_TILES = 4
# The smallest plane that is not whole vectors taken, in vectors (see the module docstring).
MIN_PARTIAL_VECTORS = 8
# The vector widths with which planes that are not whole vectors are taken: with 8 lanes
# they lost (one Zen 3 core, inside MobileNetV2, conv2d rule / pointwise, ms: 14x14 planes
# 0.134 / 0.185, 0.283 / 0.419).
PARTIAL_PLANE_LANES = (16,)
# The L1 data cache per core, in bytes, up to which planes that are not whole vectors are taken:
# the rule won on Zen 4's 32 KiB cores (the docstring's figures) and lost on an Intel Xeon's
# 48 KiB cores (2 MiB L2), where the conv2d rule blocks its input channels for the larger L1.
# Kernel alone, 1 / 2 threads, ms, conv2d rule / pointwise: 288 -> 64 ch 35x35 0.53 / 0.62,
# 0.40 / 0.67; 512 -> 1000 ch 13x13 1.09 / 1.35, 0.67 / 0.81; 128 -> 16 ch 55x55 0.36 / 0.33,
# 0.25 / 0.45. Whole models, interleaved, time without / with such planes on the rule, 1 / 2
# threads: Inception-v3 0.93 / 0.94, SqueezeNet 1.02 / 0.83, ResNet-50 0.94 / 0.95,
# DenseNet-121 0.91 / 0.91, EfficientNet-B0 0.99 / 0.92, MobileNetV2 0.95 / 0.99, RegNetX-400MF
# 1.01 / 0.98. Zen 5 (48 KiB) is untimed for this choice.
PARTIAL_PLANE_MAX_L1D = 32 * 1024
# With 8 lanes, expansions of at least this many input channels stay with the conv2d rule:
# their channel blocks of 4 (12 accumulators in 16 registers) each read the whole input plane
# again (one Zen 3 core, inside ResNet-50, conv2d rule / pointwise, ms: 64 -> 256 ch 56x56
# 1.55-1.65 / 2.04-2.24, 128 -> 512 ch 28x28 1.40 / 1.36-1.63).
WIDE_EXPANSION_INPUT = 64


def tile(pixels: int, out_channels: int, vec: VectorShape | None, batch: int = 1,
         threads: int = 1, in_channels: int | None = None) -> tuple[int, int] | None:
    """(pixel vectors, output-channel block) of the register tile for a plane of `pixels`, or
    None (the target has neither 8- nor 16-lane vectors, or the plane is smaller than one
    vector, or it is not whole vectors and either smaller than MIN_PARTIAL_VECTORS vectors,
    the lanes are not PARTIAL_PLANE_LANES or the L1 is above PARTIAL_PLANE_MAX_L1D, or with 8
    lanes it is an expansion of WIDE_EXPANSION_INPUT or more `in_channels`). Planes of whole
    vectors: the most accumulators with a block dividing the channels, then a vector count
    dividing the plane (otherwise the last pixel tile is partial), within the vector registers.
    Other planes: one vector and the largest such block that leaves at least two blocks (the
    threads share the blocks), when the `batch`'s channel blocks give each of the `threads`
    one; otherwise None (the conv2d rule, which also splits the rows)."""
    if vec is None or vec.lanes not in LANES or pixels < vec.lanes:
        return None
    if vec.lanes < 16 and in_channels is not None and \
            out_channels > in_channels >= WIDE_EXPANSION_INPUT:
        return None
    if pixels % vec.lanes:
        if pixels < MIN_PARTIAL_VECTORS * vec.lanes or vec.lanes not in PARTIAL_PLANE_LANES \
                or vec.l1d > PARTIAL_PLANE_MAX_L1D:
            return None
        block = max((b for b in range(1, vec.accumulators + 1)
                     if out_channels % b == 0 and out_channels // b >= 2), default=None)
        if block is None or batch * (out_channels // block) < threads:
            return None
        return 1, block
    rows = pixels // vec.lanes
    choices = [(vectors, max(b for b in range(1, vec.accumulators // vectors + 1)
                             if out_channels % b == 0 and vectors * (b + 1) < vec.registers))
               for vectors in range(1, min(MAX_VECTORS, rows) + 1)]
    return max(choices, key=lambda c: (c[0] * c[1], rows % c[0] == 0, c[0]))


def applies(kernel, stride, padding, dilation, groups: int) -> bool:
    """Whether a conv is a pointwise GEMM: 1x1, stride 1, no padding, no groups."""
    return (tuple(kernel) == (1, 1) and tuple(stride) == (1, 1)
            and tuple(padding) == (0, 0, 0, 0) and groups == 1)


def pack_weight(weight, block: int):
    """OIHW 1x1 weight -> [O / block, I, block]."""
    o, i = weight.shape[:2]
    return weight.reshape(o // block, block, i).transpose(0, 2, 1).copy()


def pointwise_conv2d(x, packed):
    """TE of the GEMM on the flattened input `x` [N, C, P] with the weight `packed`
    ([O / block, C, block]): [N, O, P], in the weight's dtype (float32: a half-precision input
    is widened as it is read, once per vector of pixels)."""
    from tvm import te
    n, channels, pixels = (int(d) for d in x.shape)
    blocks, _, block = (int(d) for d in packed.shape)
    c = te.reduce_axis((0, channels), "c")
    return te.compute((n, blocks * block, pixels), lambda b, o, p: te.sum(
        packed[o // block, c, o % block] * widened(x[b, c, p], packed.dtype), axis=c),
        name="pointwise_conv2d")


def schedule(sch, vec: VectorShape) -> bool:
    """The tile of `tile(...)`: pixel tiles and channel blocks outermost (in parallel; channel
    blocks first for expansions), the input channels, then the block's channels (unrolled) x
    the pixel vectors; the epilogue writes each channel's pixels as whole vectors from the
    tile."""
    found = [b for b in blocks_of(sch) if iter_kinds(sch.get(b)) == "SSSR"
             and sch.get(b).name_hint == "pointwise_conv2d"]
    if len(found) != 1:
        return None
    block = sch.get(found[0])
    weight = packed_weight(sch.mod["main"], block, rank=3)
    if weight is None:
        return None
    n, out_channels, pixels, channels = (int(iv.dom.extent) for iv in block.iter_vars)
    channel_block = int(weight.shape[2])
    choice = tile(pixels, out_channels, vec, in_channels=channels)
    if choice is None or out_channels % channel_block:
        return None
    vectors = choice[0]
    inline_elementwise(sch, keep=[found[0]])
    conv = [b for b in blocks_of(sch) if sch.get(b).name_hint == "pointwise_conv2d"][0]
    writer = accumulator_writer(sch, conv)
    if writer is None:
        return None
    b, o, p, c = sch.get_loops(conv)
    o_outer, o_inner = sch.split(o, [None, channel_block])
    if pixels % vec.lanes:
        return _schedule_partial_plane(sch, conv, writer, vec, parallel=n * out_channels * pixels
                                       * channels >= PARALLEL_MIN_MACS)
    p_outer, p_inner = sch.split(p, [None, vectors * vec.lanes])
    p_vectors, p_lanes = sch.split(p_inner, [None, vec.lanes])
    pixel_tiles = -(-pixels // (vectors * vec.lanes))
    uneven = pixels % (vectors * vec.lanes) and pixel_tiles < FEW_PIXEL_TILES
    if out_channels > channels or uneven:
        # an expansion: each channel block's rows written in turn; a few pixel tiles, the last
        # one partial: each thread takes whole channel blocks (pixel tiles outermost, the
        # threads' shares of the tasks were whole tiles, the partial one in the last share)
        sch.reorder(b, o_outer, p_outer, c, o_inner, p_vectors, p_lanes)
        fused = sch.fuse(b, o_outer, p_outer)
    else:                          # the tile's input read from cache by every channel block
        sch.reorder(b, p_outer, o_outer, c, o_inner, p_vectors, p_lanes)
        fused = sch.fuse(b, p_outer, o_outer)
    if n * out_channels * pixels * channels >= PARALLEL_MIN_MACS:
        sch.parallel(fused)
    sch.reverse_compute_at(writer, fused)
    sch.vectorize(p_lanes)
    sch.unroll(p_vectors)
    sch.unroll(o_inner)
    init = sch.decompose_reduction(conv, c)
    sch.vectorize(sch.get_loops(init)[-1])
    inner = sch.get_loops(writer)[-1]
    if extent(inner, sch) % vec.lanes == 0:
        registers, lanes = sch.split(inner, [None, vec.lanes])
        sch.vectorize(lanes)
        sch.unroll(registers)
    return True


def _schedule_partial_plane(sch, conv, writer, vec: VectorShape, parallel: bool) -> bool:
    """A plane that is not whole vectors: each thread takes blocks of output channels (with the
    batch) and walks the plane's vectors in a serial loop, the last one partial; the epilogue
    writes each vector from the tile."""
    b, o_outer, o_inner, p, c = sch.get_loops(conv)
    p_vectors, p_lanes = sch.split(p, [None, vec.lanes])
    sch.reorder(b, o_outer, p_vectors, c, o_inner, p_lanes)
    fused = sch.fuse(b, o_outer)
    if parallel:
        sch.parallel(fused)
    sch.reverse_compute_at(writer, p_vectors)
    sch.vectorize(p_lanes)
    sch.unroll(o_inner)
    init = sch.decompose_reduction(conv, c)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(writer)[-1])
    return True


def finish(func, vec: VectorShape):
    """The scheduled PrimFunc; for a plane that is not whole vectors, with every block predicate
    marked `likely`: the predicates of the last vector, which LoopPartition
    (partition_const_loop) then peels off the serial loop of whole vectors. (Other predicates,
    a partial tile of whole vectors, are uniform over the lanes and stay as they are.)"""
    import tvm_ffi
    from tvm import s_tir, tirx
    pixels = int(func.params[0].shape[-1])   # x: [N, C, H * W]
    if pixels % vec.lanes == 0:
        return func

    def likely(realize):
        predicate = realize.predicate
        if isinstance(predicate, tirx.IntImm):
            return realize
        return s_tir.SBlockRealize(list(realize.iter_values), tirx.likely(predicate),
                                   realize.block)

    return tvm_ffi.structural_map(func, (s_tir.SBlockRealize, likely))
