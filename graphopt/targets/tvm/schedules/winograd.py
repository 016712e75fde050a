"""3x3 stride-1 convolutions as Winograd F(m x m, 3x3) (m = 2 or 4), and the rule that
schedules them.

Each m x m output tile is computed from an (m + 2) x (m + 2) input tile with (m + 2)^2
multiply-adds per input channel instead of 9 m^2 (16 instead of 36 for m = 2, 36 instead of 144
for m = 4): the input tiles are transformed (`B^T d B`), multiplied by the weights transformed
offline (`G g G^T`, a constant) in (m + 2)^2 independent GEMMs over the input channels, and
transformed back (`A^T m A`). The tile side is a target decision recorded on the node
(`Conv2d.output_tile`, chosen by `output_tile` below).

F(2x2, 3x3) (transforms of 0, +-1 and +-1/2: ~1e-6 relative to the direct convolution). With 32
or more input channels on planes up to 112x112 it beats the direct kernel on 8 lanes (one AVX2
core, batch 1, graphopt direct / Winograd / ONNX Runtime, ms): 32 ch 56x56 0.64 / 0.52 / 0.63,
64 ch 56x56 2.56 / 1.84 / 2.46, 128 ch 28x28 2.48 / 1.47 / 2.38, 256 ch 14x14 2.66 / 1.39 /
2.36, 512 ch 7x7 3.1-3.4 / 1.65 / 2.30, 64->128 ch 112x112 19.6 / 18.3 / 19.9. Over the whole
plane, with 16 channels or fewer the transforms cost what the GEMMs save (16 ch 56x56 0.17 /
0.18 / 0.22), and on a 224x224 plane the transformed tensors leave the cache (64 ch 44.6 / 43.6
/ 40.8); a row of tiles at a time both win (`ROWS_MIN_CHANNELS`, `ROWS_MAX_PLANE`).

F(4x4, 3x3) (Lavin and Gray's points 0, +-1, +-2, +-1/2: ~1e-5 relative, the accuracy TVM's and
oneDNN's Winograd kernels have) on 16 lanes, where the direct kernel is at ORT's speed and
F(2x2) alone does not beat it on large planes (one AVX-512 core, batch 1, minimum ms, direct /
F(2x2) / F(4x4) / ORT): 64 ch 56x56 1.75 / 2.06 / 1.30 / 1.51, 128 ch 28x28 - / 1.30 / 1.20 /
1.44; on 14x14 planes F(4x4)'s 4x4 tiles waste 30 % of the plane (256 ch 14x14: F(2x2) 1.07,
F(4x4) 1.48), so F(2x2) keeps those.

bfloat16 F(2x2) on vdpbf16ps (`winograd_dpbf16`, CPUs with AVX512-BF16 but no AMX): the input
transform rounds each transformed value to bfloat16 and packs a pair of input channels into one
uint32, the weight transform is rounded at lowering (`transform_weight_in_pairs`), and each GEMM
step multiplies one broadcast pair by a [16, 2] weight vector in one instruction
(`conv2d_bf16.PACKED_INTRINSIC`), accumulating in float32; the output transform and the epilogue
are float32's. The two roundings cost about one more bfloat16 rounding of the output: F(2x2)'s
transforms have coefficients 0, +-1 and +-1/2 (with F(4x4)'s points, up to +-8, it measured
~12 roundings in numpy). Every half-precision input, on either kernel, is widened to float32 a
channel's rows at a time (`WIDENED`) before the input transform reads it.

Where the transformed weights are small (`ROW_WEIGHT_BYTES`), every kernel, F(2x2) or F(4x4),
float32 or bfloat16, computes a row of output tiles at a time: one parallel task transforms
the row's input, multiplies it and writes its output while they are in its core's cache."""
from __future__ import annotations

import numpy as np

from ..weight_prefetch import NEXT_SLICE_ATTR
from . import interleave
from .conv2d import PREFETCH_MIN_WEIGHT_BYTES
from .common import PARALLEL_MIN_MACS, VectorShape, blocks_of, extent, inline_elementwise

