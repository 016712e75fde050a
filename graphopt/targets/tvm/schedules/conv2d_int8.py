"""int8 convolutions on x86 dot-product instructions: uint8 activations times int8 weights,
accumulated exactly in int32, with the requantize epilogue computed from the register tile.

`select_conv_algorithm` records on a `qlinear_conv2d` the instruction the target CPU has
(`DOT_PRODUCTS`: its name is the conv's `algorithm`, its lanes the `weight_block`) where the
weights are constant and symmetric; `QLinearConv2d.lower_tvm` builds `conv2d_dot` with the weight
packed by `pack_weight`; the rule below schedules it and tensorizes the instruction.

- "vnni" (AVX-512 VNNI or AVX-VNNI, `vpdpbusd`): 16 (zmm) or 8 (ymm, AVX-VNNI without
  AVX-512) int32 lanes, each += 4 u8 x s8 products.
- "pmaddubsw" (AVX2 or AVX-512 without VNNI, `vpmaddubsw` then `vpmaddwd` by ones): 8 or 16
  int32 lanes, each += 4 u8 x s8 products, summed in pairs in int16 first. `vpmaddubsw`
  saturates those pair sums, so it is chosen only for weights whose pairs cannot reach
  int16's limits for any uint8 input (`pairs_fit_int16`: 255 * (127 + 127) > 32767, but
  7-bit weights, `go.quantize(..., reduce_range=True)` as ONNX Runtime's quantizer makes
  them for these CPUs, always fit): the results are exact, as on VNNI.
- "pmaddwd" (AVX2 or AVX-512 without VNNI, `vpmaddwd`): 8 or 16 int32 lanes, each += 2 int16
  products; the operands are widened to int16 first (input in its padded copy, weights when
  packed), which keeps every product and sum exact, for weights of any range.
- "pmaddwd_s8": the same with the weights kept in int8 and widened as they load (`vpmovsxbw`),
  for convs of few output pixels (`STREAMED_WEIGHT_PIXELS`: linear layers at small batches),
  whose time is the weights' read from memory.

Layouts: the weight is [ceil(O / lanes), ceil(I / group), KH, KW, lanes, group], so one
instruction's weights are one aligned vector load; the input is copied, padded with its zero
point, to [N, ceil(I / group), H', W', group] (`interleave.py`: W' rounded up to whole
vectors), so one pixel's `group` input channels are one broadcast int32. Channels beyond O
and I are zero weights. A grouped conv's weight is packed the same way (I: a group's input
channels), each block reading its own group's channel groups of the input (`grouped_fits`).
The tile is the fp32 rule's: up to 2 x lanes output channels by a row segment of pixels, the
reduction outside it; AVX-VNNI tiles of 8 accumulators take two channel groups a step
(`PAIRED_TILE`), in blocks of input channels whose weights stay in L1
(`PAIRED_K_BLOCK_BYTES`). LLVM emits neither instruction from plain loops,
so the inner step is a tensor intrinsic (TVM's own `dot_16x4_vnni` no longer compiles with
LLVM 22, whose `vpdpbusd.512` takes <64 x i8> operands)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import interleave
from .common import (VectorShape, blocks_of, inline_elementwise, iter_kinds,
                     registers_with_tvm)
from .tiled import accumulator_writer, finish_tile, spatial_rest

NAME = "conv2d_int8"


@dataclass(frozen=True)
class DotProduct:
    """One x86 instruction: `lanes` int32 accumulators, each adding `group` products of
    operands of `dtypes` (input, weight)."""

    algorithm: str
    lanes: int
    group: int
    dtypes: tuple[str, str]
    llvm: str
    # Where `llvm` returns int16 pair sums (vpmaddubsw): the instruction adding those pairs
    # into the int32 lanes (vpmaddwd by a vector of ones).
    widen: str | None = None

    @property
    def intrinsic(self) -> str:
        return f"graphopt_{self.algorithm}_{self.lanes}x{self.group}_local"


DOT_PRODUCTS = {
    ("vnni", 16): DotProduct("vnni", 16, 4, ("uint8", "int8"), "llvm.x86.avx512.vpdpbusd.512"),
    # LLVM selects AVX-VNNI's VEX encoding of this intrinsic where the CPU has no AVX-512
    ("vnni", 8): DotProduct("vnni", 8, 4, ("uint8", "int8"), "llvm.x86.avx512.vpdpbusd.256"),
    ("pmaddubsw", 16): DotProduct("pmaddubsw", 16, 4, ("uint8", "int8"),
                                  "llvm.x86.avx512.pmaddubs.w.512",
                                  widen="llvm.x86.avx512.pmaddw.d.512"),
    ("pmaddubsw", 8): DotProduct("pmaddubsw", 8, 4, ("uint8", "int8"),
                                 "llvm.x86.avx2.pmadd.ub.sw", widen="llvm.x86.avx2.pmadd.wd"),
    ("pmaddwd", 16): DotProduct("pmaddwd", 16, 2, ("int16", "int16"),
                                "llvm.x86.avx512.pmaddw.d.512"),
    ("pmaddwd", 8): DotProduct("pmaddwd", 8, 2, ("int16", "int16"), "llvm.x86.avx2.pmadd.wd"),
    # int8 weights widened to the instruction's int16 as they load
    ("pmaddwd_s8", 16): DotProduct("pmaddwd_s8", 16, 2, ("int16", "int8"),
                                   "llvm.x86.avx512.pmaddw.d.512"),
    ("pmaddwd_s8", 8): DotProduct("pmaddwd_s8", 8, 2, ("int16", "int8"),
                                  "llvm.x86.avx2.pmadd.wd"),
}
ALGORITHMS = tuple(sorted({key[0] for key in DOT_PRODUCTS}))
_registered: set[str] = set()


# Output pixels (images x rows x columns) up to which a vpmaddwd conv keeps its weights in int8
# (`pmaddwd_s8`): each weight then serves few products and the kernel's time is its weights'
# read from memory, which int16 weights double. AMD Zen 4, 1 thread, 8-bit weights, ms, int16 /
# int8 weights. AVX2 build (mcpu="znver3"): linear layers at batch 1, 25088 -> 4096 9.14 /
# 4.85, 4096 -> 4096 1.16 / 0.50; at batch 8, 4096 -> 4096 2.72 / 2.42, 4096 -> 1000 0.47 /
# 0.47; 1x1 512 ch on 2x2 0.025 / 0.024; whole VGG-11, alternated, 0.96 of the time at batch
# 1, 0.97 at batch 8. AVX-512 build (mcpu="skylake-avx512"): 25088 -> 4096 at batch 1 9.17 /
# 4.93, 4096 -> 4096 at batch 8 2.16 / 1.93. On larger planes the widening costs more than the
# reads save: 3x3 convs, 64 -> 128 ch 56x56 3.13 / 3.36, 256 ch 28x28 5.95 / 6.40, 512 ch
# 14x14 5.97 / 6.23 (AVX2).
STREAMED_WEIGHT_PIXELS = 8


def dot_product_for(vec: VectorShape, weight: np.ndarray, pixels: int) -> DotProduct | None:
    """The instruction a CPU of vector shape `vec` computes the int8 convolution of `weight`
    (OIHW) with exactly, for an output of `pixels` pixels (images x rows x columns)."""
    if vec.vnni:
        return DOT_PRODUCTS["vnni", 16]
    if vec.avx_vnni and vec.lanes == 8:
        return DOT_PRODUCTS["vnni", 8]
    if pairs_fit_int16(weight):
        return DOT_PRODUCTS.get(("pmaddubsw", vec.lanes))
    streamed = pixels <= STREAMED_WEIGHT_PIXELS
    return DOT_PRODUCTS.get(("pmaddwd_s8" if streamed else "pmaddwd", vec.lanes))


def pairs_fit_int16(weight: np.ndarray) -> bool:
    """Whether `vpmaddubsw` multiplies any uint8 input by int8 `weight` (OIHW) without
    saturating: it sums the products of input channels 2k and 2k + 1 (the pairs of the packed
    layout) in int16, at most 255 times the pair's positive weights, at least 255 times its
    negative ones."""
    o, i, kh, kw = weight.shape
    pairs = np.zeros((o, -(-i // 2) * 2, kh, kw), np.int32)
    pairs[:, :i] = weight
    pairs = pairs.reshape(o, -1, 2, kh, kw)
    most = np.maximum(pairs, 0).sum(axis=2).max(initial=0)
    least = np.minimum(pairs, 0).sum(axis=2).min(initial=0)
    int16 = np.iinfo(np.int16)
    return 255 * int(most) <= int16.max and 255 * int(least) >= int16.min


def grouped_fits(weight_shape, groups: int, lanes: int, group: int) -> bool:
    """Whether a dot-product kernel of blocks of `lanes` output channels, each step reading
    `group` input channels of a pixel, computes a conv of `groups` groups and this weight
    (OIHW, I the input channels of a group): each group's output channels whole blocks and its
    input channels whole channel groups, so that no block or channel group straddles two conv
    groups; a depthwise conv (one input channel a group) does not. `conv2d_dot` (`lanes` and
    `group` its DotProduct's) and `conv2d_bf16` (16 lanes, pairs)."""
    o, i = weight_shape[:2]
    return groups == 1 or (o // groups % lanes == 0 and i % group == 0)


def row_widths(conv, width: int, kernel_width: int) -> tuple[int, int, int]:
    """(real, computed, read) of a dot-product conv's output rows, for an input `width` wide
    and a kernel `kernel_width` wide: the output row's width, the width the kernel computes
    (`conv.padded_width` where set: whole tiles, `padded_row`; the epilogue keeps the real
    columns) and the padded input columns those read."""
    from ....ops.base import conv_out_size
    _, left, _, right = conv.padding
    s_w, d_w = conv.stride[1], conv.dilation[1]
    real = conv_out_size(width, kernel_width, s_w, left, right, d_w)
    computed = max(conv.padded_width, real)
    return real, computed, max(width + left + right,
                               (computed - 1) * s_w + d_w * (kernel_width - 1) + 1)


def group_read(block, index, blocks: int, per_block: int, conv_groups: int):
    """TE: the input's channel group (or pair) that output block `block` of `blocks` reads as
    its `index`-th of `per_block`: in a conv of `conv_groups` groups (`grouped_fits`), one of
    its own conv group's."""
    if conv_groups == 1:
        return index
    return block // (blocks // conv_groups) * per_block + index


def pack_weight(weight: np.ndarray, dot: DotProduct) -> np.ndarray:
    """OIHW int8 -> [ceil(O / lanes), ceil(I / group), KH, KW, lanes, group] in the
    instruction's weight dtype, zero-padded (the output channels beyond O are computed and
    never read)."""
    o, i, kh, kw = weight.shape
    blocks, groups = -(-o // dot.lanes), -(-i // dot.group)
    padded = np.zeros((blocks * dot.lanes, groups * dot.group, kh, kw), dot.dtypes[1])
    padded[:o, :i] = weight
    return padded.reshape(blocks, dot.lanes, groups, dot.group, kh, kw) \
        .transpose(0, 2, 4, 5, 1, 3).copy()


def conv2d_dot(x, packed, x_zero_point, conv, dot: DotProduct):
    """TE: sum over each window of x (padded with its zero point) times the packed weight, int32,
    laid out [N, ceil(O / lanes), OH, OW, lanes] (the zero points are corrected by the
    caller); OW is `conv.padded_width` where set (rows computed to whole tiles, the columns
    beyond the real ones from more zero-point padding, which the epilogue does not read)."""
    from tvm import te, tirx
    from ....ops.base import conv_out_size
    n, channels, height, width = (int(d) for d in x.shape)
    blocks, groups, k_h, k_w = (int(d) for d in packed.shape[:4])
    in_groups = -(-channels // dot.group)
    (s_h, s_w), (d_h, d_w) = conv.stride, conv.dilation
    top, left, bottom, right = conv.padding
    out_h = conv_out_size(height, k_h, s_h, top, bottom, d_h)
    _, out_w, read_w = row_widths(conv, width, k_w)
    fill = x_zero_point[(0,) * len(x_zero_point.shape)]
    dtype, group = dot.dtypes[0], dot.group

    def padded(b, g, c, i, j):
        inside = tirx.all(i >= top, i < top + height, j >= left, j < left + width,
                          g * group + c < channels)
        return tirx.if_then_else(inside, x[b, g * group + c, i - top, j - left], fill)

    grouped = interleave.interleaved(padded, n, in_groups, group, height + top + bottom,
                                     read_w, dot.lanes, dtype)
    rg, ry = te.reduce_axis((0, groups), "rg"), te.reduce_axis((0, k_h), "ry")
    rx, rc = te.reduce_axis((0, k_w), "rx"), te.reduce_axis((0, group), "rc")

    return te.compute(
        (n, blocks, out_h, out_w, dot.lanes),
        lambda b, ob, i, j, o: te.sum(
            grouped[b, group_read(ob, rg, blocks, groups, conv.groups),
                    i * s_h + ry * d_h, j * s_w + rx * d_w, rc]
            .astype("int32")
            * packed[ob, rg, ry, rx, o, rc].astype("int32"), axis=[rg, ry, rx, rc]),
        name=f"{NAME}_{dot.algorithm}")


def paired_intrinsic(dot: DotProduct) -> str:
    """The name of `dot`'s two-group intrinsic (`register_paired_intrinsic`)."""
    return dot.intrinsic + "_paired"


@registers_with_tvm
def register_paired_intrinsic(dot: DotProduct) -> None:
    """Register `paired_intrinsic(dot)` (vpdpbusd only, once per process): C[lanes] += A[2,
    group] . B[2, lanes, group] over two input-channel groups, in two instructions: the first
    adds into C, the second into a zeroed register that a vpaddd then adds to C
    (`PAIRED_TILE`). The groups are planes of the input ([2, 1, 1, group] of
    [N, groups, H', W', group]) and of the weight ([2, 1, 1, lanes, group])."""
    name = paired_intrinsic(dot)
    if name in _registered or dot.algorithm != "vnni":
        return
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T
    lanes, group = dot.lanes, dot.group
    a_dtype, b_dtype = dot.dtypes
    lanes_i32, operand = f"int32x{lanes}", f"{b_dtype}x{lanes * group}"

    def buffers(a, b, c):
        A = T.match_buffer(a, (2, 1, 1, group), a_dtype, offset_factor=1,
                           strides=[T.int32(), T.int32(), T.int32(), 1])
        B = T.match_buffer(b, (2, 1, 1, lanes, group), b_dtype, offset_factor=1,
                           strides=[T.int32(), T.int32(), T.int32(), group, 1])
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
        return A, B, C

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A, B, C = T.meta_var(buffers(a, b, c))
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2, 0, 0, 0:group], B[0:2, 0, 0, 0:lanes, 0:group])
            T.writes(C[0:lanes])
            for g, i, k in T.grid(2, lanes, group):
                with T.sblock("update"):
                    vi, vg, vk = T.axis.remap("SRR", [i, g, k])    # the conv block's order
                    C[vi] = C[vi] + T.cast(A[vg, 0, 0, vk], "int32") * \
                        T.cast(B[vg, 0, 0, vi, vk], "int32")

    def product(accumulator, A, B, g):
        pixel = T.reinterpret(A.vload([g, 0, 0, 0], f"{a_dtype}x{group}"), dtype="int32")
        return T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(dot.llvm), accumulator,
            T.reinterpret(T.broadcast(pixel, lanes), dtype=operand),
            B.vload([g, 0, 0, 0, 0], dtype=operand), dtype=lanes_i32)

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A, B, C = T.meta_var(buffers(a, b, c))
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2, 0, 0, 0:group], B[0:2, 0, 0, 0:lanes, 0:group])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = \
                product(C.vload([0], dtype=lanes_i32), A, B, 0) + \
                product(T.broadcast(T.int32(0), lanes), A, B, 1)

    TensorIntrin.register(name, desc, impl, override=True)
    _registered.add(name)


