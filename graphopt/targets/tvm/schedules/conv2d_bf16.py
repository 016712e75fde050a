"""bfloat16 convolutions on AVX512-BF16's `vdpbf16ps`: 16 float32 accumulators, each adding
the products of a pair of bfloat16 input channels and the pair's weights.

`select_conv_algorithm` records algorithm "dpbf16" (weight_block 16) on a bfloat16 `conv2d` /
`fused_conv2d` with constant weights, no groups or groups of whole blocks (`applies`), where the
target CPU has AVX512-BF16 but no AMX-BF16 (Cooper Lake, Zen 4), except on the 3x3 layers that
Winograd F(2x2) computes faster with its GEMMs on this instruction ("winograd_dpbf16",
`winograd.py`: 2.25x fewer products; `PAIRED_WINOGRAD` there), or float32 Winograd F(4x4) on the
widened input, where the first does not apply (`BFLOAT16_WINOGRAD_MIN_CHANNELS`: the instruction
does only twice an FMA's multiply-adds, F(4x4) four times fewer), and on the convs the float32
"narrow" rule takes (`narrow.applies`: an image's few channels or few output channels, mostly
padding in pairs and blocks of 16). Where it has AMX-BF16, the layers that do not fill AMX tiles
stay on the widened float32 kernel: on an AMX Xeon one vdpbf16ps issues every ~0.8-1.0 ns against
~0.21 ns for a zmm FMA (which does half the multiply-adds), and the kernel measured 1.3-1.8x slower
than the float32 one (1 thread, ms: 3x3 64 ch 56x56 3.6 vs 2.2, 3x3 128 ch 28x28 3.1 vs 1.7, 1x1
256 -> 64 ch 56x56 2.7 vs 2.1), at about the instruction's rate. `ops.conv_kernel.lower_conv`
builds `conv2d_dpbf16` with the weight packed by `pack_weight` and the float32 epilogue read from
the tile (`amx.from_tiles`), rounded once to bfloat16; the rule below schedules it as the int8
dot-product rule does (`conv2d_int8.py`) and tensorizes the instruction.

Layouts (bfloat16 as its uint16 bits, see `widen`): the weight is [ceil(O / 16), ceil(I / 2),
KH, KW, 16, 2], so one instruction's weights are one aligned vector load; the input is copied,
zero-padded, to [N, ceil(I / 2), H', W', 2] (`interleave.py`: W' rounded up to whole
vectors), so one pixel's pair of channels is one broadcast int32. Channels beyond O and I are
zero weights (and zero inputs). For an image's few channels ("dpbf16_taps", `ROW_TAPS`) the
pairs are a kernel row's taps of every channel instead: the input is copied unfolded, each
output column's taps as channels ([N, ceil(KW * I / 2), H', OW', 2]), and the weight is that
of a KH x 1 convolution (`unfold_row_taps`): a 7x7 stem's 3 channels make 11 pairs a kernel
row, against 14 pairs of channels padded to 4. Convs of stride 1 that the float32 rules take
as output rows of vectors ("narrow_dpbf16", `NARROW_PAIRS`) keep the narrow rule's tiles
(`narrow.tile_rows`), the output columns as the lanes, with each step one vdpbf16ps on two
neighbouring taps of a kernel row: the weight's pair broadcast, the input a copy of the padded
rows that packs each column with its right neighbour into one uint32 (`PAIRS_BLOCK`), so the
16 lanes' pairs are one vector load. An odd row's last tap reads a second plane of that copy
whose columns have a zero beside them: a zero weight on the next column would turn an infinity
there, outside the window, into a NaN.

Arithmetic: a product of two bfloat16 values is exact in float32 (8-bit significands), so
each lane computes acc + a1 * b1 + a0 * b0 in float32 with one rounding per add (Intel's
pseudo-code: the odd element of the pair first), round to nearest even, as the interpreter's
float32 sums do, in another order. Unlike the interpreter, the instruction treats bfloat16
denormal inputs as zero and flushes denormal float32 results to zero (DAZ/FTZ, whatever
MXCSR says): values under 2^-126 in magnitude, far below one bfloat16 rounding of any
non-negligible output. The float32 sum then goes through the epilogue and is rounded to
bfloat16 once. Over tests/test_conv_bf16.py's shapes 99.96-100% of the outputs equal the
interpreter's, the others are one bfloat16 rounding apart, as with the widened float32
kernel (the tests allow 2^-7 of the largest output)."""
from __future__ import annotations

