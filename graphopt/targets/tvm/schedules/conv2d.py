"""conv2d (NCHW, any stride/padding/dilation, grouped when no vector block spans two groups) with
fused epilogues: output channels are the vector axis, a row segment of output pixels the
register-tile axis. The weight arrives packed as [OC / block, KH, KW, IC, block] (the block
chosen by the target pass `select_conv_algorithm`, the packing done at lowering), so the
innermost reduction (input channels) walks it contiguously; the rule changes no weight. Where
the block pads a group's channels, the tile computes the zero filters too and the epilogue,
placed under each tile, writes the real channels (a predicate on its channel loop, outside
the vectorized pixel row; in a grouped conv a loop over the group's channels:
`conv_kernel.by_group`)."""
from __future__ import annotations

import math

from ..weight_prefetch import PREFETCH_ATTR
from .common import (PARALLEL_MIN_ELEMENTS, VectorShape, blocks_of, buffer_bytes, extent,
                     inline_elementwise, iter_kinds, repeats_if_computed_at)
from .phases import vectorize_padded_plane, vectorize_padded_row
from .tiled import accumulator_writer, conv_row_tile, finish_tile, packed_weight, spatial_rest

NAME = "conv2d"
# The zero-padding stage of the convs this rule schedules, by which it finds it (the TE of
# `ops.conv_kernel.blocked_conv2d` gives it this name).
PADDING_BLOCK = "pad_temp"
# Small output planes (20x20 and below: Inception's 17x17, 14x14, 7x7) have few tiles per
# weight block; above this many output pixels the weights are reused across enough tiles without
# input-channel blocking (28x28, 1 thread: 0.87 ms blocked against 0.81). Inception-v3's 17x17
# convs, one AVX-512 core, ms, unblocked / blocked: 3x3 stride-2 288 -> 384 ch (4 MB of weights,
# streamed once per output row unblocked) 6.8 / 4.3, 1x7 and 7x1 160-192 ch 0.51-1.23 /
# 0.47-1.07, 1x1 768 -> 192 ch 1.14 / 1.06.
SMALL_PLANE = 20 * 20
# Parallel tasks the input-channel-blocked schedule makes at least (channel blocks x row bands).
PARALLEL_TASKS = 8
# Bytes of packed weights one input-channel block may span, to stay in L1 with the accumulators
# and the input rows the block reads. 3x3 convs of 32-channel blocks take 8 input channels (9
# KiB) where 20 KiB gave them 16 (18 KiB): whole models, an Intel Xeon (48 KiB L1), the two
# builds interleaved, 12 / 20 KiB, 1 / 2 threads: ResNet-18 (three runs) 0.94-0.97 / 0.96-0.97,
# ResNet-50 0.98 / 0.98, GoogLeNet 0.97 / 1.01; within the host's noise DenseNet-121 (0.99-1.04 /
# 0.97-1.00), Inception-v3 (0.98-1.01 / 1.00-1.01) and RegNetX-400MF (1.01-1.02 / 0.99-1.02).
L1_WEIGHT_BYTES = 12 * 1024
# The smallest L1 data cache (per core) for which small planes take input-channel blocks. With
# 32 KiB (AMD Zen 4, 1 thread, ms, 18 KiB blocks / 9 KiB / unblocked) the blocks lost: 3x3
# 512 ch 7x7 3.27 / 2.77 / 2.42 (ORT 2.86), stride-2 256 -> 512 ch 1.16 / 1.13 / 1.08, 288 ->
# 384 ch 1.68 / - / 1.59.
BLOCKED_L1D = 48 * 1024
# With 8 lanes (AVX2: 16-channel weight blocks, half the bytes per input channel) small planes
# of at least this many output pixels take input-channel blocks whatever the L1 (0: never),
# where the weights do not stream. AVX2 build (mcpu="znver3"), one Zen 4 core (32 KiB L1).
# 1x1 convs + add on 14x14 alone, ms, unblocked / blocked (ORT's AVX2 kernels under
# --as-avx2): 384 -> 64 ch 0.184 / 0.159 (0.144), 576 -> 96 0.266 / 0.255 (0.234), 384 -> 96
# 0.177 / 0.165 (0.156), 672 -> 112 0.332 / 0.311 (0.308), 480 -> 80 0.193 / 0.181 (0.175).
# Inside the models, each conv kernel alternated, the sums blocked / unblocked: MobileNetV2
# 0.979, RegNetX-400MF 0.985-1.000, ResNet-50 0.972-0.992, DenseNet-121 0.977, Inception-v3
# 0.981, GoogLeNet 0.975-0.983, MobileNetV3-Large 0.985, ResNet-18 1.000, SqueezeNet 0.997
# (1.025 with its 2 MB classifier blocked too); whole runs alternated 0.97-1.01, the host's
# noise. Two threads: the blocked kernels 0.50-0.75, the sums MobileNetV2 0.943, RegNetX-400MF
# 0.951, whole runs 0.960 / 0.974. On 7x7 planes the 1x1 convs lost (320 -> 1280, 960 -> 160,
# 400 ch: 1.08-1.10).
BLOCKED_YMM_MIN_PIXELS = 100
# Input channels stored together when the input is channel-blocked: one 64-byte cache line.
INPUT_BLOCK = 16
# Output channels up to which a 1x1 conv reads its NCHW input in place, with these lanes,
# instead of through the channel-blocked copy (`_block_input`; 0: always copy). Timed with 16
# lanes on an Intel Xeon (see `_block_input`). With 8, an AVX2 build (`--as-avx2`) on an AMD
# Zen 5, whole models alternated, in place / copied, 1 / 2 threads: SqueezeNet 1.1 0.951-0.962
# / 0.969-0.972 (its 256 -> 32 ch squeeze on 27x27 had run slower on two threads than on one:
# each thread read the whole copy, made by one), ShuffleNetV2 0.998 / 0.973, MobileNetV2 0.972
# / 1.002, GoogLeNet 0.987 / 1.014, Inception-v3 0.997 / 0.994, DenseNet-121 0.995 / 0.998.
STRIDED_INPUT_MAX_CHANNELS = 32
STRIDED_INPUT_LANES = (16, 8)
# Whether a strided 1x1 conv (ResNet's downsampling projections) reads its NCHW input in place
# (`_block_input`): the channel-blocked copy covers the whole input, of which the conv reads
# one pixel in stride^2, and with a batch it is made image by image, gathering 16 planes per
# vector. Convs alone (with ORT's own layout reorders at 1.03, 0.84 and 0.76 ms), batch 8, an
# Intel Xeon, 2 threads, ms, copied / in place: 64 -> 128 ch 56x56 3.26 / 1.78, 256 -> 512 ch
# 14x14 1.17 / 0.78 (128 -> 256 ch on 28x28 takes the input-channel blocks either way); at
# batch 1 within the host's noise (0.22 / 0.24, 0.13 / 0.13). Whole models, the builds
# alternated, time in place / copied: ResNet-50 batch 8, 2 threads, 0.955; ResNet-18 batch 8
# 0.983 (2 threads) and 0.999 (1); at batch 1 ResNet-18, ResNet-50 and RegNetX-400MF
# 0.984-1.006, outputs equal.
STRIDED_CONV_IN_PLACE = True
# The vector widths with which a strided 1x1 conv onto a small plane (at most SMALL_PLANE output
# pixels) copies its input channel-blocked after all: with 8 lanes (AVX2) reading the NCHW
# planes in place lost to the copy. AVX2 build (mcpu="znver3"), one Zen 4 core, ms, in place /
# copied (ORT's AVX2 kernels under --as-avx2): 512 -> 1024 ch 28x28 -> 14x14 3.74 / 2.66
# (2.25), 1024 -> 2048 ch 14x14 -> 7x7 3.15 / 2.85 (2.67), but 256 -> 512 ch 56x56 -> 28x28
# 2.83 / 3.42 (2.36): larger planes stay in place. Inside the models, each conv kernel of the
# two builds alternated: ResNet-50's two 0.71 and 0.89 (two threads 0.77 and 0.79), ResNet-18's
# 256 -> 512 ch 0.89; kernel sums ResNet-50 0.986 (two threads 0.981), ResNet-18 0.996,
# RegNetX-400MF 0.991; at batch 8 ResNet-50's 1024 -> 2048 ch 0.85, the sums 0.999-1.019 (the
# host's noise).
STRIDED_COPY_LANES = (8,)
# Whether the channel-blocked copy (`_block_input`) is vectorized along its 16 channels (16
# loads from as many planes, one contiguous store); left to LLVM, the loop along a row was
# vectorized into `vscatterqps` stores of 8 lanes. An Intel Xeon, one thread, convs alone, with
# / without: 1x1 256 -> 64 ch 35x35 0.90, 192 -> 48 ch 0.85, 288 -> 64 ch 0.86 (ORT 0.85, 0.78,
# 0.67 of the time without); Inception-v3, whose 35x35 1x1 convs copy, 0.989 and 0.991 at one
# thread, 0.963 at two; SqueezeNet, GoogLeNet and ResNet-18 at batch 8 0.990-1.014 (noise);
# outputs equal. The copy in parallel over rows lost (Inception-v3 1.014 / 1.006 at two / one
# threads): the conv's tasks read it from the other core's cache either way.
COPY_BY_CHANNEL_VECTORS = True
# Output planes from which the tile is written back through a register transpose.
TRANSPOSED_PLANE = 112 * 112
# Weight bytes from which weights larger than the conv's activations (its input and its
# output) are read one channel block at a time over every output row, not all of them once per
# row (`_streams_weights`): half of the smallest L2 measured (AMD Zen 4, 1 MiB per core).
# Inside a whole run (weights coming from memory), one Zen 4 core, ms, rows outer / channel
# blocks outer: DCGAN's sub-pixel 512 -> 1024 ch 2x2 conv on a 5x5 plane (8 MB of weights)
# 2.65 / 1.65, ResNet-18's 3x3 512-ch 7x7 convs (9 MB) 3.7-3.9 / 2.7-2.8; whole models against
# ORT, 1 / 2 threads: DCGAN's generator 1.26 -> 1.11 / 1.46 -> 0.90, ResNet-18 0.77 -> 0.74 /
# 1.05 -> 0.92, DeepLabV3 (2 threads, two runs) 0.91-0.94 -> 0.79-0.81; GoogLeNet, AlexNet,
# ResNet-50, SqueezeNet and Inception-v3 within the host's noise.
STREAMED_WEIGHT_BYTES = 512 * 1024
# How many times the work of a conv's padding stage (`PADDING_BLOCK`) the
# parallel tasks may repeat between them to pad their own rows, and the most products a conv may
# have to do so (`_pad_in_each_task`).
TASK_PADDING_REPEATS = 4
TASK_PADDING_MAX_MACS = 1 << 22
# Padded inputs of at least this many bytes are padded inside the tasks too where those repeat
# the padding's work at most TASK_PADDING_LARGE_REPEATS times (`_pad_in_each_task`).
TASK_PADDING_MIN_BYTES = 512 * 1024
TASK_PADDING_LARGE_REPEATS = 2
# Whether the input-channel-blocked schedule prefetches each next block of weights while it
# computes the rows of the current one (`weight_prefetch.py`), for packed weights of at least
# PREFETCH_MIN_WEIGHT_BYTES (smaller ones stay in cache from one run to the next: DeepConvNet's
# 74-147 KB convs ran 1.11x slower with the prefetches at one thread; the bound against none,
# 1 / 2 threads: DeepConvNet 0.905 / 0.973, GoogLeNet 1.008 / 1.023, ResNet-50 1.019 / 1.000,
# Inception-v3 1.003 / 1.014, the last three within the host's noise). Whole models, an Intel
# Xeon (48 KiB L1, 2 MiB L2), the builds interleaved, time with / without, 1 / 2 threads:
# ResNet-18 0.972 / 0.958, ResNet-50 0.928 / 0.938, GoogLeNet 0.937 / 0.990, Inception-v3 0.902
# / 0.976; within the host's noise RegNetX-400MF and SqueezeNet (0.986-1.006). Alone and hot a
# kernel runs as fast with them (3x3 stride-2 256 -> 512 ch) or up to 6 % slower (1x1 400 ch
# 7x7).
PREFETCH_NEXT_BLOCK = True
PREFETCH_MIN_WEIGHT_BYTES = 256 * 1024
# Whether the zero-padding stage copies its rows as vectors (`_schedule_padding`); as one loop
# under its bounds checks it was a scalar copy of every element. One AMD Zen 4 core, the builds
# interleaved, time with / without: convs alone, 3x3 32 -> 32 ch 16x16 (padding 2) 0.84-0.90,
# 16 -> 32 ch 14x14 0.87, 32 -> 64 ch 8x8 0.85, 64 ch 56x56 0.90-0.92, 16 ch 28x28 0.93-1.01;
# whole models DeepConvNet 0.95, DCGAN 0.98, SqueezeNet 0.98, ResNet-18, VGG-11, GoogLeNet and
# Inception-v3 0.99-1.01.
VECTORIZE_PADDING = True
# Whether a zero-padding stage computed before the tile copies its planes' rows in up to three
# loops, so that whether a row is the input's is known at compile time
# (`phases.vectorize_padded_plane`).
# In one loop over every row the copy of a row was a select that LLVM built element by element
# on the stack (the 7x7 stem's: 1,120 scalar loads, 840 inserts; now none), 0.14 ms of the
# stem's time against 0.04 now. One Zen 4 core, convs + relu alone, builds alternated, time with /
# without, 1 / 2 threads: the 7x7 stride-2 stem 3 -> 64 ch 0.979 / 0.963, AlexNet's 11x11
# stride-4 stem 0.959 / 0.987, stride-2 64 -> 128 ch 56x56 0.967 / 0.958, 32 ch 112x112 1.000 /
# 0.988; whole models ResNet-18 0.995 / 0.995, GoogLeNet 0.991 / 0.976, DenseNet-121 0.997,
# RegNetX-400MF 0.997, AlexNet 1.010 and YOLOv3-tiny 1.006 (one thread; the host's noise).
PADDING_BY_ROW_PARTS = True


