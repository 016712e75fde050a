"""int8 convolutions on x86 dot-product instructions: uint8 activations times int8 weights,
accumulated exactly in int32, with the requantize epilogue computed from the register tile.

`select_conv_algorithm` records on a `qlinear_conv2d` the instruction the target CPU has
(`DOT_PRODUCTS`: its name is the conv's `algorithm`, its lanes the `weight_block`) where the
weights are constant and symmetric; `QLinearConv2d.lower_tvm` builds `conv2d_dot` with the weight
packed by `pack_weight`; the rule below schedules it and tensorizes the instruction.

- "vnni" (AVX-512 VNNI, `vpdpbusd`): 16 int32 lanes, each += 4 u8 x s8 products.
- "pmaddwd" (AVX2 or AVX-512 without VNNI, `vpmaddwd`): 8 or 16 int32 lanes, each += 2 int16
  products; the operands are widened to int16 first (input in its padded copy, weights when
  packed), which keeps every product and sum exact. (`vpmaddubsw` multiplies u8 x s8 directly
  but saturates its int16 pair sums, 255 * 127 * 2 > 32767: not exact for full-range weights.)

Layouts: the weight is [ceil(O / lanes), ceil(I / group), KH, KW, lanes, group], so one
instruction's weights are one aligned vector load; the input is copied, padded with its zero
point, to [N, ceil(I / group), H', W', group], so one pixel's `group` input channels are one
broadcast int32. Channels beyond O and I are zero weights. The tile is the fp32 rule's: up to
2 x lanes output channels by a row segment of pixels, the reduction outside it. LLVM emits
neither instruction from plain loops, so the inner step is a tensor intrinsic (TVM's own
`dot_16x4_vnni` no longer compiles with LLVM 22, whose `vpdpbusd.512` takes <64 x i8>
operands)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common import VectorShape, blocks_of, inline_elementwise, iter_kinds
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

    @property
    def intrinsic(self) -> str:
        return f"graphopt_{self.algorithm}_{self.lanes}x{self.group}_local"


DOT_PRODUCTS = {
    ("vnni", 16): DotProduct("vnni", 16, 4, ("uint8", "int8"), "llvm.x86.avx512.vpdpbusd.512"),
    ("pmaddwd", 16): DotProduct("pmaddwd", 16, 2, ("int16", "int16"),
                                "llvm.x86.avx512.pmaddw.d.512"),
    ("pmaddwd", 8): DotProduct("pmaddwd", 8, 2, ("int16", "int16"), "llvm.x86.avx2.pmadd.wd"),
}
ALGORITHMS = tuple(sorted({key[0] for key in DOT_PRODUCTS}))
_registered: set[str] = set()


def dot_product_for(vec: VectorShape) -> DotProduct | None:
    """The instruction a CPU of vector shape `vec` computes int8 convolutions with."""
    if vec.vnni:
        return DOT_PRODUCTS["vnni", 16]
    return DOT_PRODUCTS.get(("pmaddwd", vec.lanes))


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
    caller)."""
    from tvm import te, tirx
    n, channels, height, width = (int(d) for d in x.shape)
    blocks, groups, k_h, k_w = (int(d) for d in packed.shape[:4])
    (s_h, s_w), (d_h, d_w) = conv.stride, conv.dilation
    top, left, bottom, right = conv.padding
    out_h = (height + top + bottom - d_h * (k_h - 1) - 1) // s_h + 1
    out_w = (width + left + right - d_w * (k_w - 1) - 1) // s_w + 1
    fill = x_zero_point[(0,) * len(x_zero_point.shape)]
    dtype, group = dot.dtypes[0], dot.group

    def pad_pack(b, g, i, j, c):
        inside = tirx.all(i >= top, i < top + height, j >= left, j < left + width,
                          g * group + c < channels)
        return tirx.if_then_else(inside, x[b, g * group + c, i - top, j - left],
                                 fill).astype(dtype)

    grouped = te.compute((n, groups, height + top + bottom, width + left + right, group),
                         pad_pack, name="pad_pack")
    rg, ry = te.reduce_axis((0, groups), "rg"), te.reduce_axis((0, k_h), "ry")
    rx, rc = te.reduce_axis((0, k_w), "rx"), te.reduce_axis((0, group), "rc")
    return te.compute(
        (n, blocks, out_h, out_w, dot.lanes),
        lambda b, ob, i, j, o: te.sum(
            grouped[b, rg, i * s_h + ry * d_h, j * s_w + rx * d_w, rc].astype("int32")
            * packed[ob, rg, ry, rx, o, rc].astype("int32"), axis=[rg, ry, rx, rc]),
        name="conv2d_int8")