@registers_with_tvm
def register_intrinsic(dot: DotProduct) -> None:
    """Register `dot.intrinsic` (once per process): C[lanes] (int32, registers) += A[group]
    (one broadcast int32 of inputs) . B[lanes, group] by one instruction."""
    if dot.intrinsic in _registered:
        return
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T
    lanes, group = dot.lanes, dot.group
    a_dtype, b_dtype = dot.dtypes
    # the instruction's operands: the weights' type, or the input's where the weights are
    # narrower and widen as they load (`vpmovsxbw`)
    element = a_dtype if np.dtype(a_dtype).itemsize > np.dtype(b_dtype).itemsize else b_dtype
    width = lanes * 32 // np.dtype(element).itemsize // 8   # operand elements per register
    lanes_i32, operand = f"int32x{lanes}", f"{element}x{width}"

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((group,), a_dtype, offset_factor=1),
             B: T.Buffer((lanes, group), b_dtype, offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    accumulates = dot.algorithm == "vnni"     # vpdpbusd adds into C; vpmaddwd returns the sums
    widens = dot.widen is not None
    pair_sums = f"int16x{lanes * 2}"

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((group,), a_dtype, offset_factor=1),
             B: T.Buffer((lanes, group), b_dtype, offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            pixel = T.reinterpret(A.vload([0], f"{a_dtype}x{group}"), dtype="int32")
            pixels = T.reinterpret(T.broadcast(pixel, lanes), dtype=operand)
            weights = T.Cast(operand, B.vload([0, 0], dtype=f"{b_dtype}x{width}"))
            if accumulates:
                C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(dot.llvm), C.vload([0], dtype=lanes_i32), pixels,
                    weights, dtype=lanes_i32)
            elif widens:
                C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=lanes_i32) + \
                    T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(dot.widen), T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id(dot.llvm), pixels, weights,
                            dtype=pair_sums),
                        T.broadcast(T.int16(1), lanes * 2), dtype=lanes_i32)
            else:
                C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=lanes_i32) + \
                    T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(dot.llvm), pixels,
                                            weights, dtype=lanes_i32)

    TensorIntrin.register(dot.intrinsic, desc, impl, override=True)
    _registered.add(dot.intrinsic)