NAME = "winograd"
ROWS, INPUT, GEMM, OUTPUT = "wino_rows", "wino_input", "wino_gemm", "wino_output"
# The row pass over contiguous columns, which `ROWS` splits into column phases
# (`DEINTERLEAVED_ROW_LANES`)
ROW_PASS = "wino_row_pass"
COLUMNS = "wino_columns"
STAGES = (ROWS, INPUT, GEMM, COLUMNS, OUTPUT)
# A half-precision input's rows widened to float32 before the row pass reads them
WIDENED = "wino_widened"
KERNEL_STAGES = STAGES + (WIDENED, ROW_PASS)    # the blocks that are not the epilogue
# Input channels from which F(2x2) beats the direct kernel: 32 with 8 lanes (AVX2, see above);
# with 16 lanes (AVX-512) the direct kernel's wider FMAs win below 128 (one Xeon core, ms,
# Winograd / direct / ORT: 64 ch 56x56 2.05 / 1.56 / 1.47, 64->128 ch 112x112 15.5 / 12.6 / 12.0,
# 128->256 ch 56x56 10.9 / 11.9 / 11.4, 256 ch 14x14 1.02 / 1.43 / 1.45).
MIN_CHANNELS = {8: 32, 16: 128}
# ... and with 8 lanes from 16 input channels where it goes a row of tiles at a time (`by_rows`):
# the AVX2 build (`mcpu="znver3"`) on a Zen 4, one thread / two, us, direct / F(2x2) by rows:
# YOLOv3-tiny's 16 -> 32 ch 208x208 4,540 / 2,879 (2,282 / 1,412), DeepConvNet's 16 ch 28x28
# 44.3 / 28.9 and 16 -> 32 ch 14x14 19.3 / 17.4, FCN's 16 -> 32 ch 32x32 195 / 147 and 32 ->
# 64 ch 16x16 96.6 / 60.5. With 16 lanes no zoo conv changed at 32 (GoogLeNet's 14x14 ones).
ROWS_MIN_CHANNELS = {8: 16}
# F(4x4) with 16 lanes and 32 KiB of L1: from 16 input channels, on planes from 25x25 up to
# 256x256, most of them computed a row of tiles at a time. One Zen 4 core, one conv + relu,
# us, direct / F(4x4) (the best of five rounds of 100 calls): 16 -> 64 ch 56x56 571 / 272
# (two threads 285 / 135), 32 -> 64 ch 56x56 1,056 / 445, 16 -> 32 ch 28x28 74 / 43, 32 -> 96
# ch 28x28 224 / 157 (against F(2x2)), 32 -> 64 ch 147x147 9,692 / 7,608 (two threads 4,724 /
# 3,400), 32 -> 64 ch 208x208 17,396 / 8,901, 64 ch 224x224 38,251 / 20,177 (two threads 18,865
# / 9,750), 128 -> 64 ch 128x128 25,405 / 15,379, 64 -> 32 ch 256x256 30,735 / 16,277; on
# planes of partial tiles, F(2x2) / F(4x4): 32 -> 128 ch 27x27 302 / 196 (two threads 171 /
# 110), 128 -> 256 ch 26x26 1,947 / 1,349, 384 -> 256 ch 26x26 5,610 / 3,936.
F4_MIN_CHANNELS, F4_MIN_PLANE, F4_MAX_PLANE = 16, 25 * 25, 256 * 256
# On cores of 48 KiB L1 (Intel's since Ice Lake) F(4x4) already wins from 32 input channels and
# on planes up to 224x224 (an Intel Xeon, 1 / 2 threads, ms, direct / F(4x4) / ORT: 32 -> 64 ch
# 147x147 6.42 / 5.20 / 4.88, 3.55 / 3.07 / 2.35; 32 ch 112x112 1.90 / 1.20 / 1.49, 1.20 / 0.72 /
# 0.73; 32 -> 64 ch 56x56 0.82 / 0.43 / 0.68; 48 -> 64 ch 35x35 0.47 / 0.27 / 0.38, 0.27 / 0.20
# / 0.20; 64 ch 224x224 26.6 / 17.7 / 23.4, 13.0 / 8.7 / 10.2); with 16 input channels it lost
# at two threads (64 ch 55x55 0.27 / 0.30). Cores of 32 KiB: F4_MIN_CHANNELS above.
# On 48 KiB cores it also wins on planes from 25x25, not whole 4x4 tiles (whole models, the builds
# interleaved, from 25x25 / from 28x28, 1 / 2 threads: SqueezeNet's 32 -> 128 ch 27x27 convs
# 0.95 / 0.95), but not from 13x13 (then against 25x25: GoogLeNet's and DenseNet-121's 14x14
# and 7x7 convs 1.05 / 1.11 and 1.04 / 1.02, ResNet-18's 1.05 / 1.04).
F4_WIDE_L1D, F4_WIDE_L1D_MIN_CHANNELS, F4_WIDE_L1D_MAX_PLANE = 48 * 1024, 32, 224 * 224
F4_WIDE_L1D_MIN_PLANE = 25 * 25
# Output tiles (over the batch) from which the transformed weights, 16/9 the size of the
# direct kernel's, are reused enough: with 16 lanes a 7x7 plane at batch 1 (16 tiles) spends
# more time streaming its 512-channel weights (16 MB) than the GEMMs save (ms, weights not in
# cache, Winograd / direct: 512 ch 7x7 2.46 / 2.01 at batch 1, 12.0 / 13.8 at batch 8;
# 256 ch 14x14 1.27 / 1.61). With 8 lanes the direct kernel is slow enough that Winograd wins.
MIN_TILES = {8: 1, 16: 32}
# On planes up to SMALL_PLANE the direct kernel's short rows run below its speed, and F(2x2)
# wins from SMALL_PLANE_MIN_CHANNELS input channels where there are at least two output-channel
# blocks (with one, the input transform outweighs the products), at least SMALL_PLANE_MIN_TILES
# tiles to reuse each transformed weight, and at most SMALL_WEIGHT_BYTES of them (16/9 the
# direct kernel's bytes, streamed once a run). Kernel by kernel, one Zen 4 thread, us,
# direct / F(2x2): DeepConvNet's 32 -> 64 and 64 -> 64 ch 8x8 convs 22.0 / 14.1 and 43.0 /
# 34.9; 28x28-32x32 planes: GoogLeNet's 32 -> 96 ch 391 / 225, SqueezeNet's 32 -> 128 ch 27x27
# 527 / 305, NIC's 32 -> 64 ch 32x32 351 / 243; weights of 0.5-3.3 MB: GoogLeNet's 112 -> 224
# ch 14x14 787 / 394 and 160 -> 320 ch 7x7 391 / 270, SqueezeNet's 48 -> 192 and 64 -> 256 ch
# 13x13 248 / 152 and 455 / 286, NIC's 128 -> 256 ch 8x8 327 / 204. DenseNet-121's 128 -> 32
# ch 7x7 convs (one block) were 1.37x slower on F(2x2); DeepLabV3's 256 ch 4x4 conv (4 tiles,
# 4.2 MB) 172 / 133 with its weights in cache, no faster in the whole model.
SMALL_PLANE, SMALL_PLANE_MIN_CHANNELS, SMALL_PLANE_MIN_TILES = 32 * 32, 32, 16
SMALL_WEIGHT_BYTES = 4 << 20
# Planes up to which F(2x2) is taken: the whole-plane stages' transformed tensors leave the
# cache beyond MAX_PLANE (one AVX2 core, 64 ch 224x224, ms, direct / F(2x2) / ORT: 44.6 / 43.6
# / 40.8), a row of tiles at a time (`by_rows`) they do not: VGG-16's 64 ch 224x224 conv, the
# AVX2 build (`mcpu="znver3"`) on a Zen 4, ms, direct / F(2x2) by rows 41.1 / 25.0 at one
# thread, 21.3 / 12.7 at two.
MAX_PLANE, ROWS_MAX_PLANE = 112 * 112, 224 * 224
# Output tiles per image from which a batch is transformed and multiplied one image at a time.
PER_IMAGE_TILES = 32
# Transformed weights up to this size (half of a core's L2) are streamed once per row of output
# tiles: each row is transformed, multiplied and written back while in cache, one row a task.
# F(4x4) (one AVX-512 core, ResNet-18's 64-channel 56x56 convs, ms, whole plane / by rows: 1.25
# / 0.93 at batch 1, 10.7 / 8.1 at batch 8; two threads 1.05 / 0.79; 128 channels, 2.4 MB of
# weights, lose: 1.22 / 1.74). bfloat16 F(2x2) (one Zen 4 thread, us: 64 ch 56x56 1,023 / 919,
# 128 ch 28x28 740 / 700). float32 F(2x2) (Zen 4, us, one / two threads): DeepConvNet's 32 -> 64
# and 64 -> 64 ch 8x8 convs 14.1 / 12.9 -> 12.3 / 7.1 and 33.9 / 25.2 -> 22.9 / 12.4, whose
# stages over the whole plane hardly gained from a second thread (each stage's data written by
# one core and read by the other); DenseNet-121's 128 -> 32 ch 14x14 90 / 144 -> 84 / 51; the
# AVX2 build's (`mcpu="znver3"`, same host, one thread) ResNet-18 64 ch 56x56 1,443 -> 1,224,
# VGG-11's 64 -> 128 ch 112x112 13.2 -> 9.7 ms.
ROW_WEIGHT_BYTES = 1 << 20
# Input channels per weight block in the GEMMs: 64 x 16 floats (4 KB) stay in L1 while every
# tile of the block uses them, the tiles' sums waiting in L1 between blocks; from
# BLOCKED_REDUCTION_MIN_CHANNELS input channels (two blocks). With one block, each register tile
# keeps its sums over the whole reduction instead (one Zen 4 thread: the 64 -> 128 ch 112x112
# conv 10.2 -> 9.3 ms; whole models, the builds and ORT interleaved, one / two threads: VGG-11
# 0.957 / 0.996, VGG-16 0.982 / 1.004, GoogLeNet 0.979 / 0.990, SqueezeNet 0.975, the others
# 0.99-1.00). From 256 channels whole reductions lost (512 ch 28x28 10.2 -> 11.4 ms); at 128 the
# kernels gained (128 -> 256 ch 56x56 6.45 -> 5.88) but the models did not (VGG-11 1.01-1.02).
CHANNEL_BLOCK, BLOCKED_REDUCTION_MIN_CHANNELS = 64, 128
# Whether the GEMMs prefetch each next weight block while they compute with the current one.
PREFETCH_NEXT_SLICE = True
# Whether the output transform's values are written back through the register transpose
# (`_schedule_transposed_output`) where the plane is whole tiles.
TRANSPOSED_WRITE_BACK = True
# Whether a bfloat16 output is written back that way too. LLVM then kept the GEMM's sums on the
# stack (93 vector spills in a 128 -> 32 ch 28x28 kernel, 0 without, float32's 34), and the
# output transform's stores cost less than that (one Zen 4 thread, alternated builds, per-round
# ratios without / with: convs + relu 128 -> 32 ch 28x28 0.78, 64 ch 56x56 0.93, 128 ch 28x28
# 0.96, VGG-11's 0.98-1.02; bfloat16 models DenseNet-121 0.954, ResNet-18 0.947, GoogLeNet
# 0.966, VGG-11 1.010 / 0.995 at one / two threads, ResNet-18 batch 8 0.991). float16 outputs
# keep it (convs without / with 1.01-1.04).
BFLOAT16_TRANSPOSED_WRITE_BACK = False
# Whether a half-precision input is widened into a float32 copy of the rows a channel's tiles
# read (`WIDENED`) before the row pass, instead of as the pass reads each value (see
# `winograd_conv2d`).
WIDENED_ROWS = True
# Lanes with which the row pass runs over each row's contiguous columns and a shuffle then
# splits them into the tile-side column phases the input transform reads contiguously
# (`ROW_PASS`, `interleave.register_deinterleave`), instead of the pass reading each phase's
# columns strided (TVM: gathers). Kernel times summed over whole models, one AMD Zen 5 thread,
# strided / deinterleaved: bfloat16 (F(2x2) on vdpbf16ps) ResNet-18's Winograd kernels 5.21 /
# 4.42 ms, VGG-11's 20.9 / 19.5; float32 (F(4x4) and F(2x2)) Inception-v3's 17.7 / 14.3,
# ResNet-18's 4.78 / 4.53, VGG-11's 28.6 / 27.2, GoogLeNet's 3.51 / 3.27; single bfloat16 convs
# + relu 64 ch 56x56 0.65-0.73 of the time, 128 ch 28x28 0.83-0.86. With 8 lanes (AVX2 build)
# it lost: ResNet-18 15.6 / 16.4, VGG-11 80.1 / 86.3.
DEINTERLEAVED_ROW_LANES = (16,)
# The tile side of bfloat16 Winograd on vdpbf16ps (`transform_weight_in_pairs`; see the module's
# docstring).
PAIRED_TILE = 2