def register_intrinsic(dot: DotProduct) -> None:
    """Register `dot.intrinsic` (once per process): C[lanes] (int32, registers) += A[group]
    (one broadcast int32 of inputs) . B[lanes, group] by one instruction."""
    if dot.intrinsic in _registered:
        return
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T
    lanes, group = dot.lanes, dot.group
    a_dtype, b_dtype = dot.dtypes
    width = lanes * 32 // np.dtype(b_dtype).itemsize // 8   # operand elements per register
    lanes_i32, operand = f"int32x{lanes}", f"{b_dtype}x{width}"

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

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((group,), a_dtype, offset_factor=1),
             B: T.Buffer((lanes, group), b_dtype, offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            pixel = T.reinterpret(A.vload([0], f"{a_dtype}x{group}"), dtype="int32")
            pixels = T.reinterpret(T.broadcast(pixel, lanes), dtype=operand)
            if accumulates:
                C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(dot.llvm), C.vload([0], dtype=lanes_i32), pixels,
                    B.vload([0, 0], dtype=operand), dtype=lanes_i32)
            else:
                C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=lanes_i32) + \
                    T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(dot.llvm), pixels,
                                            B.vload([0, 0], dtype=operand), dtype=lanes_i32)

    TensorIntrin.register(dot.intrinsic, desc, impl, override=True)
    _registered.add(dot.intrinsic)


def find_conv(sch):
    """The conv2d_dot block: 5 spatial (n, block, oh, ow, lane) and 4 reduction iterators,
    accumulating int32, and its DotProduct (from the packed weight's lanes, group and dtype)."""
    found = [b for b in blocks_of(sch) if iter_kinds(sch.get(b)) == "SSSSSRRRR"
             and str(sch.get(b).writes[0].source.dtype) == "int32"]
    if len(found) != 1:
        return None, None
    block = sch.get(found[0])
    shapes = {(int(r.source.shape[4]), int(r.source.shape[5]), str(r.source.dtype))
              for r in block.reads if len(r.source.shape) == 6}
    dots = [d for d in DOT_PRODUCTS.values() if (d.lanes, d.group, d.dtypes[1]) in shapes]
    return (found[0], dots[0]) if len(dots) == 1 else (None, None)


def row_tile(width: int, limit: int) -> int:
    """Pixels per tile: the largest divisor of the row width within `limit` (the intrinsic
    needs whole tiles: no predicated last tile)."""
    return max(d for d in range(1, min(width, limit) + 1) if width % d == 0)