def find_conv(sch):
    """The conv2d_dot block: 5 spatial (n, block, oh, ow, lane) and 4 reduction iterators,
    accumulating int32, and its DotProduct (the block's name names the algorithm; the packed
    weight's lanes, group and dtype must be that instruction's)."""
    found = [b for b in blocks_of(sch) if iter_kinds(sch.get(b)) == "SSSSSRRRR"
             and str(sch.get(b).writes[0].source.dtype) == "int32"]
    if len(found) != 1:
        return None, None
    block = sch.get(found[0])
    shapes = {(int(r.source.shape[4]), int(r.source.shape[5]), str(r.source.dtype))
              for r in block.reads if len(r.source.shape) == 6}
    dots = [d for d in DOT_PRODUCTS.values() if (d.lanes, d.group, d.dtypes[1]) in shapes
            and block.name_hint == f"{NAME}_{d.algorithm}"]
    return (found[0], dots[0]) if len(dots) == 1 else (None, None)


def row_tile(width: int, limit: int) -> int:
    """Pixels per tile: the largest divisor of the row width within `limit` (the intrinsic
    needs whole tiles: no predicated last tile)."""
    return max(d for d in range(1, min(width, limit) + 1) if width % d == 0)


# Accumulators of a tile on 8 lanes (ymm registers), per instruction, and whether the kernel's
# taps are one loop (`tile`). vpdpbusd (AVX-VNNI, one instruction in place), 1 thread,
# ResNet-18's 3x3 convs (64 ch 56x56, 128 ch 28x28, 256 ch 14x14, 512 ch 7x7), ymm code on an
# Intel Xeon (family 6 model 167), taps fused, ms: 4 accumulators 1.27 / 1.17 / 1.14 / 2.24,
# 8 (2 blocks x 4 pixels; 14 and 7 wide: 1 x 7) 0.73 / 0.64 / 0.70 / 0.72, 14 (2 x 7) 0.88 /
# 0.79 / 0.77 / 0.81. 12 (2 x 6, 2 x 5, 1 x 9, ...: 12 accumulators, two weights and the
# broadcast fit the 16 registers) where the row divides so; rows of 2^k x 7 pixels (ResNet's,
# VGG's) still take 2 x 4 or 1 x 7. AMD Zen 5 run as an AVX-VNNI CPU
# (`benchmarks/as_avx2.py --as-avx-vnni`), 3x3 convs, 8 / 12 accumulators against ORT's
# AVX-VNNI kernel: 64 ch 48x48 1.14 / 1.02, 128 ch 24x24 1.14 / 0.99, 256 ch 12x12 1.19 /
# 1.03, 192 ch 20x20 1.16 / 1.05, 64 ch 35x35 1.23 / 1.02, 96 ch 27x27 1.38 / 1.11, 64 ch
# 55x55 1.54 / 1.17. Rows of whole 6-pixel tiles past the output (56 -> 60 columns, the
# epilogue writing whole tiles, a copy cutting the rows) lost: 64 ch 56x56 0.61 ms against 0.56.
# Whole int8 models, 12 / 8 accumulators alternated: AlexNet 0.948, SqueezeNet 1.1 0.961,
# Inception-v3 0.982, ResNet-18 1.006 (its tiles unchanged).
# The widening ones (two instructions and a temporary per step) keep a loop per kernel row and
# column: LLVM leaves a fused loop of taps rolled for 8 accumulators and splits its index by
# the kernel width at every tap (a multiply and shifts). AVX2 build (mcpu="znver3") on an AMD
# Zen 4, 1 thread, ms. 7-bit weights (vpmaddubsw), 4 accumulators fused / 8 as loops:
# 64 -> 128 ch 112x112 9.62 / 9.12, 128 -> 256 ch 56x56 9.10 / 8.73, 512 ch 28x28 17.06 /
# 17.05 (8 fused: 20.34), ResNet-18's 7x7 stem 3.73 / 1.76 and 512 ch 7x7 (2 x 1 tiles either
# way) 1.47 / 1.07; each kernel once, summed, ResNet-18 15.8 / 12.7, VGG-11 74.2 / 72.5; whole
# models, alternated, ResNet-18 0.82 of the time at batch 1 and 8, VGG-11 0.97. vpmaddwd
# (8-bit weights widened to int16), each kernel once, 4 fused / 4 as loops / 8 as loops:
# ResNet-18 25.2 / 21.4 / 16.1, VGG-11 113.3 / 118.5 / 95.1. (Timed with fused taps only, an
# Intel Xeon (model 167) ran them fastest with 4: vpmaddubsw 1.20 / 1.08 ms on ResNet-18's 64
# and 128 ch 3x3 convs, 8 fused 1.62 / 1.52.) The taps outside the channel groups (MLAS's
# order) measured 0.99-1.12 of this.
# On 16 lanes (AVX-512) the widest tiles are fastest (`VectorShape.accumulators`), over fused
# taps (Zen 4, VNNI, each kernel once, fused / as loops: ResNet-18 6.6 / 7.8, VGG-11 38.5 /
# 42.5).
YMM_TILES = {"vnni": (12, True), "pmaddubsw": (8, False), "pmaddwd": (8, False),
             "pmaddwd_s8": (8, False)}