import math

import numpy as np

from ....errors import LoweringError
from . import conv2d_int8, interleave, narrow
from .amx import BFLOAT16 as AMX_BFLOAT16
from .common import (PARALLEL_MIN_ELEMENTS, VectorShape, blocks_of, extent, inline_elementwise,
                     iter_kinds, registers_with_tvm)
from .phases import column_phases, real_columns, row_conv_blocks
from .tiled import accumulator_writer

NAME = "conv2d_bf16"
ALGORITHM = "dpbf16"
# The algorithm with each kernel row's taps taken as input channels (`conv2d_dpbf16`'s
# `row_taps`), where that takes at most ROW_TAPS_MAX_STEPS of the instructions (`row_taps_save`).
# The copy of the unfolded input is 3.5x a 7x7 stride-2 stem's pairs (11 pairs for each of 112
# columns, against 2 for each of 230), which costs back part of the 21 % fewer instructions.
# That stem, 3 -> 64 channels on 224x224, one Zen 4 thread, its kernel alone, us, pairs of
# channels / row taps: batch 1 1,848 / 1,628 and 1,003 / 961 (two phases of the host), batch 8
# 13,571 / 12,840; inside bfloat16 GoogLeNet, in the same runs, 1,934-1,953 / 1,757-1,759;
# whole models alternated: ResNet-18 batch 1 0.977 (one thread) and 0.970 (two).
ROW_TAPS, ROW_TAPS_MAX_STEPS = "dpbf16_taps", 0.85
# Convs the float32 rules take as output rows of vectors (`narrow.applies`), of stride 1: the
# same tiles with each step a vdpbf16ps on two neighbouring taps of a kernel row
# (`narrow_conv2d_pairs`). One Zen 4 thread, the kernel alone, widened float32 / pairs:
# LeNet-5's 1 -> 6 channel 5x5 conv with tanh 3.54 / 2.98 us, VGG-11's 3 -> 64 channel 3x3
# 224x224 1,870 / 1,430 us; whole bfloat16 models alternated: LeNet-5 0.936, style transfer
# (a 9x9 32 -> 3 channel conv) 0.958, VGG-11 1.000.
NARROW_PAIRS = "narrow_dpbf16"
PAIRS_BLOCK = "narrow_pairs"
PAIRS_CONV_BLOCK = "narrow_conv2d_dpbf16"
LANES = 16          # float32 accumulators per instruction (one zmm)
PAIR = 2            # bfloat16 values per 32-bit lane: input channels, or a kernel row's taps
FEATURE = "avx512bf16"   # LLVM's name for the target feature
INTRINSIC = f"graphopt_dpbf16_{LANES}x{PAIR}_local"
# The same instruction with the broadcast pair read as one uint32 (Winograd's transformed input,
# `winograd.winograd_conv2d`, which packs each pair of channels into one element).
PACKED_INTRINSIC = f"graphopt_dpbf16_{LANES}x{PAIR}_packed_local"
# The same instruction with the broadcast pair a weight's and the vector 16 packed input pairs
# (uint32): the narrow rule's output columns as lanes (`narrow_conv2d_pairs`).
ROWS_INTRINSIC = f"graphopt_dpbf16_{LANES}x{PAIR}_rows_local"
# LLVM 22's vdpbf16ps takes <32 x bfloat> operands, a type TIR cannot pass: TVM legalizes every
# bfloat16 expression to float32 before codegen. The kernel calls this wrapper with the bits
# as <16 x i32> instead (imported into the kernel's LLVM module by `pragma_import_llvm`;
# linkonce_odr: every kernel imports it, the linker keeps one; always inlined).
WRAPPER = "graphopt_dpbf16ps_512"
WRAPPER_IR = f"""
define linkonce_odr <16 x float> @{WRAPPER}(<16 x float> %acc, <16 x i32> %a, <16 x i32> %b) #0 {{
  %a16 = bitcast <16 x i32> %a to <32 x bfloat>
  %b16 = bitcast <16 x i32> %b to <32 x bfloat>
  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %acc, <32 x bfloat> %a16,
                                                            <32 x bfloat> %b16)
  ret <16 x float> %r
}}
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)
attributes #0 = {{ alwaysinline nounwind }}
"""
_registered: set[str] = set()