def find_conv(sch):
    """The conv2d block: 4 spatial (n, oc, oh, ow) and 3 reduction (ic, kh, kw) iterators."""
    found = [b for b in blocks_of(sch) if iter_kinds(sch.get(b)) == "SSSSRRR"]
    return found[0] if len(found) == 1 else None


def schedule(sch, vec: VectorShape) -> bool:
    """Schedule the conv2d PrimFunc in `sch`: True, or None when the function is not a conv this
    rule handles (the caller then discards `sch`)."""
    conv = find_conv(sch)
    if conv is None:
        return None
    block = sch.get(conv)
    n_var, oc_var, oh_var, ow_var, ic_var, kh_var, kw_var = (iv.var for iv in block.iter_vars)
    weight = packed_weight(sch.mod["main"], block, rank=5)   # ops.conv_kernel.pack_weight
    if weight is None:
        return None  # no weight layout was chosen for this conv (select_conv_algorithm)
    out_width = int(block.iter_vars[3].dom.extent)
    oc_block = int(weight.shape[4])
    if _input_varies_with_oc(block, oc_var, oc_block, weight):
        return None  # a block spanning groups: the input would not be one broadcast

    inline_elementwise(sch, keep=[conv, *sch.get_producers(conv)])
    conv = find_conv(sch)
    writer = accumulator_writer(sch, conv)
    if writer is None:
        return None
    # Whole tiles: a divisor of the row, or the row was padded at lowering to whole tiles of
    # this width (`Conv2d.padded_width`), so that no tile computes under a predicate (27 wide
    # rows, 32 -> 128 channels 3x3, 1 thread: 1.9x ORT predicated, 1.2-1.4x padded).
    width = conv_row_tile(out_width, oc_block, vec)
    # The accumulator tile keeps channels innermost, so each tile row is whole vector registers.
    sch.transform_layout(conv, ("write", 0),
                         lambda n, o, h, w: (n, o // oc_block, h, w, o % oc_block))

    n, oc, oh, ow, ic, kh, kw = sch.get_loops(conv)
    oc_outer, oc_inner = sch.split(oc, [None, oc_block])
    # Rows of 56, 28, 14 or 7 pixels have no divisor near the register budget: a predicated
    # last tile is cheaper than narrow tiles (measured 1.06x vs 1.2x ORT on 56 wide rows).
    ow_outer, ow_inner = sch.split(ow, [None, width])
    ic_block = _input_channel_block(block, weight, vec)
    # With a batch, the padded input is built one image at a time just before that image's
    # convolution, while it is still in cache (a whole padded batch went out to memory first:
    # ResNet-18's 56x56 layers ran 1.25x ORT at batch 8 against 1.04x at batch 1).
    per_image = int(block.iter_vars[0].dom.extent) > 1
    outer = [oc_outer] if per_image else [n, oc_outer]
    if ic_block:
        # The weight block of one input-channel block stays in L1 while every tile of the
        # output plane uses it; the plane's accumulators (<= 12.5 KB) wait in L1 between blocks.
        # Measured (1 thread, vs ORT): 512ch 7x7 1.43 -> 1.27, 256ch 14x14 1.21 -> 1.03.
        ic_outer, ic_inner = sch.split(ic, [None, ic_block])
        groups = _row_groups(math.prod(extent(loop, sch) for loop in outer), extent(oh, sch))
        oh_groups, oh = sch.split(oh, [groups, None])
        sch.reorder(n, oc_outer, oh_groups, ic_outer, oh, ow_outer, kh, kw, ic_inner, ow_inner,
                    oc_inner)
        tile_loop, parallel_loops, first_reduce = None, outer + [oh_groups], ic_outer
    elif _block_input(sch, conv, weight, vec.lanes):
        # The input is copied to [N, C / 16, H, W, 16]: each step reads 16 channels from one
        # cache line instead of 16 planes apart (1x1 convs, 1 thread, ms vs ORT: 256->64 ch
        # 56x56 1.76 -> 1.06 / 0.95, 512->128 ch 28x28 1.24 -> 0.86 / 0.79).
        ic_outer, ic_lines = sch.split(ic, [None, INPUT_BLOCK])
        sch.reorder(n, oc_outer, oh, ow_outer, ic_outer, kh, kw, ic_lines, ow_inner, oc_inner)
        tile_loop, parallel_loops, first_reduce = ow_outer, outer + [oh], ic_outer
    else:
        # Threads take bands of output rows (every channel block) where the input is deep:
        # each then reads only its band's input rows (3x3 stride-2 64 -> 128 ch, 28x28 out,
        # 2 threads: 0.60 -> 0.45 ms; 1 thread unchanged); with a thin input (the 3-channel
        # stems) they take channel blocks (VGG-11's first conv, 2 threads: 1.60 by channels,
        # 1.67-1.80 by rows), and so they do where the weights stream from memory
        # (`_streams_weights`).
        deep = int(block.iter_vars[4].dom.extent) >= INPUT_BLOCK
        if deep and not _streams_weights(sch.get(conv), weight):
            sch.reorder(n, oh, oc_outer, ow_outer, kh, kw, ic, ow_inner, oc_inner)
            parallel_loops = ([] if per_image else [n]) + [oh, oc_outer]
        else:
            sch.reorder(n, oc_outer, oh, ow_outer, kh, kw, ic, ow_inner, oc_inner)
            parallel_loops = outer + [oh]
        tile_loop, first_reduce = ow_outer, kh
    if per_image:
        _inputs_per_image(sch, conv, n)
    # Large planes write their tiles through the register transpose (`transpose.py`; 1 thread,
    # AVX-512, ms vs ORT, gathered / transposed: the 7x7 stride-2 3 -> 64 ch stem 1.14-1.22 /
    # 1.10, 3x3 16 -> 64 ch at 112x112 1.26-1.29 / 1.13-1.15); on 56x56 and smaller planes it
    # measured no faster (32 ch 56x56 1.53 / 1.56, 3x3 stride-2 64 -> 128 ch 1.39 / 1.45).
    large_plane = out_width * int(block.iter_vars[2].dom.extent) >= TRANSPOSED_PLANE
    finish_tile(sch, conv, tile_loop, parallel_loops, oc_inner, [ow_inner], first_reduce, writer,
                transpose_lanes=vec.lanes if large_plane and tile_loop is not None else 0,
                epilogue_lanes=vec.lanes)
    if ic_block and PREFETCH_NEXT_BLOCK and buffer_bytes(weight) >= PREFETCH_MIN_WEIGHT_BYTES:
        sch.annotate(oh, PREFETCH_ATTR, ic_block)
    if not per_image:
        _pad_in_each_task(sch, conv)
    if VECTORIZE_PADDING:
        _schedule_padding(sch, conv)
    spatial_rest(sch, conv, vec, skip=(PADDING_BLOCK,) if VECTORIZE_PADDING else ())
    return True


def _pad_in_each_task(sch, conv) -> None:
    """Compute the zero-padded input inside each parallel task (the rows and channels that task
    reads) instead of once before the tasks, where that repeats at most TASK_PADDING_REPEATS
    times the padding's work. Padded once, by the calling thread, the other threads read the
    padded input from that thread's cache line by line: the tile's steps walk the channels, a
    plane apart, so no prefetcher runs ahead of them. Kernels alone, 2 threads, microseconds,
    padded before / in each task: 3x3 32 -> 64 ch 8x8 13.1 / 8.5 (1 thread 14.2 / 14.9), 64
    ch 13x13 59 / 35-37, 48 -> 192 ch 13x13 98 / 77, 16 ch 28x28 24 / 13-17 (1 thread 26 / 24);
    with more repeats it lost (stride-2 256 -> 512 ch 14x14, 15 repeats: 1 thread 707 / 869,
    512 ch 7x7: 1408 / 1514; 2 threads no better). Inside whole models only small convs gained
    (an Intel Xeon, 2 threads: DeepConvNet, whose convs do 1-3 M products, 0.84x; 1 thread
    0.97x); larger ones read inputs another kernel wrote anyway and lost to the repeats
    (Inception-v3 1.02-1.05x, SqueezeNet 1.01x), so only convs of at most
    TASK_PADDING_MAX_MACS products pad in their tasks, and larger ones whose padded input is
    large (`_large_padding`) where the tasks repeat its work at most TASK_PADDING_LARGE_REPEATS
    times: padded once, a copy of 0.5 MB or more goes out to L3 or memory and back, and it
    costs as much as the copy (RegNetX-400MF's 32-channel 112x112 input of its grouped
    stride-2 conv: 0.33 / 0.19 ms at 1 / 2 threads padded once, 0.23 / 0.12 on an input padded
    beforehand, 0.27-0.29 / 0.15 padded in the tasks; inside the model, 2 threads, 0.28 -> 0.17
    ms, the next grouped conv 0.114 -> 0.079; the whole model, the builds interleaved, 1.000 /
    0.935 and 0.915 / 0.956 of its time). In this zoo only RegNetX's three largest grouped
    convs qualify: the other large pads' tasks repeat them 3-14 times."""
    from tvm.tirx import ForKind
    loops = sch.get_loops(conv)
    fused = loops[0]
    pads = [p for p in sch.get_producers(conv) if sch.get(p).name_hint == PADDING_BLOCK]
    if sch.get(fused).kind != ForKind.PARALLEL or len(pads) != 1:
        return
    if math.prod(extent(loop, sch) for loop in loops) <= TASK_PADDING_MAX_MACS:
        limit = TASK_PADDING_REPEATS
    elif _large_padding(sch.get(pads[0]).writes[0].source):
        limit = TASK_PADDING_LARGE_REPEATS
    else:
        return
    if repeats_if_computed_at(sch, pads[0], fused) <= limit:
        sch.compute_at(pads[0], fused)


def _schedule_padding(sch, conv) -> None:
    """The zero-padding stage of an NCHW input, wherever it is computed: its columns as up to
    three vector loops, the left zeros, the input's columns (a contiguous copy) and the right
    zeros; computed before the tile, parallel over its rows."""
    pads = [p for p in sch.get_producers(conv) if _nchw_padding(sch, p)]
    if len(pads) != 1:
        return
    pad = pads[0]
    *outer, column = sch.get_loops(pad)
    shared = {sch.get(loop) for loop in sch.get_loops(conv)}
    if not any(sch.get(loop) in shared for loop in outer):   # computed once, before the tile
        if PADDING_BY_ROW_PARTS:
            vectorize_padded_plane(sch, pad)
            return
        rows = sch.fuse(*outer)
        if extent(rows, sch) * extent(column, sch) >= PARALLEL_MIN_ELEMENTS:
            sch.parallel(rows)
    # The columns the conv reads start at the padded row's first (its first output column's
    # first tap) and may end before its last (a stride's leftover columns).
    vectorize_padded_row(sch, pad, column)


def _nchw_padding(sch, block) -> bool:
    """Whether `block` is the conv's zero-padding stage writing an NCHW buffer (not the
    channel-blocked copy `_block_input` makes of it)."""
    return sch.get(block).name_hint == PADDING_BLOCK and \
        len(sch.get(block).writes[0].source.shape) == 4


def _large_padding(padded) -> bool:
    """Whether the buffer `padded` is a zero-padded NCHW input (not the channel-blocked copy of
    a 1x1 conv's input, which `_block_input` makes of the padding stage) of at least
    TASK_PADDING_MIN_BYTES."""
    return len(padded.shape) == 4 and buffer_bytes(padded) >= TASK_PADDING_MIN_BYTES


def _streams_weights(block, weight) -> bool:
    """Whether the weights outweigh the activations the conv block reads (its padded input and
    its accumulators) and are too large to stay in L2 from one output row to the next
    (STREAMED_WEIGHT_BYTES): row by row every row would stream them again from L3 or memory, so
    each channel block takes every row while its weights are in cache, and the input, the
    smaller, is what is read again."""
    data = max((buffer_bytes(r.source) for r in block.reads if not r.source.same_as(weight)),
               default=0)
    return buffer_bytes(weight) > max(data, STREAMED_WEIGHT_BYTES)


def _block_input(sch, conv, weight_buffer, lanes: int) -> bool:
    """Copy a 1x1 convolution's input channel-blocked, [N, C / INPUT_BLOCK, H, W,
    INPUT_BLOCK], written with the channels innermost (its padding stage, where there is one,
    writes that layout). Only for ungrouped convs with whole blocks of input channels; for
    larger kernels the copy cost more than it saved (3x3 64 ch 56x56: 1.61 ms blocked, 1.56
    plain), each input line being reused by the taps anyway. Nor for convs of at most
    STRIDED_INPUT_MAX_CHANNELS output channels (those the blocks compute, padding included)
    with STRIDED_INPUT_LANES `lanes`: each tile step broadcasts its pixels from the NCHW rows,
    and so few channels do not repay the copy, a gather that is memory-bound. Inside
    SqueezeNet, an Intel Xeon (48 KiB L1), 1 / 2 threads, ms, copied / in place: 128 -> 16 ch
    55x55 0.263 / 0.182, 0.163 / 0.109; 256 -> 32 ch 27x27 0.148 / 0.118, 0.128 / 0.089;
    128 -> 32 ch 0.080 / 0.056, 0.067 / 0.046 (with 8 lanes: at `STRIDED_INPUT_LANES`). With
    64 channels (two 32-channel blocks) the copy paid inside Inception-v3 (192 -> 64 ch 35x35
    0.59 / 0.82, 288 -> 64 ch 1.70 / 2.06), though alone, its input hot in cache, the conv ran
    faster in place (0.284 / 0.263). Nor for strided convs (STRIDED_CONV_IN_PLACE), read in
    place whatever their channels: the copy would cover every pixel the stride skips; but with
    STRIDED_COPY_LANES onto planes of at most SMALL_PLANE pixels. The copy is one vector of 16
    channels per pixel (COPY_BY_CHANNEL_VECTORS)."""
    block = sch.get(conv)
    _, out_channels, out_h, out_w, in_channels, k_h, k_w = (int(iv.dom.extent)
                                                            for iv in block.iter_vars)
    index = next(i for i, r in enumerate(block.reads) if not r.source.same_as(weight_buffer))
    source = block.reads[index].source
    if in_channels % INPUT_BLOCK or int(source.shape[1]) != in_channels or (k_h, k_w) != (1, 1):
        return False
    if STRIDED_CONV_IN_PLACE and int(source.shape[3]) > out_w \
            and not (lanes in STRIDED_COPY_LANES and out_h * out_w <= SMALL_PLANE):
        return False
    if lanes in STRIDED_INPUT_LANES and out_channels <= STRIDED_INPUT_MAX_CHANNELS:
        return False
    producers = sch.get_producers(conv)
    packer = producers[0] if producers else sch.cache_read(conv, index, "global")
    sch.transform_layout(packer, ("write", 0),
                         lambda n, c, h, w: (n, c // INPUT_BLOCK, h, w, c % INPUT_BLOCK))
    n, c, h, w = sch.get_loops(packer)
    c_outer, c_inner = sch.split(c, [None, INPUT_BLOCK])
    sch.reorder(n, c_outer, h, w, c_inner)
    if COPY_BY_CHANNEL_VECTORS:
        sch.vectorize(c_inner)
    return True


def _inputs_per_image(sch, conv, batch_loop) -> None:
    """Compute the blocks producing the conv's input (the padding) under the batch loop,
    vectorized along rows and parallel over channels."""
    for producer in sch.get_producers(conv):
        sch.compute_at(producer, batch_loop)
        loops = sch.get_loops(producer)[1:]
        if not loops:   # one element per image (a 1-channel 1x1 input): nothing to split
            continue
        *outer, row = loops
        if outer:
            fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
            if extent(fused, sch) * extent(row, sch) >= PARALLEL_MIN_ELEMENTS:
                sch.parallel(fused)
        if not (VECTORIZE_PADDING and _nchw_padding(sch, producer)):
            sch.vectorize(row)   # else in parts, by `_schedule_padding`


def _row_groups(channel_blocks: int, rows: int) -> int:
    """Bands of output rows the input-channel-blocked schedule gives its threads besides the
    channel blocks: the fewest dividing the rows, in bands of at least two rows, that make
    PARALLEL_TASKS tasks, else the most (each band reads the weights once more, from L2). With
    the channel blocks alone, MobileNetV2's 576 -> 96 ch 14x14 conv made 3 tasks: on 2 threads
    one of them idled a third of the time."""
    bands = [d for d in range(1, rows + 1) if rows % d == 0 and (d == 1 or rows // d >= 2)]
    return next((d for d in bands if channel_blocks * d >= PARALLEL_TASKS), bands[-1])


def _input_channel_block(block, weight, vec: VectorShape) -> int | None:
    """Input channels per L1 block of the packed `weight` for small output planes on cores of
    BLOCKED_L1D bytes of L1 data cache or more, or with 8 lanes on planes of
    BLOCKED_YMM_MIN_PIXELS or more whose weights do not stream (`_streams_weights`); None (no
    blocking) elsewhere."""
    _, _, out_h, out_w, in_c, k_h, k_w = (int(iv.dom.extent) for iv in block.iter_vars)
    oc_block = int(weight.shape[4])
    pixels = out_h * out_w
    if pixels > SMALL_PLANE:
        return None
    if vec.l1d < BLOCKED_L1D and (vec.lanes != 8 or not 0 < BLOCKED_YMM_MIN_PIXELS <= pixels
                                  or _streams_weights(block, weight)):
        return None
    fitting = [d for d in range(1, in_c) if in_c % d == 0
               and d * k_h * k_w * oc_block * 4 <= L1_WEIGHT_BYTES]
    return max(fitting) if fitting and max(fitting) >= 8 else None


def _input_varies_with_oc(block, oc_var, oc_block: int, weight) -> bool:
    """True for grouped convs whose input channel changes inside an aligned block of output
    channels (then the input is not one broadcast per tile step). Checked by evaluating the input
    indices at the first and last channel of each block."""
    from tvm import tirx
    from tvm.sym.analyzer import Analyzer
    iter_vars = [iv.var for iv in block.iter_vars]
    out_channels = int(block.iter_vars[1].dom.extent)
    analyzer = Analyzer()
    for region in block.reads:
        if region.source.same_as(weight):
            continue
        idx = [r.min for r in region.region]
        index_map = tirx.IndexMap(iter_vars, idx, None)
        at = lambda oc: [int(analyzer.simplify(e)) for e in index_map.map_indices(
            [oc if v.same_as(oc_var) else 0 for v in iter_vars])]
        if any(at(start) != at(start + oc_block - 1) for start in range(0, out_channels, oc_block)):
            return True
    return False