# Accumulators of an AVX-VNNI tile of one block: one weight register fewer than two blocks', so
# 13 (with the weight and the broadcast, 15 of the 16 registers). Rows of 13 pixels (SqueezeNet's
# and AlexNet's 13x13 planes) otherwise took 2 blocks x 1 pixel: 2 chains of vpdpbusd, which do
# not hide its latency. Zen 5 run as an AVX-VNNI CPU, 3x3 convs + relu against ORT's AVX-VNNI
# kernel, one thread, 2 x 1 / 1 x 13 / 1 x 13 with 14 accumulators allowed: 384 ch 13x13 3.74-3.76
# / 1.22-1.23 / 1.21-1.22, 256 ch 13x13 3.65-3.69 / 1.18-1.21 / 1.17-1.19; whole int8
# SqueezeNet 1.1 0.51-0.56 of the time.
ONE_BLOCK_YMM_ACCUMULATORS = 13
# AVX-VNNI rows whose tile would hold fewer accumulators than this are computed a few columns
# wider, to whole tiles of at least PADDED_ROW_ACCUMULATORS (`padded_row`; the epilogue keeps
# the real columns). Zen 5 run as an AVX-VNNI CPU, 3x3 convs + relu against ORT's AVX-VNNI
# kernel, one thread, 2 x 1 tiles / rows computed to 18 and 72 pixels (2 x 6): 192 ch 17x17
# 3.67-3.69 / 1.10, 128 ch 17x17 3.45-3.47 / 1.11, 64 ch 71x71 3.10 / 1.08.
PADDED_ROW_MIN_ACCUMULATORS = 4
PADDED_ROW_ACCUMULATORS = 10
PADDED_ROW_EXTRA = 5
# On CPUs whose AVX-VNNI tiles take no pairs of channel groups (`VectorShape.vnni_pairs`: Intel's
# cores), rows whose tile would hold fewer than UNPAIRED_ROW_MIN_ACCUMULATORS are computed wider
# too, by at most an eighth of the row (UNPAIRED_ROW_EXTRA_SHARE): 14 -> 15 (1 x 7 -> 2 x 5), 21
# -> 22 (1 x 7 -> 1 x 11); 7 stays. Intel Xeon (model 167) cores, alderlake build, one thread,
# 3x3 512 ch 14x14 + relu: 3.48 ms on 1 x 7 tiles, 2.83 on 2 x 5 (VGG-11's 14x14 convs).
UNPAIRED_ROW_MIN_ACCUMULATORS = 8
UNPAIRED_ROW_EXTRA_SHARE = 8
# The same for AVX2's vpmaddwd tiles (8-bit weights), whose budget is 8 accumulators: rows of
# 13 computed to 14 (1 x 7), of 17 to 18 (2 x 3), of 71 to 72. AVX2 build (mcpu="znver3") on
# an AMD Zen 5, one thread, 3x3 convs + relu alone, us, 2 x 1 tiles / padded to 6 or more
# accumulators / to 7 or more: 256 ch 13x13 1,795 / 1,003 / 1,005, 384 -> 256 ch 13x13 2,812
# / 1,550, 192 ch 17x17 1,839 / 967 / 1,078, 128 ch 17x17 606 / 434 / 489, 64 ch 71x71 2,257 /
# 1,888; 1x1 512 -> 1000 ch 13x13 1,561 / 951. Whole int8 models, alternated: SqueezeNet 1.1
# 0.89-0.92 of the time, AlexNet 0.79-0.82, Inception-v3 0.78, ResNet-18 0.99-1.02. Not for
# vpmaddubsw (7-bit weights), whose products add into the accumulator by one vpaddd, a short
# chain: 192 ch 17x17 790 us on 2 x 1 tiles, 825 on 2 x 3, 921 on 2 x 4; 384 -> 256 ch 13x13
# 1,400 / 1,290 (1 x 7).
PADDED_ROW_AVX2_ACCUMULATORS = 6
# The algorithms whose rows `padded_row` may widen, by lanes. With 16 lanes (28 accumulators)
# the rows of a prime width above 28 had 2 x 1 tiles too (Inception-v3's 149, 73 and 71): one
# AMD Zen 5 thread, convs + relu alone, us, 2 x 1 / padded: VNNI, 3x3 80 -> 192 ch 71x71
# 5,481 / 1,651, 32 -> 64 ch 149x149 3,138 / 1,224, 128 ch 29x29 983 / 290, 64 ch 31x31 282 /
# 95, 1x1 64 -> 80 ch 73x73 283 / 174 (whole int8 Inception-v3, alternated, 0.82-0.91 of the
# time); vpmaddwd (built for Skylake-SP) 10,053 / 4,562, 2,005 / 661, 401 / 315; vpmaddubsw
# 1.00-1.01.
PADDED_ROW_ALGORITHMS = {8: ("vnni", "pmaddwd"), 16: ("vnni", "pmaddwd")}
# Lanes with which the tile is written back through the register transpose (`transpose.py`)
# instead of gathering each channel's pixels from the spilled tile. One thread, AMD Zen 4, us,
# gathered / transposed: int8 64 -> 128 ch 112x112 4,680 / 4,626, 64 ch 56x56 608 / 602,
# 128 ch 28x28 538 / 535, 256 ch 14x14 and 512 ch 7x7 alike; whole models interleaved: int8
# VGG-11 0.983, bfloat16 VGG-11 0.986, ResNet-18 1.00. With 8 lanes (AVX2 build, same host)
# 0.99-1.03: gathered.
TRANSPOSED_WRITE_BACK_LANES = (16,)
# Lanes with which the requantize epilogue runs on the tile's channel vectors (per-channel
# scales and sums as whole vectors) and a copy then writes each channel's pixels
# (`epilogue_on_channel_vectors`), instead of running on each channel's pixels gathered from
# the tile. AVX2 build (mcpu="znver3"), AMD Zen 4, 1 thread, outputs identical, ms, gathered /
# on channels: 7-bit weights, 64 -> 128 ch 112x112 9.16 / 8.99, 64 ch 56x56 1.118 / 1.097,
# 512 ch 7x7 1.458 / 1.438, 1x1 stride-2 64 -> 128 ch 56x56 0.137 / 0.121, 256 ch 56x56 and
# 512 ch 14x14 alike; whole models alternated, ResNet-18 18.87 / 18.71 (8-bit weights 24.59 /
# 24.40), VGG-11 76.44 / 76.20.
CHANNEL_EPILOGUE_LANES = (8,)
# Lanes with which the int8 epilogue runs on the tile's channel vectors where it reads no
# residual (`reads_a_residual`), instead of through the register transpose. It then converts and
# requantizes whole vectors, where after the transpose it ran on each channel's row of the tile
# (11 or 14 pixels: partial vectors); a residual read on channel vectors gathers one value a
# plane apart for each lane. One AMD Zen 5 thread, int8 convs + relu alone, us, transposed /
# on channels: 1x1 16 -> 64 ch 55x55 45.7 / 35.8, 64 ch 56x56 66.6 / 62.3, 64 -> 256 ch 56x56
# 223 / 207, 512 -> 2048 ch 7x7 135 / 125, 3x3 16 -> 64 ch 55x55 93 / 84, 64 -> 128 ch 112x112
# 2,192 / 2,142, 128 ch 28x28 and 512 ch 7x7 alike; with a residual 1x1 64 -> 256 ch 56x56
# 265 / 339, 3x3 64 ch 56x56 292 / 310. Whole int8 models, alternated, 1 / 2 threads:
# SqueezeNet 1.1 0.96-0.97 (1), GoogLeNet 0.95 / 0.98-0.99, VGG-11 0.97-0.99 / 0.82-0.89,
# ResNet-50 0.89-1.00 / 0.97-0.99, ResNet-18 0.96-1.01 / 0.93-1.02. bfloat16 models, on the
# same tiles (`conv2d_bf16`), kept the transpose (ResNet-18 and VGG-11 1.00-1.01 at 1 thread).
UNFUSED_CHANNEL_EPILOGUE_LANES = (16,)
# Blocks of a tile whose row is one pixel (a dense layer at batch 1: a GEMV whose weights
# stream from memory once), the largest dividing the blocks within the accumulators: one
# broadcast feeds them all and the loop keeps that many weight streams in flight.
# VGG-11's 25088 -> 4096 and 4096 -> 4096 int8 layers at batch 1, 1 thread, AMD Zen 4, ms,
# 2 / 4 / 8 blocks: AVX2 build 4.36 / 3.62 / 3.55 and 0.48 / 0.30 / 0.28, VNNI 4.80 / 4.91 /
# 4.51 and 0.32 / 0.26 / 0.25 (ORT int8 with its AVX2 kernels: 3.91 and 0.71).
ONE_PIXEL_BLOCKS = (8, 4, 2, 1)
# On AMD cores (`VectorShape.vnni_pairs`), AVX-VNNI tiles of 8 accumulators (2 blocks x 4
# pixels, or x 2 rows x 2 pixels: rows of 56, 28 or 14 pixels, whose 12-accumulator tile does
# not divide them) take two input-channel groups a step, the second's products into a zeroed
# register added after (`paired_intrinsic`): each
# accumulator's chain of dependent instructions is then one vpdpbusd and a vpaddd per two
# products instead of two vpdpbusd, whose latency 8 chains do not hide: in a loop of registers
# only (one AMD Zen 5 core) 8 chains ran 7.4-7.6 vpdpbusd a ns, 12 chains or 8 paired ones
# 8.2-8.4. 3x3 convs + relu
# against ORT's AVX-VNNI kernel (`--as-avx-vnni`), one thread, single / paired: 64 ch 56x56
# 1.13 / 1.01, 128 ch 28x28 1.16 / 1.04, 64 -> 128 ch 112x112 1.21 / 1.07, 128 ch 56x56 1.15 /
# 1.05; on 14-wide rows 2 x 2 x 2 tiles against 1 x 7, whole int8 models alternated: VGG-11
# 0.96-0.98 (1 thread) and 0.98-1.00 (2), ResNet-18 0.95-0.99 and 0.95-0.97.
PAIRED_TILE = 8
# Bytes of an AVX-VNNI paired tile's weights per block of input channels: where all of the
# conv's exceed this, the row's accumulators wait in L1 while each block (its weights and input
# rows in L1) passes over the row's tiles (`tile`). 3x3 convs + relu against ORT's AVX-VNNI
# kernel, one thread, paired, unblocked / 8 / 12 / 16 / 24 KiB blocks: 512 ch 28x28 1.16 /
# 1.07 / 1.07 / 1.07 / 1.08, 256 ch 56x56 1.14 / 1.05 / 1.05 / 1.06 / 1.17. On 16 lanes
# (AVX-512 VNNI, 28 accumulators) it lost: whole int8 models 1.05-1.08; on AVX2's vpmaddubsw
# no change (1.00 +- 0.01).
PAIRED_K_BLOCK_BYTES = 12 * 1024
# Whether paired tiles of convs in input-channel blocks take 2 rows x 2 pixels before one row of
# 4 (`paired_tile_shape`): each block's input rows then serve two output rows. 3x3 convs +
# relu against ORT's AVX-VNNI kernel, one thread, 1 x 4 / 2 x 2: 128 -> 256 ch 56x56 1.11-1.14
# / 1.05-1.10, 256 ch 56x56 1.05-1.11 / 1.04-1.08, 512 ch 28x28 1.03-1.06 / 1.03-1.07; on 64
# ch 56x56 (unblocked) 2 x 2 lost, 0.97 / 1.05. Whole int8 models alternated: VGG-11 0.965-0.980
# (one thread), 0.979-1.022 (two), ResNet-18 0.986-0.993 and 0.974-0.980.
TWO_ROW_BLOCKED = True
# Bytes of an unpaired AVX-VNNI tile's weights per block of input channels (Intel's cores: see
# `VNNI_PAIR_CPUS`), as PAIRED_K_BLOCK_BYTES is for paired ones. Intel Xeon (model 167) cores,
# alderlake builds, whole int8 models alternated, unblocked = 1, one / two threads: 8 KiB VGG-11
# 0.965 / 0.963, ResNet-18 0.990 / 1.004; 6 KiB 0.964 / 0.965 and 0.998 / 0.981.
UNPAIRED_K_BLOCK_BYTES = 8 * 1024