def available(vec: VectorShape | None) -> bool:
    """Whether a CPU of vector shape `vec` has vdpbf16ps on zmm registers."""
    return vec is not None and vec.lanes == LANES and vec.bf16


def preferred(vec: VectorShape | None) -> bool:
    """Whether bfloat16 products take vdpbf16ps on a CPU of vector shape `vec` (convolutions,
    linear layers): it has the instruction (`available`) but no AMX-BF16, whose tiles take
    them instead where they fill them."""
    return available(vec) and AMX_BFLOAT16.feature not in vec.amx


# Whether grouped convs whose groups fill whole blocks take the kernel (`applies`) rather than
# the widened float32 one. Whole bfloat16 models on an AMD Zen 5, the builds alternated, time
# with / without, 1 / 2 threads: RegNetX-400MF (groups of 16 channels) 0.84-0.87 / 0.65-0.85,
# AlexNet (two groups) 0.86-0.91 / 0.85-0.86; outputs within bfloat16's rounding of the
# interpreter's (3e-3 and 6e-3 of the largest).
GROUPED = True


def applies(groups: int, weight_shape) -> bool:
    """Whether the kernel computes a convolution of `groups` groups and weight `weight_shape`
    (OIHW): one pixel broadcast per step spans the input channels of the whole output block,
    so ungrouped ones, or (`GROUPED`) grouped ones whose groups are whole blocks of output
    channels and pairs of input channels, each block reading its own group's pairs."""
    return groups == 1 or GROUPED and conv2d_int8.grouped_fits(weight_shape, groups, LANES,
                                                               PAIR)