# (B^T, G, A^T) of F(m x m, 3x3) by output tile side m.
TRANSFORMS = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]])),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]])),
}


def computes(out_channels: int, kernel, stride, dilation, groups: int, padding,
             vec: VectorShape) -> bool:
    """Whether the Winograd kernels compute a conv of this form: 3x3, stride 1, 'same' padding,
    no dilation or groups, output channels in whole GEMM blocks (`channel_block`)."""
    return (tuple(kernel) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and groups == 1 and tuple(padding) == (1, 1, 1, 1)
            and out_channels % channel_block(vec) == 0)


def output_tile(in_channels: int, out_channels: int, out_h: int, out_w: int, kernel, stride,
                dilation, groups: int, padding, vec: VectorShape, batch: int = 1) -> int:
    """The output tile side m of the Winograd kernel a conv takes (2 or 4), or 0 (not
    Winograd): 3x3, stride 1, 'same' padding, no dilation or groups, many channels (output
    channels in whole two-register blocks) on a small plane with enough tiles to reuse the
    transformed weights, or on a plane up to 32x32 (`SMALL_PLANE`); F(4x4) with 16 lanes from
    16 input channels on planes from 25x25 up to 256x256 (with 48 KiB of L1, from 32 input
    channels up to 224x224)."""
    if not computes(out_channels, kernel, stride, dilation, groups, padding, vec):
        return 0
    wide_l1 = vec.lanes == 16 and vec.l1d >= F4_WIDE_L1D
    if wide_l1 and in_channels >= F4_WIDE_L1D_MIN_CHANNELS and \
            F4_WIDE_L1D_MIN_PLANE <= out_h * out_w <= F4_WIDE_L1D_MAX_PLANE:
        return 4
    if vec.lanes == 16 and not wide_l1 and in_channels >= F4_MIN_CHANNELS and \
            F4_MIN_PLANE <= out_h * out_w <= F4_MAX_PLANE:
        return 4
    if out_w <= 2:
        # a row of one F(2x2) tile: the rule's loop over a row's tiles is then no loop, and a
        # schedule primitive refuses it (DenseNet-121 at 64x64: its 2x2 planes' convs went to
        # the generic rule); the direct kernel computes such a plane
        return 0
    weight_bytes = transformed_weight_bytes(2, in_channels, out_channels, 4)
    rows = by_rows(weight_bytes)
    if out_h * out_w > (ROWS_MAX_PLANE if rows else MAX_PLANE):
        return 0
    tiles = batch * -(-out_h // 2) * -(-out_w // 2)
    least = MIN_CHANNELS.get(vec.lanes, 32)
    least = ROWS_MIN_CHANNELS.get(vec.lanes, least) if rows else least
    if in_channels >= least and tiles >= MIN_TILES.get(vec.lanes, 1):
        return 2
    if out_h * out_w <= SMALL_PLANE and in_channels >= SMALL_PLANE_MIN_CHANNELS and \
            out_channels >= 2 * channel_block(vec) and tiles >= SMALL_PLANE_MIN_TILES and \
            weight_bytes <= SMALL_WEIGHT_BYTES:
        return 2
    return 0


def transformed_weight_bytes(tile_side: int, in_channels: int, out_channels: int,
                             itemsize: int) -> int:
    """Bytes of the transformed weights: (m + 2)^2 values per (input, output) channel pair."""
    return (tile_side + 2) ** 2 * in_channels * out_channels * itemsize


def by_rows(weight_bytes: int) -> bool:
    """Whether the kernel computes a row of output tiles per parallel task: its transformed
    weights (`weight_bytes`) fit ROW_WEIGHT_BYTES. A plane that is not whole rows of tiles
    takes them too: its last row of tiles computes the rows past the plane's edge and writes
    only the plane's. Over the whole plane, such a conv's transformed input and products went
    out to memory (Inception-v3's 32 -> 64 ch 147x147: 6.3 and 12.6 MB) and its time followed
    the host's memory traffic (7.4-12.8 ms within minutes, one Zen 4 thread). By rows, one Zen 4
    core, convs + relu alone, builds alternated, 1 / 2 threads, ms: 32 -> 64 ch 147x147 7.80 /
    7.14 and 4.63 / 3.99, 32 ch 147x147 (2 threads) 3.98 / 2.53, 64 -> 96 ch 35x35 0.66 / 0.61
    and 0.52 / 0.50; whole models, 1 / 2 threads: Inception-v3 0.977 / 0.974, SqueezeNet 0.946 /
    0.962, YOLOv3-tiny 0.974 / 0.999; the AVX2 build (`mcpu="znver3"`), where F(2x2) by rows now
    takes such planes from 16 input channels: Inception-v3 0.878 / 0.911, SqueezeNet 0.828 /
    0.854."""
    return weight_bytes <= ROW_WEIGHT_BYTES


def channel_block(vec: VectorShape) -> int:
    """Output channels per GEMM tile: two vector registers."""
    return 2 * vec.lanes


def gemm_tile(tiles: int, block: int, vec: VectorShape) -> int:
    """Tiles per GEMM register tile for `block` output channels: the largest divisor of the
    tile count that the accumulator registers hold, when it is at least half of them (no tile
    then runs under a predicate), else as many as they hold (128 ch 28x28 with F(2x2), one
    AVX-512 core: 4 tiles 1.41 ms, 14 tiles 1.21; 256 ch 14x14: 4 tiles 1.20, 7 tiles 1.13)."""
    limit = max(1, vec.accumulators // max(1, block // vec.lanes))
    divisor = dividing_gemm_tile(tiles, block, vec)
    return divisor if 2 * divisor >= limit or divisor == tiles else min(limit, tiles)


def dividing_gemm_tile(tiles: int, block: int, vec: VectorShape) -> int:
    """The largest divisor of the tile count that the accumulator registers hold for `block`
    output channels (the bfloat16 GEMMs' tile: their instruction cannot run under a
    predicate)."""
    limit = max(1, vec.accumulators // max(1, block // vec.lanes))
    return max(d for d in range(1, min(limit, tiles) + 1) if tiles % d == 0)


def _weight_transform(weight: np.ndarray, tile: int) -> np.ndarray:
    """G g G^T of every [O, I] pair of an OIHW 3x3 weight, in float64, as [O, I, a, a]: two
    products over the weight viewed as one matrix (BLAS; a three-operand einsum took VGG-16's
    compile 0.8 s)."""
    _, g, _ = TRANSFORMS[tile]
    rows = np.tensordot(weight.astype(np.float64), g, axes=([2], [1]))     # [O, I, b, e]
    return np.tensordot(rows, g, axes=([2], [1]))                          # [O, I, e, v]


def transform_weight(weight: np.ndarray, block: int, tile: int) -> np.ndarray:
    """OIHW 3x3 weight -> `G g G^T` of F(tile x tile, 3x3), packed [a, a, O / block, I, block]
    (a = tile + 2; in float64, then the weight's dtype), the layout the GEMM stage streams."""
    u = _weight_transform(weight, tile)
    o, i = weight.shape[:2]
    alpha = tile + 2
    packed = u.reshape(o // block, block, i, alpha, alpha).transpose(3, 4, 0, 2, 1)
    return np.ascontiguousarray(packed, dtype=weight.dtype)


def transform_weight_in_pairs(weight: np.ndarray, block: int) -> np.ndarray:
    """OIHW 3x3 weight (even I) -> `G g G^T` of F(2x2, 3x3) rounded to bfloat16 (in float64,
    then to nearest even), as its bits (uint16) packed [4, 4, O / block, I / 2, block, 2]: each
    output channel's weights of a pair of input channels side by side, the layout vdpbf16ps
    multiplies (`schedules/conv2d_bf16.py`)."""
    import ml_dtypes
    u = _weight_transform(weight, PAIRED_TILE)
    o, i = weight.shape[:2]
    alpha = PAIRED_TILE + 2
    bits = u.astype(ml_dtypes.bfloat16).view(np.uint16)
    packed = bits.reshape(o // block, block, i // 2, 2, alpha, alpha).transpose(4, 5, 0, 2, 1, 3)
    return np.ascontiguousarray(packed)


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
    ([a, a, O / block, I, block], from `transform_weight`; the tile side is a - 2; or the
    bfloat16 bits [4, 4, O / block, I / 2, block, 2] of `transform_weight_in_pairs`). Stages:
    `ROW_PASS` (B^T down the columns of whole padded input rows), `ROWS` (its columns split
    into the tile side's phases, [..., phase, column / side], which the input transform reads
    contiguously), `INPUT` (B along the rows: V[e, n, c, tile]; in pairs, V[e, n, c / 2, tile]
    holds the bfloat16 values of both channels of a pair in one uint32), `GEMM` (M[e, n, tile,
    o] = sum_c U V), `COLUMNS` (A^T M) and `OUTPUT` ((A^T M) A, written as NCHW)."""
    from tvm import te, tirx

    from ....ops.cast import widened
    from .conv2d_bf16 import half_of, rounded_bits, widen
    paired = len(u.shape) == 6
    alpha = int(u.shape[0])
    side = alpha - 2
    B_T, _, A_T = TRANSFORMS[side]
    n, c, h, w = (int(d) for d in x.shape)
    blocks, block = int(u.shape[2]), int(u.shape[4])
    out_c = blocks * block
    tiles_h, tiles_w = -(-h // side), -(-w // side)
    tiles = n * tiles_h * tiles_w
    dtype = "float32" if paired else u.dtype
    zero = tirx.const(0, dtype)

    # A half-precision input is widened to float32 in a copy of the rows a channel's tiles read
    # (`WIDENED`: contiguous vectors) before the row pass. Read by the pass itself, each value
    # was a scalar load, convert and move, which LLVM did not vectorize as it did float32 reads
    # (a bfloat16 32 ch 56x56 conv: 1,018 16-bit loads, 28 now). One Zen 4 thread, one conv +
    # relu, us, as the pass read / widened first: float16 64 ch 56x56 2,001 / 951 (float32
    # 865), 128 ch 28x28 992 / 761; bfloat16 F(4x4) 32 ch 56x56 470 / 343; bfloat16 F(2x2)
    # on vdpbf16ps 128 ch 28x28 0.92, 256 ch 14x14 0.90 of its time. bfloat16 models, the two
    # builds alternated: DenseNet-121 0.946, ResNet-18 0.981, GoogLeNet 0.976 of their time.
    source = x
    if str(x.dtype) in ("bfloat16", "float16") and WIDENED_ROWS:
        # bfloat16 through its bits (`widen`), as TVM would legalize it anyway
        source = te.compute(x.shape, lambda *i: widen(tirx.reinterpret("uint16", x(*i)))
                            if str(x.dtype) == "bfloat16" else x(*i).astype("float32"),
                            name=WIDENED)

    # The row pass reads alpha input rows at one column. A padding row depends on the tile row
    # and the unrolled term only, so each read keeps its own test; a padding column is the same
    # for all alpha reads (and varies across the vector of columns, which TVM's vectorizer turns
    # into scalar code either way), so it is tested once per value. Tested in every read, each
    # value was alpha branches: twice the LLVM IR (ResNet-18's 64-channel 56x56 kernel 9,645
    # lines, now 4,702), and its six Winograd kernels took 3.0-3.4 s to build instead of
    # 2.4-2.6 (one Intel Xeon thread, the two versions alternated); the same results bit for
    # bit, single convs 1-4 % faster, whole models unchanged.
    def padded(b, ch, row, col):
        inside = tirx.all(row >= 1, row < h + 1)
        return tirx.if_then_else(inside, widened(source[b, ch, row - 1, col - 1], dtype), zero)

    def row_pass(b, ch, th, e, col):
        value = _select(e, [
            _combine([padded(b, ch, side * th + a, col) for a in range(alpha)], B_T[k])
            for k in range(alpha)])
        return tirx.if_then_else(tirx.all(col >= 1, col < w + 1), value, zero)

    flat = te.compute((n, c, tiles_h, alpha, side * (tiles_w + 1)), row_pass, name=ROW_PASS)
    rows = te.compute((n, c, tiles_h, alpha, side, tiles_w + 1),
                      lambda b, ch, th, e, p, h: flat[b, ch, th, e, h * side + p], name=ROWS)

    def row_value(b, ch, th, e, tw, a):
        return rows[b, ch, th, e, a % side, tw + a // side]

    def input_tile(e, v, ch, t):
        b, th, tw = t // (tiles_h * tiles_w), (t // tiles_w) % tiles_h, t % tiles_w
        return _select(v, [
            _combine([row_value(b, ch, th, e, tw, a) for a in range(alpha)], B_T[k])
            for k in range(alpha)])

    if paired:
        rc, rr = te.reduce_axis((0, c // 2), "rc"), te.reduce_axis((0, 2), "rr")
        transformed = te.compute(
            (alpha, alpha, c // 2, tiles),
            lambda e, v, pair, t: rounded_bits(input_tile(e, v, 2 * pair, t))
            | (rounded_bits(input_tile(e, v, 2 * pair + 1, t)) << tirx.const(16, "uint32")),
            name=INPUT)
        products = te.compute(
            (alpha, alpha, tiles, out_c),
            lambda e, v, t, o: te.sum(
                widen(half_of(transformed[e, v, rc, t], rr))
                * widen(u[e, v, o // block, rc, o % block, rr]), axis=[rc, rr]),
            name=GEMM)
    else:
        transformed = te.compute((alpha, alpha, c, tiles), input_tile, name=INPUT)
        rc = te.reduce_axis((0, c), "rc")
        products = te.compute(
            (alpha, alpha, tiles, out_c),
            lambda e, v, t, o: te.sum(u[e, v, o // block, rc, o % block]
                                      * transformed[e, v, rc, t], axis=rc),
            name=GEMM)

    # A^T M A in two passes, A^T M once per tile (`COLUMNS`): written as one expression per
    # output, each tile's unrolled outputs repeated A^T M's terms for every column, and an
    # activation's Select (two reads of its operand) the whole expression, code for TVM and
    # LLVM to simplify and fold back. One Intel Xeon, the Winograd kernels built alone (the
    # faster of three builds), one expression / two passes: ResNet-18 5.7 / 4.9 s, GoogLeNet
    # 8.6 / 6.7, Inception-v3 8.2 / 4.7; the same run time (whole models, the two builds
    # alternated: 0.99-1.02)
    columns = te.compute(
        (side, alpha, tiles, out_c),
        lambda i, v, t, o: _select(i, [_combine([products[e, v, t, o] for e in range(alpha)],
                                                A_T[k]) for k in range(side)]),
        name=COLUMNS)

    def output(b, o, row, col):
        t = b * tiles_h * tiles_w + (row // side) * tiles_w + col // side
        return _select(col % side, [
            _combine([columns[row % side, v, t, o] for v in range(alpha)], A_T[j])
            for j in range(side)])

    return te.compute((n, out_c, h, w), output, name=OUTPUT)


def schedule(sch, vec: VectorShape) -> bool:
    """Input transform per input channel, the GEMMs register-tiled like the direct conv (output
    channels as the vector axis, a few tiles as the other side; weights streamed in L1-sized
    channel blocks, each next one prefetched: `weight_prefetch.py`), the output transform per
    tile (A^T M, then its product with A), vectorized over output channels, with the epilogue
    inlined. Stages run over the whole plane, an image, or a row of tiles. On planes of whole
    tiles the output transform computes a run of tiles into registers and the epilogue reads
    it back through the register transpose (`_schedule_transposed_output`)."""
    names = {sch.get(b).name_hint: b for b in blocks_of(sch)}
    if not all(k in names for k in STAGES):
        return None
    inline_elementwise(sch, keep=[names[k] for k in KERNEL_STAGES if k in names])
    names = {sch.get(b).name_hint: b for b in blocks_of(sch)}
    widened_rows = names.get(WIDENED)
    rows, transformed, products, columns, output = (names[k] for k in STAGES)
    sch.set_scope(columns, 0, "local")
    tile_side = int(sch.get(rows).writes[0].source.shape[3]) - 2
    writer = _transposed_writer(sch, output, tile_side, vec)
    if writer is None:
        for block in blocks_of(sch):  # the epilogue that writes the function's output
            if sch.get(block).name_hint not in KERNEL_STAGES:
                sch.reverse_compute_inline(block)
    # With a batch, each image's transformed input and products are computed just before its
    # output transform, while they are in cache (over a whole batch they went out to memory:
    # ResNet-18's 64-channel 56x56 F(4x4) layers at batch 8 took 20-28 ms against 13-16 for ORT,
    # 11.9 / 12.4 per image), unless an image has too few tiles to reuse the weights it streams
    # (7x7 planes: the whole batch's tiles share each weight block).
    batch, out_channels, height, width = (int(d) for d in sch.get(output).writes[0].source.shape)
    in_channels = int(sch.get(rows).writes[0].source.shape[1])
    weight = next(r.source for r in sch.get(products).reads if len(r.source.shape) >= 5)
    paired = len(weight.shape) == 6          # bfloat16 pairs on vdpbf16ps
    weight_bytes = transformed_weight_bytes(tile_side, in_channels, out_channels,
                                            2 if paired else 4)
    row_tasks = by_rows(weight_bytes)
    per_image = not row_tasks and batch > 1 and \
        -(-height // tile_side) * -(-width // tile_side) >= PER_IMAGE_TILES
    # `task`: the loop the GEMM and input stages go under (a row of tiles, or an image), None
    # for stages over the whole plane
    task = None
    if writer is not None:
        # placed first: the stages below go under its loops
        planes = _schedule_transposed_output(sch, output, columns, writer, tile_side,
                                             row_tasks, per_image, vec)
        task = planes if row_tasks else sch.get_loops(writer)[0] if per_image else None
    elif row_tasks:
        # One task per (image, row of tiles), parallel: the stages inside stay serial.
        b, o, row, col = sch.get_loops(output)
        tile_row, row_in_tile = sch.split(row, [None, tile_side])
        sch.reorder(b, tile_row, o, row_in_tile, col)
        task = sch.fuse(b, tile_row)
    elif per_image:
        task = sch.get_loops(output)[0]
    if task is not None:
        if writer is None:
            sch.compute_at(columns, task)     # (then under its tile: `_schedule_columns`)
        sch.compute_at(products, task)
        sch.compute_at(transformed, task)
    if row_tasks:
        sch.parallel(task)  # before decompose_reduction, which leaves the loop unparallelizable

    # The input transform reads each row pass result at m * tile + a: stored with the columns
    # of each residue mod m apart (`ROWS`), those reads are contiguous and the transform
    # vectorizes over the tiles of a row. Measured for F(2x2) on 128 channels at 28x28: 2.17 ms
    # with the scalar transform, 1.43 ms this way. The row pass then runs over a row's
    # contiguous columns and a shuffle splits them, or is computed for each phase's columns
    # (`DEINTERLEAVED_ROW_LANES`).
    row_pass = names[ROW_PASS]
    tiles_w = int(sch.get(rows).writes[0].source.shape[5]) - 1
    deinterleaved = vec.lanes in DEINTERLEAVED_ROW_LANES
    if not deinterleaved:        # the pass computed for each phase's strided columns
        sch.compute_inline(row_pass)
    e, v, ch, t = sch.get_loops(transformed)[-4:]
    t_rows, t_in_row = sch.split(t, [None, tiles_w])
    sch.reorder(ch, t_rows, e, v, t_in_row)
    sch.compute_at(rows, ch)
    *_, row_e, parity, half = sch.get_loops(rows)
    sch.unroll(row_e)
    if deinterleaved:
        sch.compute_at(row_pass, row_e)
        sch.vectorize(sch.get_loops(row_pass)[-1])
        sch.tensorize(parity, interleave.register_deinterleave(
            tile_side, tiles_w + 1, str(sch.get(rows).writes[0].source.dtype)))
    else:
        sch.vectorize(half)
    if widened_rows is not None:
        sch.compute_at(widened_rows, ch)
        sch.vectorize(sch.get_loops(widened_rows)[-1])   # a row (its rows may be padding)
    sch.unroll(e)
    sch.unroll(v)
    sch.vectorize(t_in_row)
    if not row_tasks and extent(ch, sch) > 1:
        sch.parallel(ch)

    if paired:
        _schedule_paired_gemm(sch, products, weight, row_tasks, vec)
    else:
        _schedule_gemm(sch, products, weight, weight_bytes, row_tasks, vec)

    if writer is not None:
        if not row_tasks and extent(planes, sch) > 1:
            sch.parallel(planes)
        return True
    # Vectors over output channels: the 16 transformed values of a tile are contiguous there
    # (scalar reads strided by the channel count cost 0.4-0.8 ms per conv and made the kernel
    # lose to the direct one below 256 channels).
    b, o, row, col = sch.get_loops(output)   # by rows, b is the (image, tile row) task
    row_outer, row_inner = sch.split(row, [None, tile_side])
    col_outer, col_inner = sch.split(col, [None, tile_side])
    o_outer, o_inner = sch.split(o, [None, vec.lanes])
    # (per image, the batch loop also holds the image's GEMM and transforms: it stays outside)
    sch.reorder(*([] if per_image or row_tasks else [b]), o_outer, row_outer, col_outer, row_inner,
                col_inner, o_inner)
    sch.unroll(row_inner)
    sch.unroll(col_inner)
    sch.vectorize(o_inner)
    _schedule_columns(sch, columns, col_outer)
    if not row_tasks:
        planes = o_outer if per_image else sch.fuse(b, o_outer)
        if extent(planes, sch) > 1:
            sch.parallel(planes)
    return True


def _schedule_columns(sch, columns, tile_loop) -> None:
    """A^T M of one tile (`COLUMNS`), computed under `tile_loop` into registers: unrolled,
    vectorized over output channels."""
    sch.compute_at(columns, tile_loop)
    loops = sch.get_loops(columns)    # [..., i, v, (the tile), o]
    i, v, o = (loops[-4], loops[-3], loops[-1]) if extent(loops[-2], sch) == 1 else loops[-3:]
    sch.unroll(i)
    sch.unroll(v)
    sch.vectorize(o)


def output_pixels(height: int, width: int, tile_side: int, lanes: int) -> int:
    """Output pixels of a row written back at once through the register transpose: the largest
    run of whole tiles within `lanes` that divides the row, or 0 (the plane is not whole
    tiles)."""
    if height % tile_side or width % tile_side:
        return 0
    return max((p for p in range(tile_side, lanes + 1, tile_side) if width % p == 0), default=0)


def _transposed_writer(sch, output, tile_side: int, vec: VectorShape):
    """The block that writes the conv's NCHW output from the output transform's values, which
    are vectors over output channels: the epilogue (bias, residual, activation), or a copy made
    for it; None where the transposed write-back does not apply (planes not whole tiles,
    an epilogue that is not elementwise over the output, outputs not float32)."""
    from tvm import tirx
    buffer = sch.get(output).writes[0].source
    height, width = (int(d) for d in buffer.shape[2:])
    if not TRANSPOSED_WRITE_BACK or str(buffer.dtype) != "float32" or \
            vec.lanes & (vec.lanes - 1) or not output_pixels(height, width, tile_side, vec.lanes):
        return None
    epilogue = [b for b in blocks_of(sch) if sch.get(b).name_hint not in KERNEL_STAGES]
    if not epilogue:
        return sch.cache_write(output, 0, "local")
    if len(epilogue) != 1:
        return None
    block = sch.get(epilogue[0])
    iters = [v.var for v in block.iter_vars]
    reads = [r for r in block.reads if r.source.same_as(buffer)]
    elementwise = len(iters) == 4 and len(block.writes) == 1 and \
        [int(d) for d in block.writes[0].source.shape] == [int(d) for d in buffer.shape] and \
        len(reads) == 1 and all(
            isinstance(r.extent, tirx.IntImm) and int(r.extent) == 1 and r.min.same_as(v)
            for r, v in zip(reads[0].region, iters))
    if not elementwise:
        return None
    if str(block.writes[0].source.dtype) == "bfloat16" and not BFLOAT16_TRANSPOSED_WRITE_BACK:
        return None
    sch.set_scope(output, 0, "local")
    return epilogue[0]


def _schedule_transposed_output(sch, output, columns, writer, tile_side: int, row_tasks: bool,
                                per_image: bool, vec: VectorShape):
    """The output transform computes a run of whole tiles along a row (`output_pixels` pixels wide)
    x a vector of output channels into registers, the register transpose (`transpose.py`) turns each
    of its rows into one vector of pixels per channel, and `writer` applies the epilogue to those
    and stores them as contiguous runs of the NCHW rows. Written by the transform itself, each
    output vector was stored lane by lane and a residual read the same way (321 `vinsertps` in
    ResNet-18's 64-channel 56x56 conv with its residual and relu, 69 this way). One Intel Xeon
    (model 207), each kernel built alone, the faster of three alternated builds: ResNet-18's six
    Winograd kernels 8.1 -> 5.4 s, the 64-channel 56x56 conv with residual and relu 2.0 -> 0.9-1.5
    s. Run time, the two builds alternated (median of 30 per-round ratios): 64 ch 56x56 0.97 (two
    threads 1.01, batch 8 1.01), 128 ch 28x28 1.00, 32 ch 112x112 0.95; the AVX2 build
    (`mcpu="znver3"`) 0.93-0.96. Returns the loop that the parallel tasks take: (image, row of
    tiles) by rows, else (image, block of channels), or the block of channels within an image."""
    from .transpose import PADDED_ROWS, register
    lanes = vec.lanes
    height, width = (int(d) for d in sch.get(output).writes[0].source.shape[2:])
    pixels = output_pixels(height, width, tile_side, lanes)
    b, o, row, col = sch.get_loops(writer)
    tile_row, row_in = sch.split(row, [None, tile_side])
    o_outer, o_inner = sch.split(o, [None, lanes])
    col_outer, col_inner = sch.split(col, [None, pixels])
    if row_tasks:
        sch.reorder(b, tile_row, o_outer, col_outer, row_in, o_inner, col_inner)
    else:
        sch.reorder(b, o_outer, tile_row, col_outer, row_in, o_inner, col_inner)
    # the transform's values pixel-major ([.., row, column, channel]: each a vector), their
    # transposed copy channel-major, each channel's row of pixels padded to whole vectors
    sch.transform_layout(output, ("write", 0), lambda n, c, h, w: (n, h, w, c))
    index = next(i for i, r in enumerate(sch.get(writer).reads)
                 if r.source.same_as(sch.get(output).writes[0].source))
    copy = sch.cache_read(writer, index, "local")
    sch.transform_layout(copy, ("write", 0), lambda n, h, w, c: (n, h, c, w))
    sch.compute_at(copy, col_outer)
    sch.compute_at(output, col_outer)
    _, channels, rows_, cols = sch.get_loops(output)[-4:]
    tile_col, col_in = sch.split(cols, [None, tile_side])
    sch.reorder(tile_col, rows_, col_in, channels)
    sch.unroll(rows_)
    sch.unroll(col_in)
    sch.vectorize(channels)
    _schedule_columns(sch, columns, tile_col)
    wide = PADDED_ROWS and pixels < lanes
    name = sch.get(copy).name_hint
    sch.tensorize(sch.get_loops(copy)[-2], register(pixels, lanes, "float32", "local", wide))
    if wide:
        sch.storage_align(sch.get_sblock(f"{name}_o"), 0, 2, lanes, 0)
    sch.vectorize(col_inner)
    if row_tasks:
        return sch.fuse(b, tile_row)
    return o_outer if per_image else sch.fuse(b, o_outer)


def _schedule_gemm(sch, products, weight, weight_bytes: int, row_tasks: bool,
                   vec: VectorShape) -> None:
    """The float32 GEMMs register-tiled like the direct conv: output channels as the vector axis,
    a few tiles as the other side, weights streamed in L1-sized channel blocks (each next one
    prefetched)."""
    e, v, t, o, rc = sch.get_loops(products)[-5:]
    tiles, block, in_channels = extent(t, sch), int(weight.shape[4]), int(weight.shape[3])
    tile = gemm_tile(tiles, block, vec)
    o_outer, o_inner = sch.split(o, [None, block])
    t_outer, t_inner = sch.split(t, [None, tile])
    blocked = in_channels % CHANNEL_BLOCK == 0 and in_channels >= BLOCKED_REDUCTION_MIN_CHANNELS
    rc_outer, rc_inner = sch.split(rc, [None, CHANNEL_BLOCK]) if blocked else (None, rc)
    if rc_outer is not None:
        sch.reorder(e, v, o_outer, rc_outer, t_outer, rc_inner, t_inner, o_inner)
    else:
        sch.reorder(e, v, o_outer, t_outer, rc_inner, t_inner, o_inner)
    if PREFETCH_NEXT_SLICE and not row_tasks and weight_bytes >= PREFETCH_MIN_WEIGHT_BYTES:
        # each channel block's weights ([a, a, O / block, I, block]: contiguous) are read by
        # the iterations of t_outer; they prefetch the block that follows (by rows, the
        # weights stay in L2 from one row to the next; small ones from one run to the next)
        sch.annotate(t_outer, NEXT_SLICE_ATTR,
                     (CHANNEL_BLOCK if rc_outer is not None else in_channels) * block)
    macs = extent(e, sch) * extent(v, sch) * extent(o_outer, sch) * block * tiles * in_channels
    _finish_gemm(sch, products, [e, v, o_outer], macs, not row_tasks,
                 None if rc_outer is not None else t_outer,
                 rc_outer if rc_outer is not None else rc_inner, o_inner, [t_inner])


def _finish_gemm(sch, products, outer_loops, macs: int, parallel: bool, at, first_reduce,
                 vector, unrolled):
    """The tail both GEMM schedules share: the tile's sums kept in registers and written back
    under `at` (None: the fused outer loops), `outer_loops` fused (parallel where asked and
    `macs` is enough work), `vector` vectorized and `unrolled` unrolled, then the zeroing of the
    sums split off at `first_reduce`. Returns the fused loop."""
    accumulators = sch.cache_write(products, 0, "local")
    outer = sch.fuse(*outer_loops)
    if parallel and macs >= PARALLEL_MIN_MACS:
        sch.parallel(outer)
    sch.reverse_compute_at(accumulators, outer if at is None else at)
    if vector is not None:
        sch.vectorize(vector)
    for loop in unrolled:
        sch.unroll(loop)
    init = sch.decompose_reduction(products, first_reduce)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(accumulators)[-1])
    return outer


def _schedule_paired_gemm(sch, products, weight, row_tasks: bool, vec: VectorShape) -> None:
    """The bfloat16 GEMMs on vdpbf16ps: a register tile of a few tiles by a block of output
    channels over all the input channels, each step one broadcast pair of input channels times
    a [16, 2] weight vector (`conv2d_bf16.PACKED_INTRINSIC`). The tile keeps its sums in
    registers over the whole reduction, and the block's weights (up to 32 KB for 512 input
    channels) are read again by each tile (one Zen 4 thread, us, in blocks of 64 input channels
    as the float32 GEMMs / whole: 64 ch 56x56 920 / 865, 128 -> 64 ch 56x56 1,768 / 1,651, 256 ch
    14x14 582 / 546, 512 ch 7x7 729 / 723). No weight prefetches, unlike the float32 GEMMs:
    with each next block prefetched (`weight_prefetch.py`), bfloat16 ResNet-18 took 1.04-1.05x
    its time at one thread and 1.02x at two, VGG-11 1.07x at one."""
    from . import conv2d_bf16
    conv2d_bf16.register_intrinsic()
    e, v, t, o, rc, rr = sch.get_loops(products)[-6:]
    tiles, block, pairs = extent(t, sch), int(weight.shape[4]), int(weight.shape[3])
    tile = dividing_gemm_tile(tiles, block, vec)
    o_outer, o_inner = sch.split(o, [None, block])
    o_vectors, o_lanes = sch.split(o_inner, [None, conv2d_bf16.LANES])
    t_outer, t_inner = sch.split(t, [None, tile])
    sch.reorder(e, v, o_outer, t_outer, rc, t_inner, o_vectors, o_lanes, rr)
    macs = extent(e, sch) * extent(v, sch) * extent(o_outer, sch) * block * tiles * pairs * 2
    outer = _finish_gemm(sch, products, [e, v, o_outer], macs, not row_tasks, t_outer, rc, None,
                         [t_inner, o_vectors])
    sch.annotate(outer, "pragma_import_llvm", conv2d_bf16.WRAPPER_IR)
    sch.tensorize(o_lanes, conv2d_bf16.PACKED_INTRINSIC)
