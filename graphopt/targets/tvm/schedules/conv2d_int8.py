"""int8 convolution on AVX-512 VNNI: uint8 activations times int8 weights, accumulated in int32 by
`vpdpbusd` (16 output channels x 4 input channels per instruction), with the requantize epilogue
computed from the register tile. `select_conv_algorithm` records `algorithm="vnni"` on a
`qlinear_conv2d` where the target CPU has VNNI (and the weights are constant and symmetric);
`QLinearConv2d.lower_tvm` then builds `conv2d_u8s8` with the weight packed by `pack_weight`, and
the rule below schedules it.

Layouts: the weight is [ceil(O / 16), ceil(I / 4), KH, KW, 16, 4] int8, so one
instruction's 64 weight bytes are one aligned load; the input is copied, padded with its zero
point, to [N, ceil(I / 4), H', W', 4] uint8, so one pixel's 4 input channels are one broadcast
int32. Channels beyond O and I are zero weights. The tile is the fp32 rule's: up to 2 x 16
output channels by a row segment of pixels, 28 zmm accumulators, the reduction outside it.
LLVM does not emit vpdpbusd from plain loops, so the inner step is a tensor intrinsic: TVM's own
`dot_16x4_vnni` no longer compiles with LLVM 22 (`vpdpbusd.512` takes <64 x i8> operands), so
graphopt registers a corrected one accumulating into a register (`local`) tile."""
from __future__ import annotations

import numpy as np

from .common import VectorShape, blocks_of, inline_elementwise, iter_kinds
from .tiled import accumulator_writer, finish_tile, spatial_rest

NAME = "conv2d_int8_vnni"
LANES = 16      # int32 accumulators per zmm: output channels per instruction
GROUP = 4       # input channels summed per accumulator lane and instruction
INTRINSIC = "graphopt_dot_16x4_vnni_local"
_registered = False


def pack_weight(weight: np.ndarray) -> np.ndarray:
    """OIHW int8 -> [ceil(O / 16), ceil(I / 4), KH, KW, 16, 4], zero-padded (the output
    channels beyond O are computed and never read)."""
    o, i, kh, kw = weight.shape
    blocks, groups = -(-o // LANES), -(-i // GROUP)
    padded = np.zeros((blocks * LANES, groups * GROUP, kh, kw), np.int8)
    padded[:o, :i] = weight
    return padded.reshape(blocks, LANES, groups, GROUP, kh, kw) \
        .transpose(0, 2, 4, 5, 1, 3).copy()


def conv2d_u8s8(x, packed, x_zero_point, conv):
    """TE: sum over each window of x (padded with its zero point) times the packed weight, int32,
    laid out [N, O / 16, OH, OW, 16] (the zero points are corrected by the caller)."""
    from tvm import te, tirx
    n, channels, height, width = (int(d) for d in x.shape)
    blocks, groups, k_h, k_w = (int(d) for d in packed.shape[:4])
    (s_h, s_w), (d_h, d_w) = conv.stride, conv.dilation
    top, left, bottom, right = conv.padding
    out_h = (height + top + bottom - d_h * (k_h - 1) - 1) // s_h + 1
    out_w = (width + left + right - d_w * (k_w - 1) - 1) // s_w + 1
    fill = x_zero_point[(0,) * len(x_zero_point.shape)]

    def pad_pack(b, g, i, j, c):
        inside = tirx.all(i >= top, i < top + height, j >= left, j < left + width,
                          g * GROUP + c < channels)
        return tirx.if_then_else(inside, x[b, g * GROUP + c, i - top, j - left], fill)

    grouped = te.compute((n, groups, height + top + bottom, width + left + right, GROUP),
                         pad_pack, name="pad_pack")
    rg, ry = te.reduce_axis((0, groups), "rg"), te.reduce_axis((0, k_h), "ry")
    rx, rc = te.reduce_axis((0, k_w), "rx"), te.reduce_axis((0, GROUP), "rc")
    return te.compute(
        (n, blocks, out_h, out_w, LANES),
        lambda b, ob, i, j, o: te.sum(
            grouped[b, rg, i * s_h + ry * d_h, j * s_w + rx * d_w, rc].astype("int32")
            * packed[ob, rg, ry, rx, o, rc].astype("int32"), axis=[rg, ry, rx, rc]),
        name="conv2d_u8s8")


def register_intrinsic() -> None:
    """Register INTRINSIC (once per process): C[16] (int32, registers) += A[4] (uint8, one
    broadcast) . B[16, 4] (int8) by one vpdpbusd."""
    global _registered
    if _registered:
        return
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), "uint8", offset_factor=1),
             B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1),
             B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            broadcast = T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16)
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"), T.reinterpret(broadcast, dtype="int8x64"),
                B.vload([0, 0], dtype="int8x64"), dtype="int32x16")

    TensorIntrin.register(INTRINSIC, desc, impl, override=True)
    _registered = True


def find_conv(sch):
    """The conv2d_u8s8 block: 5 spatial (n, block, oh, ow, lane) and 4 reduction iterators,
    accumulating int32."""
    found = [b for b in blocks_of(sch) if iter_kinds(sch.get(b)) == "SSSSSRRRR"
             and str(sch.get(b).writes[0].source.dtype) == "int32"]
    return found[0] if len(found) == 1 else None


def row_tile(width: int, limit: int) -> int:
    """Pixels per tile: the largest divisor of the row width within `limit` (the intrinsic
    needs whole tiles: no predicated last tile)."""
    return max(d for d in range(1, min(width, limit) + 1) if width % d == 0)


def schedule(sch, vec: VectorShape) -> bool | None:
    """Schedule a conv2d_u8s8 PrimFunc (True), or None when `sch` holds none."""
    conv = find_conv(sch)
    if conv is None or not vec.vnni:
        return None
    register_intrinsic()
    inline_elementwise(sch, keep=[conv, *sch.get_producers(conv)])
    conv = find_conv(sch)
    writer = accumulator_writer(sch, conv)
    if writer is None:
        return None
    n, ob, oh, ow, lane, rg, ry, rx, rc = sch.get_loops(conv)
    blocks = int(sch.get(ob).extent)
    pair = 2 if blocks % 2 == 0 else 1
    width = row_tile(int(sch.get(ow).extent), vec.accumulators // pair)
    ob_outer, ob_inner = sch.split(ob, [None, pair])
    ow_outer, ow_inner = sch.split(ow, [None, width])
    sch.reorder(n, ob_outer, oh, ow_outer, rg, ry, rx, ow_inner, ob_inner, lane, rc)
    finish_tile(sch, conv, ow_outer, [n, ob_outer, oh], None, [ow_inner, ob_inner], rg, writer)
    spatial_rest(sch, conv, vec)     # the input copy; before tensorize replaces the block
    sch.tensorize(lane, INTRINSIC)
    return True