def schedule(sch, vec: VectorShape) -> bool | None:
    """Schedule a conv2d_dot PrimFunc (True), or None when `sch` holds none."""
    conv, dot = find_conv(sch)
    if conv is None:
        return None
    register_intrinsic(dot)
    inline_elementwise(sch, keep=[conv, *sch.get_producers(conv)])
    conv, _ = find_conv(sch)
    writer = accumulator_writer(sch, conv)
    if writer is None:
        return None
    n, ob, oh, ow, lane, rg, ry, rx, rc = sch.get_loops(conv)
    registers_per_block = max(1, dot.lanes // vec.lanes)
    # Two blocks of output channels share each pixel's broadcast.
    pair = 2 if int(sch.get(ob).extent) % 2 == 0 else 1
    width = row_tile(int(sch.get(ow).extent),
                     max(1, vec.accumulators // (pair * registers_per_block)))
    ob_outer, ob_inner = sch.split(ob, [None, pair])
    ow_outer, ow_inner = sch.split(ow, [None, width])
    sch.reorder(n, ob_outer, oh, ow_outer, rg, ry, rx, ow_inner, ob_inner, lane, rc)
    # One loop over the taps: LLVM fully unrolled a 3-tap loop, saw that neighbouring pixels'
    # taps load the same input, kept those broadcasts live across taps and spilled the
    # accumulators (1.25 -> 0.97 ms on 64 ch 56x56); 9 taps stay a loop.
    sch.fuse(ry, rx)
    finish_tile(sch, conv, ow_outer, [n, ob_outer, oh], None, [ow_inner, ob_inner], rg, writer)
    spatial_rest(sch, conv, vec)     # the input copy; before tensorize replaces the block
    sch.tensorize(lane, dot.intrinsic)
    return True


# ---- AMX: 16 x 64 byte tiles, tdpbusd ------------------------------------------------------------
# Sapphire Rapids and later: eight tile registers of up to 16 rows x 64 bytes; `tdpbusd` adds the
# u8 x s8 products of a 16 x 64 A tile and a 16 x 64 B tile (4 input channels per int32 lane, as
# VNNI) into a 16 x 16 int32 C tile: 16,384 multiply-adds per instruction. The kernel keeps four C
# tiles (two output rows x two blocks of 16 channels) for a whole reduction, loading two A tiles
# (P pixels of each row x 64 input channels) and two B tiles (64 input x 16 output channels) per
# step of 64 input channels and one tap. It is written by hand (no TE schedule tensorizes a
# whole reduction into tile registers) and is complete as lowered: the schedule rules skip it.
AMX = "amx"
AMX_CHANNELS = 64    # input channels per A tile row (64 bytes)
AMX_BLOCK = 32       # output channels per kernel step: two C tiles of 16


def amx_pixels(out_width: int) -> int:
    """Pixels per A tile: the largest divisor of the output row within 16 rows."""
    return row_tile(out_width, 16)


def amx_applies(in_channels: int, out_channels: int, out_height: int, out_width: int,
                groups: int) -> bool:
    """Whether the AMX kernel computes this convolution: whole tiles of input (64) and output
    (32) channels, pairs of output rows, at least 4 pixels per tile."""
    return (groups == 1 and in_channels % AMX_CHANNELS == 0 and out_channels % AMX_BLOCK == 0
            and out_height % 2 == 0 and amx_pixels(out_width) >= 4)


def pack_amx_weight(weight: np.ndarray) -> np.ndarray:
    """OIHW int8 -> [O / 16, I / 64, KH, KW, 16, 16, 4]: per block, tap and 64 input channels,
    one B tile (16 rows of 4 input channels x 16 output channels)."""
    o, i, kh, kw = weight.shape
    return weight.reshape(o // 16, 16, i // AMX_CHANNELS, 16, 4, kh, kw) \
        .transpose(0, 2, 5, 6, 3, 1, 4).copy()


def amx_pack_input(x, x_zero_point, conv):
    """TE: x padded with its zero point to [N, I / 64, H', W', 64] uint8 (A tile rows)."""
    from tvm import te, tirx
    n, channels, height, width = (int(d) for d in x.shape)
    top, left, bottom, right = conv.padding
    fill = x_zero_point[(0,) * len(x_zero_point.shape)]

    def value(b, g, i, j, c):
        inside = tirx.all(i >= top, i < top + height, j >= left, j < left + width)
        return tirx.if_then_else(inside, x[b, g * AMX_CHANNELS + c, i - top, j - left], fill)

    return te.compute((n, channels // AMX_CHANNELS, height + top + bottom, width + left + right,
                       AMX_CHANNELS), value, name="amx_pack")


def amx_conv2d(batch: int, groups: int, padded: tuple[int, int], blocks: int,
               kernel: tuple[int, int], out_size: tuple[int, int], conv):
    """The AMX kernel as a PrimFunc (xp [N, I/64, H', W', 64] uint8, wp as `pack_amx_weight`,
    acc [N, O/16, OH, OW, 16] int32): parallel over images, output-channel pairs and row pairs;
    each task configures the tiles (the configuration is per thread), zeroes four C tiles, runs
    the whole reduction and stores them."""
    from tvm.script import tirx as T
    N, G, OB = batch, groups, blocks
    HP, WP = padded
    KH, KW = kernel
    OH, OW = out_size
    (SH, SW), (DH, DW) = conv.stride, conv.dilation
    P = amx_pixels(OW)
    ROW = SW * AMX_CHANNELS   # bytes between an A tile's rows (neighbouring output pixels)

    def call(name, *args):
        return T.call_llvm_intrin("void", f"llvm.x86.{name}", *args)

    @T.prim_func(s_tir=True)
    def amx(xp: T.Buffer((N, G, HP, WP, 64), "uint8"),
            wp: T.Buffer((OB, G, KH, KW, 16, 16, 4), "int8"),
            acc: T.Buffer((N, OB, OH, OW, 16), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True,
                     "graphopt.schedule": NAME + "_amx"})
        for task in T.parallel(N * (OB // 2) * (OH // 2)):
            n = task // ((OB // 2) * (OH // 2))
            ob = task // (OH // 2) % (OB // 2) * 2
            oh = task % (OH // 2) * 2
            config = T.alloc_buffer((64,), "uint8", scope="local", align=64)
            for i in range(64):
                config[i] = T.uint8(0)
            config[0] = T.uint8(1)                     # palette 1
            for t in range(8):                         # tiles 0-3 C, 4-5 A: P rows; 6-7 B: 16
                config[16 + 2 * t] = T.uint8(64)       # bytes per row
                config[48 + t] = T.Select(t < 6, T.uint8(P), T.uint8(16))
            T.evaluate(call("ldtilecfg", T.address_of(config[0])))
            for ow in range(OW // P):
                for t in T.unroll(4):      # unrolled: tile numbers are immediates
                    T.evaluate(call("tilezero", T.Cast("int8", t)))
                for g, ky, kx in T.grid(G, KH, KW):
                    for r in T.unroll(2):
                        T.evaluate(call("tileloadd64", T.Cast("int8", 4 + r), T.address_of(
                            xp[n, g, (oh + r) * SH + ky * DH, ow * P * SW + kx * DW, 0]),
                            T.int64(ROW)))
                        T.evaluate(call("tileloadd64", T.Cast("int8", 6 + r), T.address_of(
                            wp[ob + r, g, ky, kx, 0, 0, 0]), T.int64(64)))
                    T.evaluate(call("tdpbusd", T.int8(0), T.int8(4), T.int8(6)))
                    T.evaluate(call("tdpbusd", T.int8(1), T.int8(4), T.int8(7)))
                    T.evaluate(call("tdpbusd", T.int8(2), T.int8(5), T.int8(6)))
                    T.evaluate(call("tdpbusd", T.int8(3), T.int8(5), T.int8(7)))
                for t in T.unroll(4):
                    T.evaluate(call("tilestored64", T.Cast("int8", t), T.address_of(
                        acc[n, ob + t % 2, oh + t // 2, ow * P, 0]), T.int64(64)))
            T.evaluate(call("tilerelease"))

    return amx
