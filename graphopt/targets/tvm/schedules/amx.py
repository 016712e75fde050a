"""Convolutions on AMX tiles (Sapphire Rapids and later): int8 (`tdpbusd`: uint8 x int8 into
int32) and bfloat16 (`tdpbf16ps`: into float32).

Eight tile registers of up to 16 rows x 64 bytes: one instruction adds the products of a 16 x 64
byte A tile and a 16 x 64 byte B tile (4 int8 or 2 bfloat16 input channels per 32-bit lane, as
VNNI) into a 16 x 16 C tile of 32-bit accumulators: 16,384 int8 or 8,192 bfloat16 multiply-adds.
The kernel keeps four C tiles (two output rows x two blocks of 16 channels; two C tiles for up
to 16 output channels, `padded_outputs`) for a whole reduction, loading two A tiles (P pixels
of each row x one tile row of input channels) and two B tiles per step of input channels and
one tap, or per kernel row where the row's taps fit one tile row (`folded_channels`: an
image's few channels, the input laid out channels-last). It is written by hand (no TE
schedule tensorizes a whole reduction into tile registers), complete as lowered: the schedule
rules skip it.

`select_conv_algorithm` records algorithm "amx" (weight_block 32) on a `qlinear_conv2d`, or a
bfloat16 `conv2d` / `fused_conv2d`, where the target CPU has the AMX feature and `applies` says
the layer fills the tiles; the lowering (`QLinearConv2d.lower_dot_product`,
`ops.conv_kernel.lower_conv`) packs the input (`pack_input`) and the weight (`pack_weight`),
calls `lower_kernel` and reads the accumulators back in its epilogue (`from_tiles`). Where the
input is another AMX conv's output and that conv's epilogue reads no residual
(`remember_epilogue`), the input copy computes the epilogue from that conv's tiles, reading
them in their channel-blocked order, and the NCHW epilogue kernel stays only where something
else reads its output (Relax drops it otherwise): one pass over the tensor instead of two
(one thread: int8 ResNet-18 0.90x, bfloat16 ResNet-50 0.94x, int8 VGG-11 0.95x)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NAME = "conv2d_amx"
AMX = "amx"
BLOCK = 32      # output channels per kernel step: two C tiles of 16
ROW_BYTES = 64  # bytes of one tile row
MIN_PIXELS = 4  # the fewest pixels per A tile (rows of the tile) the kernel is chosen for
# The most products, counting the zero weights of channels rounded up to whole tile rows and
# blocks, a layer may take on tiles, as a multiple of its own.
MAX_PADDED_WORK = 2.0
# The kernel reading the tiles back through the conv's epilogue, as lowered: scheduled by the
# tile epilogue rule (`tile_epilogue.py`).
EPILOGUE_ATTRS = {"graphopt.tile_epilogue": True}


@dataclass(frozen=True)
class AmxDtype:
    """One kind of AMX product: operand dtypes, input channels per 32-bit lane, instruction,
    accumulator dtype, and the target feature that has it."""

    input: str
    weight: str
    pair: int
    instruction: str
    accumulator: str
    feature: str

    @property
    def channels(self) -> int:
        """Input channels per A tile row: a 32-bit lane holds `pair` of them."""
        return ROW_BYTES // 4 * self.pair


INT8 = AmxDtype("uint8", "int8", 4, "tdpbusd", "int32", "amx-int8")
BFLOAT16 = AmxDtype("bfloat16", "bfloat16", 2, "tdpbf16ps", "float32", "amx-bf16")


def row_tiles(out_width: int) -> tuple[int, int]:
    """(pixels per A tile, the row width the kernel computes): the fewest tiles of at most 16
    rows that cover the output row, and of those the least padding, so a divisor of the row
    where one gives the fewest tiles (56: 14 x 4). A row no divisor tiles well is computed to
    whole tiles and the extra columns are never read (17: 9 x 2 instead of 17 tiles of one
    pixel; 35: 12 x 3 instead of 7 x 5)."""
    tiles, width = min((-(-out_width // p), -(-out_width // p) * p) for p in range(1, 17))
    return width // tiles, width


def padded_channels(channels: int, multiple: int) -> int:
    """`channels` rounded up to a multiple of `multiple`."""
    return -(-channels // multiple) * multiple


def padded_outputs(out_channels: int) -> int:
    """The output channels the kernel computes: one block of 16 for up to 16, else whole
    pairs of blocks (BLOCK)."""
    return 16 if out_channels <= 16 else padded_channels(out_channels, BLOCK)


def applies(kind: AmxDtype, in_channels: int, out_channels: int, out_width: int, groups: int,
            taps: int = 1, kernel_width: int = 1, dilation_width: int = 1) -> bool:
    """Whether the kernel computes this convolution (`taps` kernel positions, `kernel_width`
    of them in a row): no groups, at least one tile row (`kind.channels`) of products per
    output, at least MIN_PIXELS pixels per tile, and at most MAX_PADDED_WORK times the layer's
    products once the input channels are rounded up to whole tile rows and the output channels
    to `padded_outputs` (zero weights; the epilogue stores the real channels: ShuffleNetV2's
    58/116/232-channel layers in bfloat16, one / two threads, 0.67 / 0.70 of their time on the
    widened kernels). With fewer products per output the float32 accumulators the epilogue
    reads back cost more than the tiles save: MobileNetV2's 1x1 16 -> 96 ch 112x112 and
    24 -> 144 ch 56x56 convs ran 1.2x slower on tiles than on the pointwise rule.

    A conv whose row of taps folds into one tile row (`folded_channels`) counts a whole tile
    row of products per kernel row (an instruction takes as long on fewer values: 24-32 ns
    for 20, 60 or 64 bytes a row on an AMX Xeon), against the same bound. In bfloat16 on that
    Xeon, one thread: ResNet-18's 3 -> 64 channel 7x7 stem (1.5x) took 1.27 ms on tiles (the
    copy, the kernel, the epilogue) against 2.44 ms on the widened float32 kernel; VGG-11's
    3 -> 64 channel 3x3 one (3.6x) 2.41 ms against 2.42; LeNet-5's 6 -> 16 channel 5x5 one
    8.4 us against 7.8 on two blocks of 16 outputs (2.1x), 5.5 us on one (1.1x)."""
    if groups != 1 or row_tiles(out_width)[0] < MIN_PIXELS:
        return False
    products = in_channels * taps * out_channels
    if folded_channels(kind, in_channels, kernel_width, dilation_width):
        rows = taps // kernel_width
        return rows * kind.channels * padded_outputs(out_channels) <= \
            MAX_PADDED_WORK * products
    if in_channels * taps < kind.channels:
        return False
    padded = padded_channels(in_channels, kind.channels) * padded_outputs(out_channels)
    return padded <= MAX_PADDED_WORK * in_channels * out_channels


def folded_channels(kind: AmxDtype, in_channels: int, kernel_width: int,
                    dilation_width: int = 1) -> int:
    """The channels per pixel of the row-folded input, or 0 where the conv's taps are not
    folded. Folded, the input is laid out channels-last with its channels rounded up to whole
    32-bit lanes (`kind.pair`), so a kernel row's taps are consecutive in memory: one A tile
    row reads all of them (KW x I' values) and one instruction per kernel row does what KW
    did (an image's 3 channels, 7x7: 7 instructions on 28 of 32 values, against 49 on 3).
    For convs whose row of taps fits a tile row (`kind.channels`) without dilation."""
    channels = padded_channels(in_channels, kind.pair)
    if kernel_width > 1 and dilation_width == 1 and kernel_width * channels <= kind.channels:
        return channels
    return 0


def pack_weight(weight: np.ndarray, kind: AmxDtype, folded: int = 0) -> np.ndarray:
    """OIHW -> [O' / 16, I' / channels, KH, KW, channels / pair, 16, pair]: per block of 16
    output channels, tap and tile row of input channels, one B tile; O' is O rounded up by
    `padded_outputs`, I' is I rounded up to whole tile rows, the extra weights zero. Row-folded
    (`folded` channels per pixel): [O' / 16, 1, KH, 1, KW * folded / pair, 16, pair], a kernel
    row's taps in the input's order (column, then channel)."""
    o, i, kh, kw = weight.shape
    if folded:
        padded = np.zeros((padded_outputs(o), folded, kh, kw), weight.dtype)
        padded[:o, :i] = weight
        o = padded.shape[0]
        depth = kw * folded // kind.pair
        return padded.reshape(o // 16, 16, folded, kh, kw).transpose(0, 3, 4, 2, 1) \
            .reshape(o // 16, 1, kh, 1, depth, kind.pair, 16).transpose(0, 1, 2, 3, 4, 6, 5) \
            .copy()
    c, pair = kind.channels, kind.pair
    padded = np.zeros((padded_outputs(o), padded_channels(i, c), kh, kw), weight.dtype)
    padded[:o, :i] = weight
    o, i = padded.shape[:2]
    return padded.reshape(o // 16, 16, i // c, c // pair, pair, kh, kw) \
        .transpose(0, 2, 5, 6, 3, 1, 4).copy()


def pack_input(x, fill, conv, kind: AmxDtype, extra_columns: int = 0, folded: int = 0):
    """TE: x padded with the constant `fill` (the zero point, or 0) to
    [N, I' / channels, H', W', channels] (A tile rows; channels beyond I, which meet zero
    weights, are `fill` too), with `extra_columns` more on the right for a row computed to
    whole tiles (`row_tiles`). Row-folded: [N, 1, H', W', folded]."""
    from tvm import te, tirx
    n, in_channels, height, width = (int(d) for d in x.shape)
    top, left, bottom, right = conv.padding
    c = folded or kind.channels
    padding = tirx.const(fill, str(x.dtype))

    def value(b, g, i, j, k):
        inside = [i >= top, i < top + height, j >= left, j < left + width]
        if in_channels % c:
            inside.append(g * c + k < in_channels)
        return tirx.if_then_else(tirx.all(*inside), x[b, g * c + k, i - top, j - left], padding)

    return te.compute((n, padded_channels(in_channels, c) // c, height + top + bottom,
                       width + left + right + extra_columns, c), value, name="amx_pack")


def kernel(kind: AmxDtype, batch: int, groups: int, padded: tuple[int, int], blocks: int,
           taps: tuple[int, int], out_size: tuple[int, int], pixels: int, conv,
           folded: int = 0):
    """The PrimFunc (xp as `pack_input`, wp as `pack_weight`, acc [N, O' / 16, OH, OW', 16]
    of the accumulator dtype, OW' the row computed to whole tiles of `pixels`): parallel over
    images, output-channel pairs and row pairs (the last of an odd number of rows alone); each
    task configures the tiles (the configuration is per thread), zeroes four C tiles, runs the
    whole reduction and stores them."""
    from tvm.script import tirx as T
    N, G, OB = batch, groups, blocks
    HP, WP = padded
    KH, KW = taps
    OH, OW = out_size
    (SH, SW), (DH, DW) = conv.stride, conv.dilation
    PAIR, ELEMENT = kind.pair, ROW_BYTES // kind.channels   # bytes per input value
    C = folded or kind.channels          # input values per pixel of xp
    DEPTH = KW * folded if folded else C  # values per A tile row (weights per B tile column)
    if folded:
        KW = 1                           # the row's taps are one A tile row
    P = pixels
    ROW = SW * C * ELEMENT  # bytes between an A tile's rows (neighbouring output pixels)
    PAIRS = (OH + 1) // 2  # pairs of output rows; an odd last row computes alone
    TWO_BLOCKS = OB > 1    # else one block of 16 channels: tiles 1, 3 and 7 unused
    BLOCK_PAIRS = max(OB // 2, 1)
    TASKS = N * BLOCK_PAIRS * PAIRS

    def call(name, *args):
        return T.call_llvm_intrin("void", f"llvm.x86.{name}", *args)

    def tile(t):
        return T.int8(t)

    @T.prim_func(s_tir=True, private=True)   # add_func names it: one kernel per shape
    def amx(xp: T.Buffer((N, G, HP, WP, C), kind.input),
            wp: T.Buffer((OB, G, KH, KW, DEPTH // PAIR, 16, PAIR), kind.weight),
            acc: T.Buffer((N, OB, OH, OW, 16), kind.accumulator)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True,
                     "graphopt.schedule": NAME})
        for task in T.parallel(TASKS):
            n = task // (BLOCK_PAIRS * PAIRS)
            ob = task // PAIRS % BLOCK_PAIRS * 2
            oh = task % PAIRS * 2
            config = T.alloc_buffer((64,), "uint8", scope="local", align=64)
            for i in range(64):
                config[i] = T.uint8(0)
            config[0] = T.uint8(1)                     # palette 1
            for t in range(8):      # tiles 0-3 C, 4-5 A: P rows; 6-7 B: DEPTH / PAIR rows
                config[16 + 2 * t] = T.Select(t // 2 == 2, T.uint8(DEPTH * ELEMENT),
                                              T.uint8(ROW_BYTES))
                config[48 + t] = T.Select(t < 6, T.uint8(P), T.uint8(DEPTH // PAIR))
            T.evaluate(call("ldtilecfg", T.address_of(config[0])))
            for ow in range(OW // P):
                T.evaluate(call("tilezero", tile(0)))
                T.evaluate(call("tilezero", tile(1)))
                T.evaluate(call("tilezero", tile(2)))
                T.evaluate(call("tilezero", tile(3)))
                for g, ky, kx in T.grid(G, KH, KW):
                    T.evaluate(call("tileloadd64", tile(4), T.address_of(
                        xp[n, g, oh * SH + ky * DH, ow * P * SW + kx * DW, 0]), T.int64(ROW)))
                    T.evaluate(call("tileloadd64", tile(6), T.address_of(
                        wp[ob, g, ky, kx, 0, 0, 0]), T.int64(ROW_BYTES)))
                    T.evaluate(call(kind.instruction, tile(0), tile(4), tile(6)))
                    if TWO_BLOCKS:
                        T.evaluate(call("tileloadd64", tile(7), T.address_of(
                            wp[ob + 1, g, ky, kx, 0, 0, 0]), T.int64(ROW_BYTES)))
                        T.evaluate(call(kind.instruction, tile(1), tile(4), tile(7)))
                    if oh + 1 < OH:
                        T.evaluate(call("tileloadd64", tile(5), T.address_of(
                            xp[n, g, (oh + 1) * SH + ky * DH, ow * P * SW + kx * DW, 0]),
                            T.int64(ROW)))
                        T.evaluate(call(kind.instruction, tile(2), tile(5), tile(6)))
                        if TWO_BLOCKS:
                            T.evaluate(call(kind.instruction, tile(3), tile(5), tile(7)))
                T.evaluate(call("tilestored64", tile(0), T.address_of(
                    acc[n, ob, oh, ow * P, 0]), T.int64(ROW_BYTES)))
                if TWO_BLOCKS:
                    T.evaluate(call("tilestored64", tile(1), T.address_of(
                        acc[n, ob + 1, oh, ow * P, 0]), T.int64(ROW_BYTES)))
                if oh + 1 < OH:
                    T.evaluate(call("tilestored64", tile(2), T.address_of(
                        acc[n, ob, oh + 1, ow * P, 0]), T.int64(ROW_BYTES)))
                    if TWO_BLOCKS:
                        T.evaluate(call("tilestored64", tile(3), T.address_of(
                            acc[n, ob + 1, oh + 1, ow * P, 0]), T.int64(ROW_BYTES)))
            T.evaluate(call("tilerelease"))

    return amx


def lower_kernel(bb, x, fill, weight: np.ndarray, conv, kind: AmxDtype):
    """Relax: the kernel's accumulators [N, O' / 16, OH, OW', 16] for `x` (NCHW, padded with
    the constant `fill`; computed in the copy from another AMX conv's tiles where it is that
    conv's remembered epilogue) and the constant OIHW `weight` (O' and OW' as `pack_weight`
    and `row_tiles` round them), and the output's real width OW, for `from_tiles`."""
    from tvm import relax
    from ....ops.base import OPAQUE, conv_out_size, relax_constant
    k_h, k_w = weight.shape[2:]
    folded = folded_channels(kind, weight.shape[1], k_w, conv.dilation[1])
    packed = pack_weight(weight, kind, folded)
    real_w = conv_out_size(int(x.ty.shape[3]), k_w, conv.stride[1], conv.padding[1],
                           conv.padding[3], conv.dilation[1])
    tile_pixels, out_w = row_tiles(real_w)
    # Unfused: TVM would fuse the input's producers into the copy, and a concatenation there
    # picks each element's input by a chain of comparisons (DenseNet-121's dense blocks in
    # bfloat16: 66 of 76 ms, 1.9x its float32 time); computed apart, the generic rule splits
    # the concatenation into one piece per input.
    extra = (out_w - real_w) * conv.stride[1]
    # Where x is another AMX conv's epilogue, the copy computes it from that conv's tiles (its
    # NCHW kernel is left to whatever else reads it, else dropped).
    producer = epilogue_of(bb, x) if not folded else None
    compute, operands, name = (*producer, "amx_pack_epilogue") if producer is not None \
        else ((lambda x: x), [x], "amx_pack")
    grouped = bb.emit(bb.call_te(
        lambda *args: pack_input(compute(*args), fill, conv, kind, extra, folded), *operands,
        primfunc_name_hint=name, primfunc_attrs={"op_pattern": OPAQUE}))
    n, groups, height, width, _ = (int(d) for d in grouped.ty.shape)
    out_h = conv_out_size(height, k_h, conv.stride[0], 0, 0, conv.dilation[0])   # padded
    func = kernel(kind, n, groups, (height, width), packed.shape[0], (k_h, k_w),
                  (out_h, out_w), tile_pixels, conv, folded)
    acc_type = relax.TensorType((n, packed.shape[0], out_h, out_w, 16), kind.accumulator)
    acc = bb.emit(relax.call_tir(bb.add_func(func, NAME), [grouped, relax_constant(packed,
                                 kind.weight)], out_ty=acc_type))
    return acc, real_w


# The BlockBuilder attribute holding the epilogues of the AMX convs lowered in it, which another
# AMX conv may compute in its input copy instead: their Relax call -> (TE compute, Relax
# operands). It goes with the builder.
EPILOGUES = "graphopt_amx_epilogues"


def remember_epilogue(bb, call, compute, operands) -> None:
    """Record that the Relax `call` (not yet emitted) computes `compute(*operands)` (TE) from
    an AMX conv's tiles, reading no other tensor in NCHW order (no residual)."""
    if getattr(bb, EPILOGUES, None) is None:
        setattr(bb, EPILOGUES, [])
    getattr(bb, EPILOGUES).append((call, compute, list(operands)))


def epilogue_of(bb, x):
    """(compute, operands) where the Relax var `x` is bound to a remembered epilogue, else None."""
    from tvm import relax
    bound = bb.lookup_binding(x) if isinstance(x, relax.Var) else None
    if bound is None:
        return None
    return next(((compute, operands) for call, compute, operands in getattr(bb, EPILOGUES, ())
                 if bound.same_as(call)), None)


def from_tiles(acc, out_channels: int, per_channel=None, out_width: int | None = None):
    """TE: accumulators blocked by output channel, [N, ceil(O / lanes), OH, OW', lanes] (this
    kernel's C tiles, or the int8 dot-product kernels' register tiles), as NCHW [N, O, OH, OW]
    (OW `out_width`, the real row where the kernel computed it to whole tiles, else OW'), plus
    `per_channel[c]` where given (the int8 kernels' zero-point correction and bias)."""
    from tvm import te
    n, _, height, width, lanes = (int(d) for d in acc.shape)

    def value(b, c, i, j):
        v = acc[b, c // lanes, i, j, c % lanes]
        return v if per_channel is None else v + per_channel[c]

    return te.compute((n, out_channels, height, out_width or width), value, name="from_tiles")
