"""select_conv_algorithm (CPU): record on each convolution how it will be computed.

- "onednn" when the compile asks for oneDNN kernels (float32, constant weight and bias, an
  activation oneDNN's post-ops compute);
- "winograd" (F(2x2, 3x3) or F(4x4, 3x3), the tile side recorded as `output_tile`; weights in
  blocks of two vector registers of output channels) for the 3x3 stride-1 convolutions where
  it measured faster (`schedules/winograd.output_tile`);
- "pointwise" for 1x1 stride-1 unpadded ungrouped convolutions with a constant weight
  where the target has 8- or 16-lane vectors, on planes of whole vectors or, with 16 lanes and
  cores of 32 KiB L1 (`pointwise.PARTIAL_PLANE_MAX_L1D`), of at least
  `pointwise.MIN_PARTIAL_VECTORS` vectors (there with a channel block for each thread the
  compile is for): a GEMM over the flattened plane with the pixels as the lanes
  (`schedules/pointwise.py`), the weight in blocks of `weight_block` output channels;
- "depthwise" for depthwise convolutions (one filter per channel: groups == input == output
  channels) with a constant weight: rows of whole vectors of `weight_block` (the
  target's lanes) output columns (`schedules/depthwise.py`);
- "narrow" for ungrouped convolutions with rows of at least one vector and too few
  output channels for a channel block (at most `narrow.MAX_CHANNELS`, e.g. an image's 3
  colours) or a thin input with a short reduction (`narrow.applies`: the 3x3 convs of
  3-channel images): rows of whole vectors of `weight_block` (the lanes) output columns
  (`schedules/narrow.py`);
- "direct" otherwise (graphopt's register-tiled conv2d rule), with its weight packed into blocks
  of one or two vector registers of output channels (`tiled.channel_block`), each inside one
  group, where the weight is a constant; a group's last block is padded with zero filters
  where the channels do not fill it (the kernel computes the padded tile and writes the real
  channels), unless that would more than double the work (then TVM's generic conv); rows that
  do not divide into register tiles (55, 27, 111 pixels) are computed to whole tiles
  (`padded_width`), so that no tile runs under a predicate; convs that pad nothing else (and
  on cores that split 512-bit instructions, any conv) take a one-register block where its
  tile divides the rows instead (`tiled.whole_row_block`).
Half-precision (float16, bfloat16) convolutions are "direct" with a weight block, "pointwise",
"depthwise", "narrow" or "winograd" as float32 ones would be: the float32 kernel on operands
widened to float32 (the weight at lowering, the input in the kernel or as it is copied into the
phase buffer), which is the interpreter's arithmetic (products and sums in float32, one rounding
at the end), or for Winograd within ~1e-5 of it, far below one half-precision rounding (float16
VGG-11 on a Zen 4: 145 ms on the direct kernel, 75 with Winograd, float32 83); never oneDNN.
bfloat16 ones that fill AMX tiles where the CPU has AMX-BF16 are "amx" (`schedules/amx.py`);
ungrouped ones (or grouped in whole blocks: `conv2d_bf16.applies`) with constant weights where the
CPU has AVX512-BF16 but no AMX-BF16 are "dpbf16" (vdpbf16ps, `schedules/conv2d_bf16.py`,
weight_block 16; "dpbf16_taps" for an image's few channels, a kernel row's taps as the pairs:
`conv2d_bf16.row_taps_save`), but for the 3x3 ones that Winograd F(2x2) with its GEMMs on the same
instruction computes faster ("winograd_dpbf16", `PAIRED_WINOGRAD`), the remaining ones that Winograd
F(4x4) in float32 computes faster (an odd number of input channels:
`BFLOAT16_WINOGRAD_MIN_CHANNELS`, `BFLOAT16_WINOGRAD_MAX_PLANE`) and those a float32 conv takes as
"narrow", but for 1x1 ones (`narrow.applies`; in pairs of input channels and blocks of 16 output
channels, an image's few channels or a few output channels are mostly padding): of those, the ones
of stride and dilation 1 are "narrow_dpbf16", the narrow rule's tiles with a kernel row's
neighbouring taps as the instruction's pairs (`conv2d_bf16.pairs_apply`).

A quantized convolution (`qlinear_conv2d`) is computed by the x86 dot-product instruction of the
target CPU (`schedules/conv2d_int8.py`: "amx" tiles where the CPU has AMX-INT8 and the layer fills
them, else "vnni" with AVX-512 VNNI or AVX-VNNI, else "pmaddubsw" for weights whose int16 pair sums
cannot saturate, e.g. 7-bit ones, else "pmaddwd" ("pmaddwd_s8" for few output pixels)) where the
layer is what those kernels compute: uint8 input, constant int8 weights with zero points of 0
(symmetric, as graphopt's and ONNX Runtime's quantizers make them), a constant input zero point and
bias, no groups or groups that fill whole blocks of output channels and of input channels
(`conv2d_int8.grouped_fits`: AlexNet's, RegNetX's); but one the float32 rules compute as rows of
vectors ("narrow": few channels, mostly padding in those kernels' tiles) runs on that float32
kernel where its sums are exact in float32 (`exact_narrow_in_float32`). Another grouped or a
depthwise one whose sums are exact in float32 (`exact_in_float32`) runs on the float32 "depthwise"
or blocked "direct" kernel (`QLinearConv2d.lower_in_float32`); otherwise it stays as written (TVM's
integer conv2d)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ....ir import HALF_DTYPES, Node
from ....ops import Conv2d
from ....ops.epilogue import EPILOGUE
from .annotate import annotate

# The report's note on an int8 conv computed on int16-widened operands (no VNNI, and weights
# whose pairs could saturate vpmaddubsw).
WIDENED_INT8 = "vpmaddubsw"
WIDENED_INT8_REASON = ("8-bit weights whose int16 pair sums can saturate it: vpmaddwd on "
                       "widened operands instead (exact); 7-bit weights, go.quantize(..., "
                       "reduce_range=True), run on vpmaddubsw, 1.3-1.5x faster")


# Where a bfloat16 conv takes float32 Winograd F(4x4) on its widened input instead of vdpbf16ps
# (which does only twice an FMA's multiply-adds): from 64 input channels, on planes up to 56x56
# (a Zen 4 core, one conv + relu, ms, vdpbf16ps / F(4x4): 64 ch 56x56 1.23 / 1.13, 128 ch 28x28
# 1.22 / 0.97, 256 ch 56x56 20.3 / 15.0, 512 ch 28x28 17.3 / 13.9; not on 112x112, 64 -> 128
# ch 11.4 / 14.2, nor 14x14, 256 ch 1.09 / 1.07, 512 ch 5.07 / 5.29; float32 F(2x2) lost on
# every one). Since `PAIRED_WINOGRAD` it keeps only the convs that rule leaves for an odd number
# of input channels (us, vdpbf16ps / F(4x4): 127 -> 128 ch 28x28 1,077 / 729); with one block
# of output channels vdpbf16ps won (DenseNet-121's 128 -> 32 ch convs, 28x28: 329 / 414;
# 65 -> 32 ch 28x28 159 / 178; the whole bfloat16 model 0.95 of its time on vdpbf16ps).
BFLOAT16_WINOGRAD_MIN_CHANNELS, BFLOAT16_WINOGRAD_MAX_PLANE = 64, 56 * 56
# Whether a bfloat16 3x3 conv on vdpbf16ps takes Winograd F(2x2) with its GEMMs on the
# instruction (`winograd_dpbf16`, `schedules/winograd.py`) instead, from 32 input channels (an
# even count) and two GEMM blocks of output channels, on any plane: 2.25x fewer products at the
# instruction's rate, for the cost of the transforms and about one more bfloat16 rounding (rms
# error against float32 4.3-4.6e-3 of the outputs' rms, 2.8-2.9e-3 on the direct kernel). One
# Zen 4 thread, one conv + relu, us, F(2x2) on vdpbf16ps / the kernel it replaces (vdpbf16ps,
# or F(4x4) in float32 on the widened input): 64 ch 56x56 919 / 1,054 (F(4x4)), 128 ch 28x28
# 700 / 743 (F(4x4)), 256 ch 14x14 584 / 1,002, 512 ch 7x7 750 / 1,011, 64 -> 128 ch 112x112
# 6,661 / 8,713, 128 -> 256 ch 56x56 5,025 / 7,271 (F(4x4)), 512 ch 28x28 9,981 / 10,322
# (F(4x4)), 512 ch 14x14 2,802 / 4,102, 64 ch 224x224 16,329 / 18,181, 32 -> 64 ch 56x56 530 /
# 566, 256 ch 4x4 46 / 88; with one block of output channels the input transform outweighs
# the products (32 ch 112x112 1,269 / 1,138). F(2x2)'s times are before its GEMMs kept their
# sums in registers over the whole reduction (`winograd._schedule_paired_gemm`), 0.94-1.0x
# of these since.
PAIRED_WINOGRAD = True
PAIRED_WINOGRAD_MIN_CHANNELS, PAIRED_WINOGRAD_MIN_OUT_BLOCKS = 32, 2
# Whether an int8 conv the float32 rules would compute as rows of vectors (`narrow`) runs on
# that float32 kernel, exactly, instead of on dot-product tiles (`exact_narrow_in_float32`).
NARROW_INT8_IN_FLOAT32 = True
# Input channels from which a stride-1 int8 conv stays on VNNI tiles though the float32 rules
# would take it as "narrow" (3 of each group of 4 input channels real). One Zen 4 thread, us,
# narrow in float32 / VNNI: VGG-11's 3 -> 64 ch 3x3 224x224 1,892 / 1,484 (the model 0.985 of
# its time), YOLOv3-tiny's 3 -> 16 ch 416x416 1,644 / 1,449; at stride 2 the float32 kernel
# won or tied (SqueezeNet's 3 -> 64 ch 527 / 569, MobileNetV2's 3 -> 32 ch 257 / 239), and on
# one input channel (DeepConvNet 4.5 / 6.2).
VNNI_STEM_MIN_CHANNELS = 3
# Whether a grouped int8 conv whose groups fill whole blocks of output channels and channel
# groups (`conv2d_int8.grouped_fits`) runs on dot-product tiles rather than exactly on the
# float32 blocked kernel (`exact_in_float32`). One AMD Zen 5 thread, convs + relu alone, us,
# float32 / dot products / ORT int8: AlexNet's 5x5 48 -> 128 ch in 2 groups on 27x27 611 / 162
# / 278, 3x3 192 -> 128 ch in 2 groups on 13x13 182 / 67 / 71; RegNetX's groups of 16
# channels: 32 ch on 56x56 172 / 81 / 249, 160 ch on 14x14 63 / 29 / 80, 400 ch on 7x7 50 / 31
# / 56. Built as an AVX-VNNI CPU (`--as-avx-vnni`) 3.5-3.6x and 2.1-2.9x faster, as an AVX2
# one 1.6-1.9x and 1.4-1.7x. Whole int8 models, the builds alternated, outputs equal, time
# with / without: AlexNet 0.64-0.71 (1 and 2 threads, batch 1 and 8), RegNetX-400MF 0.67-0.77;
# AVX-VNNI 0.59-0.60 and 0.65-0.69, AVX2 0.72-0.73 and 0.44-0.46.
GROUPED_ON_DOT_PRODUCTS = True
# Whether bfloat16 convs on vdpbf16ps compute rows of a prime width above 28 to whole tiles
# (`conv2d_int8.padded_row`) instead of on 2 x 1 tiles. One AMD Zen 5 thread, convs + relu
# alone, us, 2 x 1 / padded: 1x1 64 -> 80 ch 73x73 (Inception-v3's) 772 / 366-414 (its 75x75
# 347), 1x1 32 -> 64 ch 149x149 1,932 / 1,199.
BFLOAT16_PADDED_ROWS = True
# Whether a transposed conv's output phases may be convolved one by one
# (`ConvTranspose2d.by_phase`, `phase_convolution`).
TRANSPOSED_BY_PHASE = True


def select_conv_algorithm(context):
    """The pass for one compile (`context`: vector shape, kernels, whether weights are constant)."""
    from ..schedules import amx, conv2d_bf16, depthwise, narrow, pointwise, winograd
    from ..schedules.conv2d_int8 import padded_row
    from ..schedules.tiled import channel_block, conv_row_tile, whole_row_block

    def fills_amx_tiles(kind, in_channels: int, out_channels: int, out_w: int, groups: int,
                        taps: tuple[int, int], dilation_width: int = 1) -> bool:
        """Whether the CPU has `kind`'s AMX product and a conv of these sizes (`taps`: the
        kernel's rows and columns) fills its tiles (`amx.applies`)."""
        return (context.vector is not None and kind.feature in context.vector.amx
                and amx.applies(kind, in_channels, out_channels, out_w, groups,
                                taps[0] * taps[1], taps[1], dilation_width))

    def conv_fills_amx_tiles(node: Node, kind, weight) -> bool:
        """`fills_amx_tiles` for the conv `node` of weight `weight`."""
        conv = getattr(node.op, "conv", node.op)
        _, out_channels, _, out_w = node.outputs[0].shape
        return fills_amx_tiles(kind, node.inputs[0].shape[1], out_channels, out_w, conv.groups,
                               weight.shape[2:], conv.dilation[1])

    def padded_width(out_channels: int, block: int, out_w: int, algorithm: str = "vnni") -> int:
        """`Conv2d.padded_width` of a dot-product conv's rows (`padded_row`): 0 where they
        stay as they are."""
        padded = padded_row(-(-out_channels // block), out_w, context.vector, algorithm)
        return padded if padded != out_w else 0

    def dpbf16_instead_of_direct(conv: Conv2d, weight) -> bool:
        """Whether a bfloat16 conv that is not on AMX tiles runs on vdpbf16ps: where the CPU
        has AVX512-BF16 but no AMX-BF16."""
        return conv2d_bf16.preferred(context.vector) and \
            conv2d_bf16.applies(conv.groups, weight.shape)

    def winograd_tile(conv: Conv2d, node: Node, weight) -> int:
        """The output tile of the Winograd kernel the conv `node` takes (0: none)."""
        batch, out_channels, out_h, out_w = node.outputs[0].shape
        return winograd.output_tile(weight.shape[1], out_channels, out_h, out_w,
                                    weight.shape[2:], conv.stride, conv.dilation, conv.groups,
                                    conv.padding, context.vector, batch)

    def paired_winograd(conv: Conv2d, weight) -> bool:
        """Whether a bfloat16 conv on vdpbf16ps takes F(2x2) with its GEMMs on the instruction
        (`PAIRED_WINOGRAD`): 3x3, stride 1, 'same' padding, no dilation or groups, an even
        number of input channels, output channels in whole GEMM blocks."""
        out_channels, in_channels = weight.shape[:2]
        return (PAIRED_WINOGRAD
                and winograd.computes(out_channels, weight.shape[2:], conv.stride, conv.dilation,
                                      conv.groups, conv.padding, context.vector)
                and in_channels % 2 == 0 and in_channels >= PAIRED_WINOGRAD_MIN_CHANNELS
                and out_channels >= PAIRED_WINOGRAD_MIN_OUT_BLOCKS
                * winograd.channel_block(context.vector))

    def on_winograd(plain: Conv2d, tile: int) -> Conv2d:
        return dataclasses.replace(plain, algorithm="winograd", output_tile=tile,
                                   weight_block=winograd.channel_block(context.vector))

    def direct(conv: Conv2d, out_channels: int, out_w: int, in_channels: int | None = None,
               taps: int = 1) -> Conv2d:
        """`conv` on the register-tiled direct rule: its channel block per group and, where
        the rows do not divide into tiles, the width they are computed to; convs that rule
        computes badly (too few output channels for a channel block, or a short reduction
        over a thin input: `narrow.applies`) are "narrow" instead."""
        block = channel_block(out_channels // conv.groups, context.vector, conv.groups)
        if block:
            block = whole_row_block(block, out_channels // conv.groups, out_w, context.vector,
                                    padded_input=any(conv.padding))
        if narrow.applies(out_channels, conv.groups, out_w, context.vector, in_channels, taps,
                          block, strided=tuple(conv.stride) != (1, 1)):
            return dataclasses.replace(conv, algorithm=narrow.ALGORITHM,
                                       weight_block=context.vector.lanes)
        tile = conv_row_tile(out_w, block, context.vector) if block else out_w
        padded = -(-out_w // tile) * tile
        return dataclasses.replace(conv, weight_block=block,
                                   padded_width=padded if padded != out_w else 0)

    def choose(conv: Conv2d, node: Node) -> Conv2d:
        x, w, *rest = node.inputs
        bias = rest[0] if rest and getattr(node.op, "has_bias", True) else None
        plain = conv.plain
        float32 = x.dtype == "float32" and node.outputs[0].dtype == "float32"
        constant = context.constant_weights and w.is_constant
        if constant and x.dtype == "bfloat16" and \
                conv_fills_amx_tiles(node, amx.BFLOAT16, w) and (bias is None or bias.is_constant):
            return dataclasses.replace(plain, algorithm=amx.AMX, weight_block=amx.BLOCK)
        if constant and x.dtype == node.outputs[0].dtype == "bfloat16" and \
                dpbf16_instead_of_direct(conv, w):
            if paired_winograd(conv, w):
                return dataclasses.replace(plain, algorithm="winograd_dpbf16",
                                           output_tile=winograd.PAIRED_TILE,
                                           weight_block=winograd.channel_block(context.vector))
            # float32 F(4x4) on the widened input where it beats vdpbf16ps (see the constants)
            tile = winograd_tile(conv, node, w)
            _, out_channels, out_h, out_w = node.outputs[0].shape
            if tile == 4 and w.shape[1] >= BFLOAT16_WINOGRAD_MIN_CHANNELS and \
                    out_h * out_w <= BFLOAT16_WINOGRAD_MAX_PLANE and out_channels >= \
                    PAIRED_WINOGRAD_MIN_OUT_BLOCKS * winograd.channel_block(context.vector):
                return on_winograd(plain, tile)
            taps = w.shape[2] * w.shape[3]
            widened = direct(plain, out_channels, out_w, w.shape[1], taps)
            if widened.algorithm == narrow.ALGORITHM and taps > 1:
                # rows as vectors beat vdpbf16ps tiles of mostly padding channels (one Zen 4
                # thread: LeNet-5's 1 -> 6 channel conv, 28 -> 22 us a run; SqueezeNet's
                # 3 -> 64 channel stem, 5.30 -> 5.00 ms), but not 1x1 convs of few input
                # channels (ResNet-18's 64 -> 128 ch downsample 0.09 -> 0.15 ms); their steps
                # on vdpbf16ps, a kernel row's taps in pairs, where the rows allow it
                if conv2d_bf16.pairs_apply(conv, w.shape[3]) and \
                        widened.weight_block == conv2d_bf16.LANES:
                    return dataclasses.replace(widened, algorithm=conv2d_bf16.NARROW_PAIRS)
                return widened
            row_taps = conv.groups == 1 and conv2d_bf16.row_taps_save(w.shape[1], w.shape[3])
            algorithm = conv2d_bf16.ROW_TAPS if row_taps else conv2d_bf16.ALGORITHM
            # rows of a prime width above 28 computed to whole tiles, as int8 ones are
            padded = padded_width(out_channels, conv2d_bf16.LANES, out_w) \
                if BFLOAT16_PADDED_ROWS else 0
            return dataclasses.replace(plain, algorithm=algorithm,
                                       weight_block=conv2d_bf16.LANES, padded_width=padded)
        half = x.dtype in HALF_DTYPES and node.outputs[0].dtype == x.dtype
        if not constant or not (float32 or half):
            return plain
        batch, out_channels, out_h, out_w = node.outputs[0].shape
        activation = getattr(node.op, "activation", None)
        if context.kernels == "onednn" and (bias is None or bias.is_constant) and float32 and \
                (activation is None or EPILOGUE[activation.name].onednn is not None):
            return dataclasses.replace(plain, algorithm="onednn")
        tile = winograd_tile(conv, node, w)
        if tile:
            return on_winograd(plain, tile)
        pointwise_tile = pointwise.applies(
            w.shape[2:], conv.stride, conv.padding, conv.dilation, conv.groups) and \
            pointwise.tile(out_h * out_w, out_channels, context.vector, batch, context.threads,
                           w.shape[1])
        if pointwise_tile:
            return dataclasses.replace(plain, algorithm=pointwise.ALGORITHM,
                                       weight_block=pointwise_tile[1])
        if depthwise.applies(x.shape[1], out_channels, conv.groups, context.vector):
            return dataclasses.replace(plain, algorithm=depthwise.ALGORITHM,
                                       weight_block=depthwise.row_block(out_w, context.vector))
        return direct(plain, out_channels, out_w, w.shape[1], w.shape[2] * w.shape[3])

    def choose_integer(node: Node, misses: dict[str, list[tuple[str, str]]]):
        from ..schedules.conv2d_int8 import PADDED_ROW_ALGORITHMS, dot_product_for, grouped_fits
        conv = node.op.conv
        x, _, x_zp, w, _, w_zp, *_ = node.inputs
        bias = node.inputs[8] if node.op.has_bias else None
        constant = context.constant_weights and \
            all(v.is_constant for v in (w, w_zp, x_zp, *([bias] if bias else [])))
        fits = (context.vector is not None and x.dtype == "uint8" and w.dtype == "int8"
                and constant and not w_zp.data.any())
        pixels = math.prod(node.output.shape[:1] + node.output.shape[2:])
        dot = dot_product_for(context.vector, w.data, pixels) if fits else None
        if dot is not None and conv.groups > 1 and not (
                GROUPED_ON_DOT_PRODUCTS and grouped_fits(w.shape, conv.groups, dot.lanes,
                                                         dot.group)):
            dot = None
        narrow_exact = exact_narrow_in_float32(node, w, w_zp, dot.algorithm) \
            if dot is not None and NARROW_INT8_IN_FLOAT32 else None
        if narrow_exact is not None:
            return dataclasses.replace(node.op, conv=narrow_exact)
        if dot is None:
            exact = exact_in_float32(node, w, w_zp) if constant else None
            if exact is not None:
                return dataclasses.replace(node.op, conv=exact)
            return None if conv == conv.plain else dataclasses.replace(node.op, conv=conv.plain)
        algorithm, block = dot.algorithm, dot.lanes
        if algorithm.startswith("pmaddwd"):
            misses.setdefault(WIDENED_INT8, []).append((node.name, WIDENED_INT8_REASON))
        padded = 0
        if conv_fills_amx_tiles(node, amx.INT8, w):
            algorithm, block = amx.AMX, amx.BLOCK
        elif algorithm in PADDED_ROW_ALGORITHMS.get(block, ()) and \
                block == context.vector.lanes:
            # rows of a prime width computed to whole tiles
            padded = padded_width(node.output.shape[1], block, node.output.shape[3], algorithm)
        return dataclasses.replace(node.op, conv=dataclasses.replace(
            conv.plain, algorithm=algorithm, weight_block=block, padded_width=padded))

    def exact_narrow_in_float32(node: Node, w, w_zp, dot: str) -> Conv2d | None:
        """An ungrouped `qlinear_conv2d` that the float32 rules compute as rows of vectors
        (`narrow`: few input or output channels, which the dot-product tiles would mostly pad)
        on that kernel, exactly (`exact_in_float32`'s bound), rather than on dot-product
        tiles (one Zen 4 core, builds alternated: int8 LeNet-5 24.2 -> 20.4 us a run, its
        1 -> 6 channel conv on VNNI tiles of 16 channels; DeepConvNet 0.965 of its time;
        ResNet-18, SqueezeNet, MobileNetV2, EfficientNet-B0 0.99-1.01). Not 1x1 convs, as for
        bfloat16, nor stride-1 convs of at least VNNI_STEM_MIN_CHANNELS input channels on VNNI,
        whose groups of four input channels those mostly fill (`VNNI_STEM_MIN_CHANNELS`)."""
        conv = node.op.conv
        taps = w.shape[2] * w.shape[3]
        if conv.groups != 1 or taps == 1 or not exact_sums(w, w_zp):
            return None
        if dot == "vnni" and tuple(conv.stride) == (1, 1) and \
                w.shape[1] >= VNNI_STEM_MIN_CHANNELS:
            return None
        _, out_channels, _, out_w = node.outputs[0].shape
        chosen = direct(conv.plain, out_channels, out_w, w.shape[1], taps)
        return chosen if chosen.algorithm == narrow.ALGORITHM else None

    def exact_sums(w, w_zp) -> bool:
        """Whether every sum of a convolution with these weights is exact in float32: each
        output's |w - wz| summed times 255 (the largest |x - xz|) below 2^24."""
        centered = np.abs(w.data.astype(np.int64)
                          - w_zp.data.astype(np.int64).reshape(-1, 1, 1, 1))
        return int(centered.sum(axis=(1, 2, 3)).max()) * 255 < 2 ** 24

    def exact_in_float32(node: Node, w, w_zp) -> Conv2d | None:
        """A grouped `qlinear_conv2d` with constant weights, zero points and bias on the
        float32 depthwise or blocked direct kernel (`QLinearConv2d.lower_in_float32`), where
        every sum it computes is exact in float32: each output's |w - wz| summed times 255
        (the largest |x - xz|) below 2^24. TVM's integer conv2d, the alternative, is not
        scheduled (int8 RegNetX-400MF spent 34 of its 38 ms in it, 3.7x its float32 time)."""
        conv = node.op.conv
        if context.vector is None or conv.groups == 1 or not exact_sums(w, w_zp):
            return None
        _, out_channels, _, out_w = node.outputs[0].shape
        if depthwise.applies(node.inputs[0].shape[1], out_channels, conv.groups,
                             context.vector):
            return dataclasses.replace(conv.plain, algorithm=depthwise.ALGORITHM,
                                       weight_block=depthwise.row_block(out_w, context.vector))
        chosen = direct(conv.plain, out_channels, out_w, w.shape[1], w.shape[2] * w.shape[3])
        return chosen if chosen.algorithm == "direct" and chosen.weight_block else None

    def choose_transposed(node: Node):
        """A float32 or half-precision transposed convolution with constant weights (half
        precision on the float32 kernels, widened, as a convolution): with a stride (no dilation
        or groups), the sub-pixel convolution computing every output phase as channels, then a
        pixel shuffle (`ConvTranspose2d.as_subpixel`: the transposed conv's own MACs; FCN's
        16x16 stride-8 upsampling), or each phase convolved on its own where that computes
        fewer products (`phase_convolution`: DCGAN's 4x4 stride-2 layers); otherwise the direct conv
        rule over the zero-inserted input (stride^2 more MACs than the transposed conv, on a
        kernel tens of times faster than TVM's unscheduled conv2d_transpose)."""
        op, (x, w, *rest) = node.op, node.inputs
        conv = op.as_convolution(w.shape[2:])
        subpixel = op.as_subpixel(w.shape[2:], x.shape[2:])
        computable = (conv is not None or subpixel is not None) and context.vector is not None
        constant = context.constant_weights and all(v.is_constant for v in (w, *rest))
        # half precision: the float32 kernels on widened operands, as for a convolution
        widened = x.dtype in ("float32", *HALF_DTYPES) and node.outputs[0].dtype == x.dtype
        if not (computable and constant and widened):
            return None if op.as_conv is None else dataclasses.replace(
                op, as_conv=None, subpixel=False, by_phase=False)
        out_channels, out_w = node.outputs[0].shape[1], node.outputs[0].shape[3]
        if subpixel is not None:
            stride = op.subpixel_stride(w.shape[2:], x.shape[2:])
            phases = stride[0] * stride[1]
            rows_w = x.shape[3] + subpixel.padding[3]   # the sub-pixel conv's output width
            taps = op.subpixel_taps(w.shape[2:], x.shape[2:])
            if x.dtype == "bfloat16" and fills_amx_tiles(amx.BFLOAT16, x.shape[1],
                                                         out_channels * phases, rows_w, 1,
                                                         taps):
                # bfloat16 on AMX tiles, as a convolution that fills them (bfloat16 DCGAN's
                # generator, one thread: 2.5 -> 1.0 ms, its float32 build 2.4)
                as_conv = dataclasses.replace(subpixel, algorithm=amx.AMX, weight_block=amx.BLOCK)
            else:
                as_conv = direct(subpixel, out_channels * phases, rows_w)
                by_phase = phase_convolution(op, x, w, node.outputs[0].shape, as_conv)
                if by_phase is not None:
                    return dataclasses.replace(op, as_conv=by_phase, subpixel=True,
                                               by_phase=True)
            return dataclasses.replace(op, as_conv=as_conv, subpixel=True, by_phase=False)
        return dataclasses.replace(op, as_conv=direct(conv, out_channels, out_w),
                                   subpixel=False, by_phase=False)

    def phase_convolution(op, x, w, out_shape, single: Conv2d) -> Conv2d | None:
        """The first output phase's own convolution on the direct rule (`by_phase`), where the
        phases convolved one by one compute fewer products than the `single` sub-pixel
        convolution, counting each one's padding: the rows and columns a phase does not keep
        (DCGAN's 4x4 -> 8x8 layer: 1.56x its products), the channels its blocks pad (FCN's
        21-class 16-phase upsampling: 32-channel blocks of 21 channels, 1.52x). Not where a
        phase's channels are too few for the direct rule's blocks (`narrow`)."""
        paddings = op.phase_paddings(w.shape[2:], x.shape[2:])
        if not TRANSPOSED_BY_PHASE or paddings is None or single.algorithm != "direct":
            return None
        (sh, sw), taps = (op.subpixel_stride(w.shape[2:], x.shape[2:]),
                          op.subpixel_taps(w.shape[2:], x.shape[2:]))
        _, out_channels, out_h, out_w = out_shape
        first = direct(dataclasses.replace(single.plain, padding=paddings[0, 0]), out_channels,
                       out_w // sw, x.shape[1], taps[0] * taps[1])
        if first.algorithm != "direct" or not first.weight_block:
            return None

        def products(conv: Conv2d, channels: int, rows: int, columns: int) -> int:
            block = conv.weight_block
            return rows * (conv.padded_width or columns) * -(-channels // block) * block

        rows, columns = (size + before + after - t + 1 for size, before, after, t in
                         zip(x.shape[2:], single.padding[:2], single.padding[2:], taps))
        one = products(single, out_channels * sh * sw, rows, columns)
        each = products(first, out_channels, out_h // sh, out_w // sw) * sh * sw
        return first if each < one else None

    def decide(node: Node, misses):
        if node.op_name == "qlinear_conv2d":
            return choose_integer(node, misses)
        if node.op_name == "conv_transpose2d":
            return choose_transposed(node)
        if node.op_name == "conv2d":
            return choose(node.op, node)
        if node.op_name == "fused_conv2d":
            return dataclasses.replace(node.op, conv=choose(node.op.conv, node))
        return None

    def select_conv_algorithm(graph):
        misses: dict[str, list[tuple[str, str]]] = {}
        return annotate(graph, lambda node: decide(node, misses), misses)

    return select_conv_algorithm