def paired_tile_shape(blocks: int, height: int, width: int, groups: int,
                      unpaired: tuple[int, int], blocked: bool = False
                      ) -> tuple[int, int, int] | None:
    """(blocks, rows, pixels) of an AVX-VNNI tile that takes two input-channel groups a step,
    where the 12-accumulator tile (`unpaired`, from `tile_shape`) holds at most PAIRED_TILE
    accumulators: 2 blocks x 4 pixels, else x 2 rows x 2 pixels, which `blocked` convs (their
    input channels in blocks, `input_channel_block`) take first (`TWO_ROW_BLOCKED`); None where
    the blocks or the groups are odd or neither divides the plane."""
    if unpaired[0] * unpaired[1] > PAIRED_TILE or blocks % 2 or groups % 2:
        return None
    for rows in ((2, 1) if blocked and TWO_ROW_BLOCKED else (1, 2)):
        pixels = PAIRED_TILE // 2 // rows
        if width % pixels == 0 and height % rows == 0:
            return 2, rows, pixels
    return None


def input_channel_block(groups: int, bytes_per_group: int,
                        limit: int | None = None) -> int | None:
    """Input-channel groups per block of an AVX-VNNI tile (an even divisor of `groups`, which
    a paired tile takes two at a time) whose weights fit `limit` (default
    PAIRED_K_BLOCK_BYTES); None where all the groups' fit or no such divisor does."""
    limit = limit or PAIRED_K_BLOCK_BYTES
    if groups * bytes_per_group <= limit:
        return None
    fitting = [d for d in range(2, groups, 2)
               if groups % d == 0 and d * bytes_per_group <= limit]
    return max(fitting) if fitting else None