def pack_weight(weight: np.ndarray) -> np.ndarray:
    """OIHW bfloat16 -> the bits (uint16) of [ceil(O / 16), ceil(I / 2), KH, KW, 16, 2],
    zero-padded (the output channels beyond O are computed and never read)."""
    o, i, kh, kw = weight.shape
    if str(weight.dtype) != "bfloat16":
        raise LoweringError(f"the dpbf16 convolution takes a bfloat16 weight, found "
                            f"{weight.dtype}")
    blocks, pairs = -(-o // LANES), -(-i // PAIR)
    padded = np.zeros((blocks * LANES, pairs * PAIR, kh, kw), np.uint16)
    padded[:o, :i] = weight.view(np.uint16)
    return padded.reshape(blocks, LANES, pairs, PAIR, kh, kw).transpose(0, 2, 4, 5, 1, 3).copy()


def widen(bits):
    """TIR: the float32 value of bfloat16 `bits` (uint16): exact, the bits are its high half.
    The kernel keeps bfloat16 data as uint16 bits: TVM legalizes every bfloat16 expression to
    float32 before codegen, which would widen the instruction's operands too."""
    from tvm import tirx
    return tirx.reinterpret("float32", tirx.shift_left(bits.astype("uint32"),
                                                       tirx.const(16, "uint32")))


def half_of(pair, k):
    """TIR: the bits (uint16) of bfloat16 value `k` (0: the low half) of a uint32 `pair`."""
    from tvm import tirx
    return tirx.shift_right(pair, k.astype("uint32") * tirx.const(16, "uint32")).astype("uint16")


def rounded_bits(value):
    """TIR: the bits of float32 `value` rounded to bfloat16 (to nearest, ties to even), in the
    low half of a uint32; a NaN is bfloat16's quiet NaN (rounding its payload could carry it
    into infinity or the sign bit). Unlike `bits_of`, for values that are not bfloat16 already
    (Winograd's transformed input, `winograd.winograd_conv2d`)."""
    from tvm import tirx
    u32 = lambda v: tirx.const(v, "uint32")  # noqa: E731
    bits = tirx.reinterpret("uint32", value)
    rounded = (bits + u32(0x7FFF) + ((bits >> u32(16)) & u32(1))) >> u32(16)
    return tirx.Select(value != value, u32(0x7FC0), rounded)


def bits_of(value):
    """TIR: the bits (uint16) of a bfloat16 `value`, through its exact float32 widening."""
    from tvm import tirx
    wide = tirx.reinterpret("uint32", value.astype("float32"))
    return tirx.shift_right(wide, tirx.const(16, "uint32")).astype("uint16")


def unfold_row_taps(weight: np.ndarray) -> np.ndarray:
    """OIHW -> [O, KW * I, KH, 1], input channel kx * I + c holding tap kx of channel c: the
    weight of the convolution `conv2d_dpbf16(..., row_taps=KW)` computes."""
    o, i, kh, kw = weight.shape
    return np.ascontiguousarray(weight.transpose(0, 3, 1, 2).reshape(o, kw * i, kh, 1))


def row_taps_save(in_channels: int, kernel_width: int) -> bool:
    """Whether a kernel row's taps taken as input channels (`ROW_TAPS`) make at most
    ROW_TAPS_MAX_STEPS of the instructions pairs of channels do: an image's few channels
    (a 7x7 stem's 3: 11 pairs a kernel row instead of 14)."""
    return kernel_width > 1 and -(-in_channels * kernel_width // PAIR) <= \
        ROW_TAPS_MAX_STEPS * -(-in_channels // PAIR) * kernel_width


def conv2d_dpbf16(x, packed, conv, row_taps: int = 0):
    """TE: the float32 sums over each window of x (bfloat16 NCHW, zero-padded, copied as bits
    in pairs of channels) times the packed weight, laid out [N, ceil(O / 16), OH, OW, 16].
    `row_taps` (the kernel's width; the weight `unfold_row_taps`'): the copy holds, for each
    output column, the kernel row's taps of every channel as its channels, tap-major, so the
    convolution is a KH x 1 one of stride 1 along the row over them. OW is
    `conv.padded_width` where set (rows computed to whole tiles, `conv2d_int8.padded_row`:
    the columns beyond the real ones read zero padding, and the epilogue does not read them)."""
    from tvm import te, tirx
    from ....ops.base import conv_out_size
    n, channels, height, width = (int(d) for d in x.shape)
    blocks, pairs, k_h, k_w = (int(d) for d in packed.shape[:4])
    (s_h, s_w), (d_h, d_w) = conv.stride, conv.dilation
    top, left, bottom, right = conv.padding
    out_h = conv_out_size(height, k_h, s_h, top, bottom, d_h)
    _, out_w, read_w = conv2d_int8.row_widths(conv, width, row_taps or k_w)
    zero = tirx.const(0, "uint16")

    def padded(b, g, c, i, j):
        inside = tirx.all(i >= top, i < top + height, j >= left, j < left + width,
                          g * PAIR + c < channels)
        return tirx.if_then_else(inside, bits_of(x[b, g * PAIR + c, i - top, j - left]), zero)

    def unfolded(b, g, c, i, j):      # j: the output column
        tap, channel = (g * PAIR + c) // channels, (g * PAIR + c) % channels
        column = j * s_w + tap * d_w - left
        inside = tirx.all(i >= top, i < top + height, column >= 0, column < width,
                          tap < row_taps)
        return tirx.if_then_else(inside, bits_of(x[b, channel, i - top, column]), zero)

    rows = height + top + bottom
    if row_taps:
        paired = interleave.interleaved(unfolded, n, pairs, PAIR, rows, out_w, LANES, "uint16")
        s_w = d_w = 1                  # the copy holds each output column's taps
    else:
        paired = interleave.interleaved(padded, n, -(-channels // PAIR), PAIR, rows, read_w,
                                        LANES, "uint16")
    rg, ry = te.reduce_axis((0, pairs), "rg"), te.reduce_axis((0, k_h), "ry")
    rx, rc = te.reduce_axis((0, k_w), "rx"), te.reduce_axis((0, PAIR), "rc")
    return te.compute(
        (n, blocks, out_h, out_w, LANES),
        lambda b, ob, i, j, o: te.sum(
            widen(paired[b, conv2d_int8.group_read(ob, rg, blocks, pairs, conv.groups),
                         i * s_h + ry * d_h, j * s_w + rx * d_w, rc])
            * widen(packed[ob, rg, ry, rx, o, rc]), axis=[rg, ry, rx, rc]),
        name="conv2d_bf16")


@registers_with_tvm
def register_intrinsic() -> None:
    """Register INTRINSIC, PACKED_INTRINSIC and ROWS_INTRINSIC (once per process): C[16]
    (float32, registers) += A[2] (one broadcast pair of bfloat16 values; packed: the two halves
    of one uint32) . B[16, 2] (rows: B[16], each the two halves of a uint32) by one
    vdpbf16ps."""
    if INTRINSIC in _registered:
        return
    from tvm.script import tirx as T
    pair = lambda A: T.reinterpret(A.vload([0], f"uint16x{PAIR}"), dtype="int32")  # noqa: E731
    _register_dot(INTRINSIC, PAIR, "uint16", lambda A, k: A[k], pair)
    _register_dot(PACKED_INTRINSIC, 1, "uint32", lambda A, k: half_of(A[0], k),
                  lambda A: T.reinterpret(A[0], dtype="int32"))
    _register_dot(ROWS_INTRINSIC, PAIR, "uint16", lambda A, k: A[k], pair, packed_vector=True)
    _registered.add(INTRINSIC)


def _register_dot(name: str, a_length: int, a_dtype: str, element, pixel,
                  packed_vector: bool = False) -> None:
    """Register `name`: C[16] += A . B by one vdpbf16ps, where A holds the broadcast pair as
    `a_length` elements of `a_dtype`, `element(A, k)` is the bits (uint16) of its value k and
    `pixel(A)` the pair as one int32; B is [16, 2] bfloat16 bits, or with `packed_vector` [16]
    uint32, each lane's pair as its two halves."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T
    vector = f"int32x{LANES}"   # the bits of 32 bfloat16 values
    if packed_vector:
        b_shape, b_dtype, b_region = (LANES,), "uint32", lambda B: B[0:LANES]
        b_element = lambda B, i, k: half_of(B[i], k)    # noqa: E731
        b_vector = lambda B: T.reinterpret(B.vload([0], dtype=f"uint32x{LANES}"),  # noqa: E731
                                           dtype=vector)
    else:
        b_shape, b_dtype, b_region = (LANES, PAIR), "uint16", lambda B: B[0:LANES, 0:PAIR]
        b_element = lambda B, i, k: B[i, k]             # noqa: E731
        b_vector = lambda B: T.reinterpret(  # noqa: E731
            B.vload([0, 0], dtype=f"uint16x{LANES * PAIR}"), dtype=vector)

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((a_length,), a_dtype, offset_factor=1),
             B: T.Buffer(b_shape, b_dtype, offset_factor=1),
             C: T.Buffer((LANES,), "float32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:a_length], b_region(B))
            T.writes(C[0:LANES])
            for i in T.serial(0, LANES):
                for k in T.serial(0, PAIR):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + widen(element(A, vk)) * widen(b_element(B, vi, vk))

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((a_length,), a_dtype, offset_factor=1),
             B: T.Buffer(b_shape, b_dtype, offset_factor=1),
             C: T.Buffer((LANES,), "float32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:a_length], b_region(B))
            T.writes(C[0:LANES])
            C[T.ramp(T.int32(0), 1, LANES)] = T.call_pure_extern(
                f"float32x{LANES}", WRAPPER, C.vload([0], dtype=f"float32x{LANES}"),
                T.broadcast(pixel(A), LANES), b_vector(B))

    TensorIntrin.register(name, desc, impl, override=True)


def find_conv(sch):
    """The conv2d_dpbf16 block: 5 spatial (n, block, oh, ow, lane) and 4 reduction iterators,
    accumulating float32 from a [*, *, *, *, 16, 2] bfloat16 weight."""
    def packed(block):
        return any(len(r.source.shape) == 6 and str(r.source.dtype) == "uint16"
                   and [int(d) for d in r.source.shape[4:]] == [LANES, PAIR]
                   for r in block.reads)

    found = [b for b in blocks_of(sch) if iter_kinds(sch.get(b)) == "SSSSSRRRR"
             and str(sch.get(b).writes[0].source.dtype) == "float32" and packed(sch.get(b))]
    return found[0] if len(found) == 1 else None


def schedule(sch, vec: VectorShape) -> bool | None:
    """Schedule a conv2d_dpbf16 or `narrow_conv2d_pairs` PrimFunc (True), or None when `sch`
    holds neither."""
    conv = find_conv(sch)
    if conv is None:
        return schedule_row_pairs(sch, vec)
    register_intrinsic()
    inline_elementwise(sch, keep=[conv, *sch.get_producers(conv), *interleave.copy_blocks(sch)])
    conv = find_conv(sch)
    writer = accumulator_writer(sch, conv)
    if writer is None:
        return None
    # rows computed to whole tiles (`padded_width`): the epilogue on the tile's channel vectors,
    # the transpose of a row's partial last tile measured slow (1x1 64 -> 80 ch on 73x73
    # computed to 75, one Zen 5 thread: 566 us transposed, 366 on channels; 75x75 itself 347)
    wider = int(sch.get(conv).iter_vars[3].dom.extent) > \
        int(sch.get(writer).writes[0].source.shape[-1])
    lane, _ = conv2d_int8.tile(sch, conv, writer, LANES, vec, unfused_on_channels=wider)
    sch.annotate(sch.get_loops(conv)[0], "pragma_import_llvm", WRAPPER_IR)
    sch.tensorize(lane, INTRINSIC)
    return True


def pairs_apply(conv, kernel_width: int) -> bool:
    """Whether `narrow_conv2d_pairs` computes `conv`: stride and dilation 1 (a pair's taps read
    neighbouring columns of one copy), kernel rows of at least two taps."""
    return tuple(conv.stride) == (1, 1) and tuple(conv.dilation) == (1, 1) and kernel_width > 1


def pack_weight_pairs(weight: np.ndarray) -> np.ndarray:
    """OIHW bfloat16 -> the bits (uint16) of [O, I, KH, ceil(KW / 2), 2], each kernel row's taps
    in pairs, an odd row's last pair completed by a zero tap."""
    o, i, kh, kw = weight.shape
    if str(weight.dtype) != "bfloat16":
        raise LoweringError(f"the {NARROW_PAIRS} convolution takes a bfloat16 weight, found "
                            f"{weight.dtype}")
    padded = np.zeros((o, i, kh, -(-kw // PAIR) * PAIR), np.uint16)
    padded[..., :kw] = weight.view(np.uint16)
    return padded.reshape(o, i, kh, -1, PAIR)


def narrow_conv2d_pairs(x, packed, conv, block: int, kernel_width: int):
    """TE: the float32 conv of NCHW bfloat16 `x` with the weight `pack_weight_pairs` made (of a
    kernel `kernel_width` wide), on rows padded to whole blocks of `block` columns and sliced
    back to the real width: the padded copy (`column_phases`, stride 1), then each column
    packed with its right neighbour (`PAIRS_BLOCK`: uint32, low half the column's bits), in
    rows of whole blocks."""
    from tvm import te
    n, channels = (int(d) for d in x.shape[:2])
    out_channels, _, k_h, pairs, _ = (int(d) for d in packed.shape)
    # The packed rows reach every output column's last pair, in whole blocks past the padded
    # output row; the copy (padded_w + kernel_width - 1 columns at stride 1) is extended to
    # the right neighbour of the packed rows' last column.
    reach = -(-PAIR * (pairs - 1) // block) * block
    phases, (out_h, out_w, padded_w) = column_phases(
        x, conv, (k_h, kernel_width), block, narrow.PHASES_BLOCK,
        extra_columns=max(0, reach + 2 - kernel_width))
    columns = padded_w + reach
    odd = kernel_width % PAIR

    def packed_pair(b, c, i, plane, j):   # plane 1: the column alone (an odd row's last tap)
        right = bits_of(phases[b, c, i, 0, j + 1 - plane]).astype("uint32") * (1 - plane)
        return bits_of(phases[b, c, i, 0, j]).astype("uint32") | (right << 16)

    pairs_copy = te.compute((n, channels, int(phases.shape[2]), 1 + odd, columns), packed_pair,
                            name=PAIRS_BLOCK)

    def plane(rp):
        return rp // (pairs - 1) if odd else 0

    rc, ry = te.reduce_axis((0, channels), "rc"), te.reduce_axis((0, k_h), "ry")
    rp, rt = te.reduce_axis((0, pairs), "rp"), te.reduce_axis((0, PAIR), "rt")
    tile = te.compute(
        (n, out_channels, out_h, padded_w),
        lambda b, o, i, j: te.sum(
            widen(packed[o, rc, ry, rp, rt])
            * widen(half_of(pairs_copy[b, rc, i + ry, plane(rp), j + PAIR * rp], rt)),
            axis=[rc, ry, rp, rt]),
        name=PAIRS_CONV_BLOCK)
    return real_columns(tile, out_w)


def schedule_row_pairs(sch, vec: VectorShape) -> bool | None:
    """Schedule a `narrow_conv2d_pairs` PrimFunc (True), or None when `sch` holds none: the
    narrow rule's tiles (`narrow.tile_rows`), the packing copy after the phase copy (parallel
    over planes where it is large, its rows as vectors) and each step one vdpbf16ps
    (ROWS_INTRINSIC)."""
    if vec.lanes != LANES:
        return None
    found = row_conv_blocks(sch, PAIRS_CONV_BLOCK, "SSSSRRRR", narrow.PHASES_BLOCK,
                            kept=(PAIRS_BLOCK,))
    if found is None:
        return None
    conv = found[0]
    lanes = narrow.tile_rows(sch, *found, vec, vectorize=False)
    if lanes is None:
        return None
    packing = next(b for b in blocks_of(sch) if sch.get(b).name_hint == PAIRS_BLOCK)
    b, c, *_, columns = sch.get_loops(packing)
    elements = math.prod(extent(loop, sch) for loop in sch.get_loops(packing))
    planes = sch.fuse(b, c)
    if elements >= PARALLEL_MIN_ELEMENTS and extent(planes, sch) > 1:
        sch.parallel(planes)
    _, column_lanes = sch.split(columns, [None, LANES])
    sch.vectorize(column_lanes)
    register_intrinsic()
    sch.annotate(sch.get_loops(conv)[0], "pragma_import_llvm", WRAPPER_IR)
    sch.tensorize(lanes, ROWS_INTRINSIC)
    return True
