"""Register-tiled micro-kernels for the two GEMM-like PrimFunc kinds, conv2d and dense/matmul.

Both are scheduled the same way: the output channels (conv) or columns (dense) are the vector
axis, tiled by `block` lanes; a few output pixels/rows form the other side of the register tile;
the reduction runs outside the tile, so the tile's accumulators stay in registers (`local` scope,
channels innermost) and every step is one broadcast of an input scalar times a contiguous weight
vector. The weight is a constant packed at lowering to [N / block, ..., block] (the block
chosen by a target pass) so that vector is one aligned load. Elementwise epilogues (bias,
batch-norm scale/shift, residual add, activation) are computed from the accumulator tile before
it leaves registers."""
from __future__ import annotations

from .common import (PARALLEL_MIN_MACS, VectorShape, accumulator_read, blocks_of, extent,
                     is_reduction, schedule_elementwise)


def packed_weight(func, block, rank: int):
    """The weight the lowering packed for this rule ([N / block, ..., block], `rank` dims): a
    parameter of `func` of that rank read by `block`, or None when the target pass chose no
    layout (the rule then does not apply)."""
    for region in block.reads:
        if len(region.source.shape) == rank and any(p.same_as(region.source) for p in func.params):
            return region.source
    return None


def balanced_tile(length: int, limit: int) -> int:
    """Tile size at most `limit` that covers `length` in the fewest tiles, as evenly as possible
    (the last tile is predicated when it does not divide)."""
    limit = max(1, min(limit, length))
    tiles = -(-length // limit)
    return -(-length // tiles)


def conv_row_tile(out_width: int, block: int, vec: VectorShape) -> int:
    """Output pixels per register tile row of the conv2d rule for `block` output channels: as
    many as the accumulator registers hold, balanced over the row; a divisor of the row at
    least 2/3 as wide where the balanced tile does not divide it (the row is otherwise padded
    to whole tiles, and the epilogue under the tiles writes under a predicate: 55 wide rows,
    16 -> 64 channels 3x3, 1 thread, vs ORT: 11-pixel tiles 1.16-1.29x, 14 padded 1.58x, 14
    with a predicated last tile 2.0x)."""
    limit = vec.accumulators // max(1, block // vec.lanes)
    tile = balanced_tile(out_width, limit)
    if out_width % tile:
        divisor = max(d for d in range(1, tile + 1) if out_width % d == 0)
        if 3 * divisor >= 2 * tile:
            return divisor
    return tile


# The vector width (lanes) with which convs take a one-register channel block where its tile
# divides their rows and the two-register block's does not (`whole_row_block`; 0: never). An
# Intel Xeon, 2 threads, Inception-v3's 1x1 768 -> 192 ch 17x17 conv alone 0.45 -> 0.33-0.35 ms
# (1 thread 0.60-0.62 both ways); whole models, the builds interleaved, 1 / 2 threads:
# Inception-v3 0.997 / 0.969, SqueezeNet 0.986 / 1.002. With 8 lanes (AVX2) untimed, so not
# taken there.
WHOLE_ROW_BLOCK_LANES = 16


def whole_row_block(block: int, channels: int, out_width: int, vec: VectorShape,
                    padded_input: bool) -> int:
    """The channel block of a conv: `block`, or one vector register where `block`'s tile leaves
    a partial tile in each row and the one-register tile divides it (the whole 17-pixel rows of
    Inception's 17x17 convs, 27 of SqueezeNet's and AlexNet's), with WHOLE_ROW_BLOCK_LANES
    lanes. The conv2d rule computes such rows to whole tiles (`padded_width`): for a conv that
    pads nothing else, a padded copy of its whole input before the tiles start. A conv that pads
    its input (`padded_input`) makes that copy anyway; there the one-register tile is taken on
    cores that split 512-bit instructions in two (`VectorShape.split_512`), where a step's
    broadcasts cost no more than its FMAs and the padded columns' FMAs are the waste. One Zen 4
    core, convs + relu alone, us, 2 x 9 tiles of 32 channels / 17 of 16, builds alternated, 1 /
    2 threads: 7x1 192 ch 17x17 1402 / 1302 (0.929) and 742 / 673 (0.907), 1x7 160 ch 17x17
    981 / 909 (0.931) and 547 / 495 (0.906), AlexNet's 5x5 64 -> 192 ch 27x27 4102 / 3932
    (0.961) and 2165 / 2078 (0.948); whole Inception-v3 (26 convs) 0.984 / 0.914 and 0.954 in a
    rerun. Elsewhere (two full 512-bit FMA ports, untimed) the padded convs keep `block`."""
    lanes = vec.lanes
    if lanes != WHOLE_ROW_BLOCK_LANES or block <= lanes or channels % lanes or \
            (padded_input and not vec.split_512) or \
            out_width % conv_row_tile(out_width, block, vec) == 0:
        return block
    return lanes if out_width % conv_row_tile(out_width, lanes, vec) == 0 else block


# A block computing more than this many times the channels it writes loses to the generic rule
# (1 thread, AVX-512, 3x3 convs on 64x64, generic vs 8-channel tiles: 64 -> 2 channels 0.67 vs
# 0.99 ms, 64 -> 3 0.75 vs 0.88, 64 -> 4 0.93 vs 0.86; 32 -> 5 on 56x56 0.67 vs 0.33).
MAX_PADDING = 2
# The cost of a one-register tile step relative to a two-register one: measured 12-15 % slower
# per product (1 thread, AVX-512: 1x1 512 -> 1000 ch at 7x7, 13x13, 14x14; 3x3 64 -> 200 ch at
# 28x28), but the extra zero filters of a wider block cost as much, so only near-free padding
# takes the wider block (3x3 64 -> 200 ch at 13x13: 13 x 16 8 % faster than 7 x 32).
ONE_REGISTER_STEP = 1.05


def channel_block(channels: int, vec: VectorShape, groups: int = 1) -> int:
    """Output channels per tile for `channels` output channels per group (0: none; the conv
    stays with the generic rule): two vector registers, one, or (with 16 lanes) a half-width
    one, the last block of each group padded with zero filters where it does not divide.
    Chosen by register steps per tile step (blocks x registers; a half-width register costs
    a whole one), a one-register step costing ONE_REGISTER_STEP of a two-register one (each
    broadcast input feeds one product instead of two), then a dividing block (the larger).
    So a two-register block wins wherever it pads at most 5 % more filters. E.g. on AVX-512:
    24 channels as one padded 32 block (96 -> 24 ch at 80x80, 1 thread: 3.7 ms; 4.9 ms as 2 x
    16, 4.8 ms as 3 x 8); 1000 as 32 x 32 (1x1 512 -> 1000 ch at 13x13: 1.21 ms; 1.37 ms as
    63 x 16); 39 as 3 x 16; 64 as 2 x 32; 200 as 13 x 16. In a grouped conv a padded group
    fits one block: TVM places the epilogue under each tile by solving its channel index for
    the tile's, which padding after several blocks of a group makes non-affine
    (reverse_compute_at fails); the epilogue iterates by group (`conv_kernel.by_group`), so
    that under a tile it covers that tile's group only."""
    def cost(block: int):
        registers = max(1, block // vec.lanes)
        steps = -(-channels // block) * registers
        return (steps * (ONE_REGISTER_STEP if registers == 1 else 1.0), channels % block != 0,
                -block)

    candidates = [b for b in [2 * vec.lanes, vec.lanes] + ([vec.lanes // 2] if vec.lanes >= 16
                                                            else [])
                  if -(-channels // b) * b <= MAX_PADDING * channels
                  and (channels % b == 0 or groups == 1 or channels < b)]
    return min(candidates, key=cost, default=0)


# Whether a conv tile's dividing epilogue (sigmoid, SiLU, tanh) is computed on the tile's
# channel vectors before a copy writes the pixels out (`epilogue_on_channel_vectors`), not in
# that write on gathered pixels. One Intel Xeon core (AMX host), the builds interleaved, time
# with / without: 1x1 convs with SiLU, 192 -> 1152 ch on 7x7 0.91-0.94, 112 -> 672 ch on
# 14x14 0.96-0.97, 80 -> 480 ch on 14x14 0.95, 32 -> 64 ch on 28x28 1.00 (outputs identical);
# whole EfficientNet-B0 runs 0.984 and 0.997 at one thread, 1.009 and 1.005 at two: within
# the host's noise (MobileNetV3, whose hard swish has no division and whose code is the same,
# 1.007 and 1.024).
EPILOGUE_ON_CHANNELS = True
# Output dtypes whose copy-out from such a local tile of channel vectors is one shuffle and
# one store per channel (`transpose.channel_rows`), not a vectorized copy, which LLVM built
# byte by byte (`vpextrb`, `vpinsrb`). int8 convs, AVX2 build (mcpu="znver3") of 7-bit
# weights, AMD Zen 4, 1 thread, builds alternated, outputs identical, time shuffled /
# vectorized: 1x1 stride-2 64 -> 128 ch 56x56 0.93-0.94, 3x3 64 -> 128 ch 112x112 0.98-0.99,
# 3x3 convs of 64-512 ch on 56x56 to 7x7 0.99-1.01; whole ResNet-18 0.98 at batch 1 and 8,
# VGG-11 1.01.
SHUFFLED_COPY_OUT = ("uint8",)


def finish_tile(sch, main, tile_loop, parallel_loops, vector_loop, unroll_loops, first_reduce,
                writer, writer_lanes: int | None = None, transpose_lanes: int = 0,
                epilogue_lanes: int = 0, every_epilogue: bool = False) -> None:
    """Common tail of the tiled rules: fuse the outer loops (parallel when the kernel is big
    enough), move the writer (epilogue or copy-out) under `tile_loop` (None: the fused loop),
    vectorize and unroll the tile, then split off the accumulator initialisation (vectorize and
    parallel must come before `decompose_reduction`, which leaves the loops unchangeable).
    `writer_lanes`: the writer's innermost loop is contiguous in both the tile and the output
    (dense), so it is vectorized by that many lanes; otherwise (conv: pixels, contiguous in the
    output, strided in the channel-vector tile) it is vectorized whole, which LLVM turns into
    register shuffles and full-width stores (resnet18 1 thread 2-4% faster than unrolled
    scalar stores, outputs identical). `transpose_lanes`: a large plane's tile is transposed
    before its writer (`transpose.py`); `epilogue_lanes`: otherwise a dividing epilogue (any
    epilogue with `every_epilogue`) runs on the tile's channel vectors
    (`epilogue_on_channel_vectors`)."""
    macs = 1
    for loop in sch.get_loops(main):
        macs *= extent(loop, sch)
    fused = sch.fuse(*parallel_loops) if len(parallel_loops) > 1 else parallel_loops[0]
    if macs >= PARALLEL_MIN_MACS:
        sch.parallel(fused)
    at = fused if tile_loop is None else tile_loop
    sch.reverse_compute_at(writer, at)
    copy = None
    if transpose_lanes:
        from .transpose import transposed_write_back
        transposed_write_back(sch, writer, transpose_lanes)
    elif epilogue_lanes and EPILOGUE_ON_CHANNELS:
        copy = epilogue_on_channel_vectors(sch, writer, at, epilogue_lanes,
                                           dividing_only=not every_epilogue)
    if vector_loop is not None:      # None: the caller tensorizes it after this
        sch.vectorize(vector_loop)
    for loop in unroll_loops:
        sch.unroll(loop)
    init = sch.decompose_reduction(main, first_reduce)
    sch.vectorize(sch.get_loops(init)[-1])
    if copy is not None:
        # the epilogue on whole channel vectors of the tile, then the copy-out by pixels
        sch.vectorize(sch.get_loops(writer)[-1])
        writer = copy
        dtype = str(sch.get(copy).writes[0].source.dtype)
        if dtype in SHUFFLED_COPY_OUT:
            from .transpose import channel_rows
            if channel_rows(sch, copy, epilogue_lanes):
                return
    inner = sch.get_loops(writer)[-1]
    if writer_lanes and extent(inner, sch) % writer_lanes == 0:
        registers, lanes = sch.split(inner, [None, writer_lanes])
        sch.vectorize(lanes)
        sch.unroll(registers)
    elif extent(inner, sch) > 1:
        from tvm.s_tir import ScheduleError
        try:
            sch.vectorize(inner)
        except ScheduleError:
            # TVM refuses where the block under it is not a complete one (a conv of one
            # output channel, a residual and tiles of one pixel: its writer's loop holds the
            # epilogue's copy-out); the loop stays scalar, a few values per tile
            pass


def epilogue_on_channel_vectors(sch, writer, at, lanes: int, dividing_only: bool = True):
    """Where the epilogue under a conv tile (`writer`, under loop `at`) divides (sigmoid, SiLU,
    tanh; any epilogue unless `dividing_only`) and reads the accumulators as [..., pixel,
    channel] with channels in whole vectors of `lanes` (one or more blocks of them per tile):
    compute it on the tile's channel vectors into a local tile of that layout and leave the
    write to the output (pixels innermost) to a copy, the block returned; None where nothing
    changed. In the writer the epilogue ran on each channel's few pixels gathered from the
    tile: on a 7x7 plane 7 of 8 lanes (EfficientNet-B0's 1x1 192 -> 1152 ch conv on 7x7,
    1 thread: 153 us, 285 us with its SiLU; the SiLU's share measured 71 -> 48 us)."""
    from tvm import tirx
    import tvm_ffi
    block = sch.get(writer)
    index = accumulator_read(block)
    if index is None or len(block.writes) != 1 or len(block.writes[0].source.shape) != 4:
        return None
    step = block.reads[index].source.shape[4]
    if not isinstance(step, tirx.IntImm) or int(step) % lanes:
        return None
    step = int(step)
    out_channels = block.writes[0].source.shape[1]
    if not isinstance(out_channels, tirx.IntImm) or int(out_channels) % step:
        return None   # the last block padded: its loop over channels is shorter than the block
    divisions = []
    tvm_ffi.structural_walk(block.body, (tirx.Div, lambda node: divisions.append(node)))
    if dividing_only and not any("float" in str(d.ty) for d in divisions):
        return None
    loops = sch.get_loops(writer)
    depth = next((i for i, loop in enumerate(loops) if sch.get(loop).same_as(sch.get(at))), None)
    if depth is None:
        return None
    own = loops[depth + 1:]      # the writer's loops over the tile: channels, then pixels
    channels = next((loop for loop in own if extent(loop, sch) % step == 0), None)
    if channels is None or len(own) < 2:
        return None
    copy = sch.cache_write(writer, 0, "local")
    sch.reverse_compute_at(copy, at)
    sch.transform_layout(writer, ("write", 0), lambda n, o, h, w: (n, o // step, h, w, o % step))
    blocks, channels = sch.split(channels, [None, step])     # blocks: 1 unless several
    own = sch.get_loops(writer)[depth + 1:]
    sch.reorder(blocks, *[loop for loop in own if not any(
        sch.get(loop).same_as(sch.get(c)) for c in (blocks, channels))], channels)
    return copy


def accumulator_writer(sch, main):
    """Keep `main`'s results in a register tile: if an elementwise epilogue consumes them, that
    epilogue becomes the writer and the intermediate becomes local; otherwise a copy-out block is
    added. Returns the writer block, or None when the consumers cannot be fused (several)."""
    consumers = sch.get_consumers(main)
    if len(consumers) == 0:
        return sch.cache_write(main, 0, "local")
    if len(consumers) == 1 and not is_reduction(sch.get(consumers[0])):
        sch.set_scope(main, 0, "local")
        return consumers[0]
    return None


def spatial_rest(sch, main, vec: VectorShape, skip: tuple[str, ...] = ()) -> None:
    """Schedule the blocks left outside the tile (e.g. input padding) as elementwise work, but
    for those whose names start with one of `skip` (scheduled already)."""
    tile_loops = {sch.get(loop) for loop in sch.get_loops(main)}
    for block in blocks_of(sch):
        loops = sch.get_loops(block)
        if is_reduction(sch.get(block)) or any(sch.get(l) in tile_loops for l in loops) or \
                sch.get(block).name_hint.startswith(skip):
            continue
        schedule_elementwise(sch, block, vec.lanes)