def padded_row(blocks: int, width: int, vec: VectorShape, algorithm: str = "vnni") -> int:
    """The width an int8 conv's rows are computed to (`Conv2d.padded_width`): the real
    `width`, or, where its tile would hold fewer than PADDED_ROW_MIN_ACCUMULATORS accumulators
    (rows of a prime width above 13 on AVX-VNNI, from 13 on AVX2's vpmaddwd, above 28 with 16
    lanes: 2 blocks x 1 pixel), the narrowest width up to PADDED_ROW_EXTRA wider whose tile holds
    PADDED_ROW_ACCUMULATORS (vpmaddwd: PADDED_ROW_AVX2_ACCUMULATORS), else the one holding the
    most; unpaired AVX-VNNI tiles from fewer than UNPAIRED_ROW_MIN_ACCUMULATORS, by at most an
    UNPAIRED_ROW_EXTRA_SHARE-th of the row where they hold 4 or more."""
    vnni = algorithm == "vnni"

    def held(w: int) -> int:
        pair, pixels = tile_shape(blocks, w, vec.lanes, vec) if vec.lanes != 8 else \
            tile_shape(blocks, w, 8, vec, YMM_TILES[algorithm][0],
                       ONE_BLOCK_YMM_ACCUMULATORS if vnni else None)
        return pair * pixels
    unpaired = vnni and vec.lanes == 8 and not vec.vnni_pairs
    least = UNPAIRED_ROW_MIN_ACCUMULATORS if unpaired else PADDED_ROW_MIN_ACCUMULATORS
    if width <= 1:
        return width
    own = held(width)
    if own >= least:
        return width
    extra = PADDED_ROW_EXTRA if own < PADDED_ROW_MIN_ACCUMULATORS else \
        min(PADDED_ROW_EXTRA, width // UNPAIRED_ROW_EXTRA_SHARE)
    if extra == 0:
        return width
    enough = PADDED_ROW_ACCUMULATORS if vnni else PADDED_ROW_AVX2_ACCUMULATORS
    wider = range(width + 1, width + extra + 1)
    best = next((w for w in wider if held(w) >= enough),
                max(wider, key=lambda w: (held(w), -w)))
    return best if held(best) > own else width


def tile_shape(blocks: int, width: int, lanes: int, vec: VectorShape,
               accumulators: int | None = None,
               one_block_accumulators: int | None = None) -> tuple[int, int]:
    """(blocks of `lanes` output channels, pixels of a row) of the register tile: the most of
    `accumulators` vector registers (default: the target's; `one_block_accumulators` for a tile
    of one block, which holds one weight register fewer) in use, pixels dividing the row; two
    blocks share each pixel's broadcast where they pair up and fill as many; a row of one pixel
    takes up to 8 blocks (`ONE_PIXEL_BLOCKS`)."""
    registers = max(1, lanes // vec.lanes)
    accumulators = accumulators or vec.accumulators
    if width == 1:
        return max(b for b in ONE_PIXEL_BLOCKS
                   if blocks % b == 0 and b * registers <= max(accumulators, registers)), 1
    budget = {2: accumulators, 1: one_block_accumulators or accumulators}
    shapes = [(pair, row_tile(width, max(1, budget[pair] // (pair * registers))))
              for pair in ((2, 1) if blocks % 2 == 0 else (1,))]
    return max(shapes, key=lambda shape: shape[0] * shape[1])


def schedule(sch, vec: VectorShape) -> bool | None:
    """Schedule a conv2d_dot PrimFunc (True), or None when `sch` holds none."""
    conv, dot = find_conv(sch)
    if conv is None:
        return None
    register_intrinsic(dot)
    inline_elementwise(sch, keep=[conv, *sch.get_producers(conv), *interleave.copy_blocks(sch)])
    conv, _ = find_conv(sch)
    writer = accumulator_writer(sch, conv)
    if writer is None:
        return None
    accumulators, fuse_taps = YMM_TILES[dot.algorithm] if vec.lanes == 8 else (None, True)
    loop, paired = tile(sch, conv, writer, dot.lanes, vec, accumulators, fuse_taps,
                        avx_vnni=dot.algorithm == "vnni" and vec.lanes == 8,
                        unfused_on_channels=vec.lanes in UNFUSED_CHANNEL_EPILOGUE_LANES)
    if paired:
        register_paired_intrinsic(dot)
    sch.tensorize(loop, paired_intrinsic(dot) if paired else dot.intrinsic)
    return True


def reads_a_residual(sch, writer) -> bool:
    """Whether the epilogue `writer` reads an NCHW tensor besides the tile (a residual)."""
    return any(len(r.source.shape) == 4 and r.source.scope() != "local"
               for r in sch.get(writer).reads)


def tile(sch, conv, writer, lanes: int, vec: VectorShape, accumulators: int | None = None,
         fuse_taps: bool = True, avx_vnni: bool = False, unfused_on_channels: bool = False):
    """The register tile of a dot-product conv block (n, block, oh, ow, lane; rg, ry, rx, rc)
    with `lanes` accumulator lanes per block (`tile_shape`), its `writer` under it, the input
    copy and any other block outside it scheduled (this rule's and `conv2d_bf16`'s); returns
    the loop the caller tensorizes with its instruction and whether that loop covers two
    input-channel groups (`avx_vnni`: an AVX-VNNI tile, its one-block budget
    ONE_BLOCK_YMM_ACCUMULATORS; on CPUs without `VectorShape.vnni_pairs` its input channels in
    blocks of UNPAIRED_K_BLOCK_BYTES (`input_channel_block`), on CPUs with them
    `paired_tile_shape`; then the pair's loop is returned, else the lane loop). `fuse_taps`:
    the kernel's rows and columns are one loop (`YMM_TILES`); `unfused_on_channels`: an
    epilogue without a residual runs on the tile's channel vectors
    (`UNFUSED_CHANNEL_EPILOGUE_LANES`)."""
    n, ob, oh, ow, lane, rg, ry, rx, rc = sch.get_loops(conv)
    blocks, width, groups = (int(sch.get(loop).extent) for loop in (ob, ow, rg))
    pair, pixels = tile_shape(blocks, width, lanes, vec, accumulators,
                              ONE_BLOCK_YMM_ACCUMULATORS if avx_vnni else None)
    taps = int(sch.get(ry).extent) * int(sch.get(rx).extent)
    # a paired tile's weights: 2 blocks of `lanes` x 4 channels a tap
    pair_groups = avx_vnni and vec.vnni_pairs
    blocked = pair_groups and input_channel_block(groups, 2 * lanes * 4 * taps)
    paired = pair_groups and paired_tile_shape(blocks, int(sch.get(oh).extent), width, groups,
                                               (pair, pixels), bool(blocked))
    k_block = blocked if paired else None
    if avx_vnni and not pair_groups:
        k_block = input_channel_block(groups, pair * lanes * 4 * taps, UNPAIRED_K_BLOCK_BYTES)
    rows = 1
    if paired:
        pair, rows, pixels = paired
    ob_outer, ob_inner = sch.split(ob, [None, pair])
    ow_outer, ow_inner = sch.split(ow, [None, pixels])
    tile_rows = []
    if rows > 1:
        oh, row = sch.split(oh, [None, rows])
        tile_rows = [row]
    if paired:
        rg, group_pair = sch.split(rg, [None, 2])
    in_tile = [*tile_rows, ow_inner, ob_inner, *([group_pair] if paired else []), lane, rc]
    if k_block:
        rg, rg_inner = sch.split(rg, [None, k_block // 2 if paired else k_block])
        sch.reorder(n, ob_outer, oh, rg, ow_outer, rg_inner, ry, rx, *in_tile)
    else:
        sch.reorder(n, ob_outer, oh, ow_outer, rg, ry, rx, *in_tile)
    # One loop over the taps: LLVM fully unrolled a 3-tap loop, saw that neighbouring pixels'
    # taps load the same input, kept those broadcasts live across taps and spilled the
    # accumulators (1.25 -> 0.97 ms on 64 ch 56x56); 9 taps stay a loop (unrolled by TVM, the
    # paired AVX-VNNI tiles measured 1.15-1.17x the time of whole models).
    if fuse_taps:
        sch.fuse(ry, rx)
    on_channels = vec.lanes in CHANNEL_EPILOGUE_LANES or \
        unfused_on_channels and not reads_a_residual(sch, writer)
    # with input-channel blocks the writer follows the last block, under the row's loop
    finish_tile(sch, conv, None if k_block else ow_outer, [n, ob_outer, oh], None,
                [*tile_rows, ow_inner, ob_inner], rg, writer,
                transpose_lanes=vec.lanes if vec.lanes in TRANSPOSED_WRITE_BACK_LANES
                and not on_channels else 0,
                epilogue_lanes=vec.lanes if on_channels else 0, every_epilogue=True)
    copies = interleave.schedule_copy(sch, lanes)    # the input copy, ...
    spatial_rest(sch, conv, vec, skip=copies)      # ... any other; before tensorize
    return (group_pair, True) if paired else (lane, False)
