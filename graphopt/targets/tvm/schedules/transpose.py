"""Register transposes for the register-tiled conv rule's write-back and the AMX convs' epilogue
(`tile_epilogue.py`), and the shuffled copy-out of a tile of channel vectors (`channel_rows`).

The conv2d rule accumulates a tile of `pixels` output pixels x `lanes` output channels with the
channels as the vector lanes; its NCHW output wants the pixels contiguous. Left to LLVM, the
epilogue gathers each output vector one element at a time from the spilled tile (a
`vinsertps` per element: a fifth of the 7x7 stem's time on AVX-512). The intrinsic here
transposes a pixels x lanes block in registers instead: log2(lanes) rounds of two-source
shuffles (each round swaps one bit of the row index with the same bit of the lane index),
lanes * log2(lanes) shuffles per block, after which each channel's pixels are one vector."""
from __future__ import annotations

from .common import accumulator_read, registers_with_tvm

_registered: set[str] = set()

# The write-back's copy of a tile narrower than a vector (14 pixels on 16 lanes) keeps each
# channel's row `lanes` wide and stores it whole. Stored as 14-lane vectors, LLVM split the
# network into 128-bit pieces spilled through the stack: one thread, AMD Zen 4, whole models
# interleaved, padded / 14-lane rows: float32 ResNet-18 0.976 (its 7x7 stem), Inception-v3
# 0.998; the int8 and bfloat16 write-backs measured no faster than gathering without it.
PADDED_ROWS = True


def intrinsic_name(pixels: int, lanes: int, dtype: str = "float32", source: str = "local",
                   wide: bool = False) -> str:
    suffix = "" if (dtype, source) == ("float32", "local") else f"_{dtype}_{source}"
    return f"graphopt_transpose_{pixels}x{lanes}{suffix}{'_wide' if wide else ''}"


def _bit_swap_masks(lanes: int, bit: int) -> tuple[list[int], list[int]]:
    """Shuffle masks over (a ++ b) that swap bit `bit` of the row index with that bit of the
    lane index, for the row pair (a, b = a + 2**bit): new_a, new_b."""
    step = 1 << bit
    low = [c if not c & step else lanes + c - step for c in range(lanes)]
    high = [c + step if not c & step else lanes + c for c in range(lanes)]
    return low, high


def _shuffle(a, b, mask):
    from tvm import tirx
    return tirx.Shuffle([a, b], [tirx.IntImm("int32", i) for i in mask])


def transposed(rows: list) -> list:
    """TIR: the columns of the square matrix whose rows are the vectors `rows`, as vectors.
    16 lanes: AVX-512's classic network (unpack pairs of rows, pairs of pairs, then two rounds
    of 128-bit lane shuffles), 64 two-source shuffles of forms LLVM emits as one instruction
    each; the bit-swap rounds below, composed freely by LLVM's shuffle combiner, spilled every
    row through the stack (AMX epilogue, 64 ch 56x56, one thread: 76 us against the network's
    58; whole fp32 models, interleaved: ResNet-18 0.96-0.99x, Inception-v3 0.98-1.00x,
    GoogLeNet 0.95-1.02x, SqueezeNet 0.99x). Other
    widths: log2(lanes) rounds, each swapping one bit of the row index with the same bit of
    the lane index."""
    lanes = len(rows)
    if lanes == 16:
        within = [(lane * 4, lane * 4 + 2) for lane in range(4)]   # each 128-bit lane's base
        unpack_ps = [[base + offset + k // 2 + (16 if k % 2 else 0) for base, _ in within
                      for k in range(4)] for offset in (0, 2)]
        unpack_pd = [[base + offset + k % 2 + (16 if k >= 2 else 0) for base, _ in within
                      for k in range(4)] for offset in (0, 2)]

        def lanes_of(selector):   # _mm512_shuffle_f32x4: 128-bit lanes of a, a, b, b
            return [(0 if lane < 2 else 16) + ((selector >> (2 * lane)) & 3) * 4 + k
                    for lane in range(4) for k in range(4)]

        even, odd = lanes_of(0x88), lanes_of(0xDD)
        t = [_shuffle(rows[r - r % 2], rows[r - r % 2 + 1], unpack_ps[r % 2])
             for r in range(16)]
        r_ = [None] * 16
        for g in range(0, 16, 4):
            for k, (x, y, mask) in enumerate(((0, 2, 0), (0, 2, 1), (1, 3, 0), (1, 3, 1))):
                r_[g + k] = _shuffle(t[g + x], t[g + y], unpack_pd[mask])
        u = [None] * 16
        for h in (0, 8):
            for k in range(4):
                u[h + k] = _shuffle(r_[h + k], r_[h + 4 + k], even)
                u[h + 4 + k] = _shuffle(r_[h + k], r_[h + 4 + k], odd)
        return [_shuffle(u[k % 8], u[8 + k % 8], even if k < 8 else odd) for k in range(16)]
    for bit in range(lanes.bit_length() - 1):
        low, high = _bit_swap_masks(lanes, bit)
        step = 1 << bit
        swapped = list(rows)
        for r in range(lanes):
            if not r & step:
                swapped[r] = _shuffle(rows[r], rows[r + step], low)
                swapped[r + step] = _shuffle(rows[r], rows[r + step], high)
        rows = swapped
    return rows


@registers_with_tvm
def register(pixels: int, lanes: int, dtype: str = "float32", source: str = "local",
             wide: bool = False) -> str:
    """Register (once per process) the intrinsic storing B[lanes, pixels] = A[pixels, lanes]^T
    for 32-bit `dtype` elements, A in the `source` scope (registers: `local`, or memory:
    `global`), B in registers, and return its name. `wide`: B's rows are `lanes` apart and
    each is stored as a whole vector, the lanes beyond `pixels` holding copies of the last
    pixel (`PADDED_ROWS`)."""
    name = intrinsic_name(pixels, lanes, dtype, source, wide)
    if name in _registered:
        return name
    from tvm import tirx
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as B_

    assert lanes & (lanes - 1) == 0 and 0 < pixels <= lanes, (pixels, lanes)

    @T.prim_func(s_tir=True)
    def desc(a_handle: T.handle, b_handle: T.handle) -> None:
        a_stride, b_stride = T.int64(), T.int64()
        A = T.match_buffer(a_handle, (pixels, lanes), dtype, strides=[a_stride, 1],
                           offset_factor=1, scope=source)
        B = T.match_buffer(b_handle, (lanes, pixels), dtype, strides=[b_stride, 1],
                           offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(A[0:pixels, 0:lanes])
            T.writes(B[0:lanes, 0:pixels])
            for j, i in T.grid(pixels, lanes):
                with T.sblock("transpose"):
                    vj, vi = T.axis.remap("SS", [j, i])
                    B[vi, vj] = A[vj, vi]

    vector = f"{dtype}x{lanes}"
    with IRBuilder() as builder:
        with B_.prim_func():
            B_.func_name("impl")
            a_handle, b_handle = B_.arg("A", T.handle()), B_.arg("B", T.handle())
            a = B_.match_buffer(a_handle, (pixels, lanes), dtype, offset_factor=1,
                                strides=[tirx.Var("a_stride", "int64"), 1], scope=source)
            b = B_.match_buffer(b_handle, (lanes, pixels), dtype, offset_factor=1,
                                strides=[tirx.Var("b_stride", "int64"), 1], scope="local")
            with B_.sblock("root"):
                B_.reads(a[0:pixels, 0:lanes])
                B_.writes(b[0:lanes, 0:pixels])
                zero = tirx.Broadcast(tirx.const(0, dtype), lanes)
                # wide: no constant rows, which LLVM folded into the network and split it
                # into 128-bit pieces spilled through the stack
                rows = transposed([a.vload([min(r, pixels - 1), 0], vector)
                                   if r < pixels or wide else zero for r in range(lanes)])
                stored = lanes if wide else pixels    # wide: each row stored whole
                for channel in range(lanes):
                    value = rows[channel] if stored == lanes else tirx.Shuffle(
                        [rows[channel]], [tirx.IntImm("int32", i) for i in range(stored)])
                    B_.buffer_store(b, value, [channel, tirx.Ramp(tirx.const(0, "int32"), 1,
                                                                  stored)])
    impl = builder.get()
    TensorIntrin.register(name, desc, impl, override=True)
    _registered.add(name)
    return name


def transposed_write_back(sch, writer, lanes: int) -> bool:
    """Give `writer` (the epilogue under a conv tile, reading the accumulators as [..., pixel,
    channel]) a channel-major copy of the tile made by the register transpose, so that it reads
    each channel's pixels as one vector. False (nothing changed) where the tile's region does
    not split into blocks the intrinsic takes (more pixels than lanes, channels that do not
    fill whole vectors)."""
    from tvm import tirx
    block = sch.get(writer)
    index = accumulator_read(block)
    if index is None:
        return False
    extents = [sch.get(loop).extent for loop in sch.get_loops(writer)[-2:]]
    if len(extents) != 2 or not all(isinstance(e, tirx.IntImm) for e in extents):
        return False
    channels, pixels = (int(e) for e in extents)
    if pixels > lanes or channels % lanes:
        return False
    copy = sch.cache_read(writer, index, "local")
    sch.transform_layout(copy, ("write", 0), lambda n, o, h, w, c: (n, o, h, c, w))
    *_, w, c = sch.get_loops(copy)
    c_outer, c_inner = sch.split(c, [None, lanes])
    sch.reorder(c_outer, w, c_inner)
    name = sch.get(copy).name_hint
    wide = PADDED_ROWS and pixels < lanes
    sch.tensorize(w, register(pixels, lanes, str(block.reads[index].source.dtype), wide=wide))
    if wide:    # each channel's row of the copy padded to `lanes` pixels: the wide stores fit
        sch.storage_align(sch.get_sblock(f"{name}_o"), 0, 3, lanes, 0)
    return True


def channel_rows_name(pixels: int, lanes: int, dtype: str) -> str:
    return f"graphopt_channel_rows_{pixels}x{lanes}_{dtype}"


@registers_with_tvm
def register_channel_rows(pixels: int, lanes: int, dtype: str) -> str:
    """Register (once per process) the intrinsic storing B[lanes, 1, pixels] = A[pixels,
    lanes]^T, A a tile of channel vectors in registers and B one row of `lanes` channel planes
    of an NCHW output: each channel's pixels are one shuffle of A's rows and one small store.
    Return its name."""
    name = channel_rows_name(pixels, lanes, dtype)
    if name in _registered:
        return name
    from tvm import tirx
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as B_

    @T.prim_func(s_tir=True)
    def desc(a_handle: T.handle, b_handle: T.handle) -> None:
        a_stride, plane, row = T.int64(), T.int64(), T.int64()
        A = T.match_buffer(a_handle, (pixels, lanes), dtype, strides=[a_stride, 1],
                           offset_factor=1, scope="local")
        B = T.match_buffer(b_handle, (lanes, 1, pixels), dtype, strides=[plane, row, 1],
                           offset_factor=1)
        with T.sblock("root"):
            T.reads(A[0:pixels, 0:lanes])
            T.writes(B[0:lanes, 0, 0:pixels])
            for i, j in T.grid(lanes, pixels):
                with T.sblock("channel_rows"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    B[vi, 0, vj] = A[vj, vi]

    with IRBuilder() as builder:
        with B_.prim_func():
            B_.func_name("impl")
            a_handle, b_handle = B_.arg("A", T.handle()), B_.arg("B", T.handle())
            a = B_.match_buffer(a_handle, (pixels, lanes), dtype, offset_factor=1,
                                strides=[tirx.Var("a_stride", "int64"), 1], scope="local")
            b = B_.match_buffer(b_handle, (lanes, 1, pixels), dtype, offset_factor=1,
                                strides=[tirx.Var("plane", "int64"), tirx.Var("row", "int64"), 1])
            with B_.sblock("root"):
                B_.reads(a[0:pixels, 0:lanes])
                B_.writes(b[0:lanes, 0, 0:pixels])
                rows = [a.vload([p, 0], f"{dtype}x{lanes}") for p in range(pixels)]
                for channel in range(lanes):
                    value = tirx.Shuffle(rows, [tirx.IntImm("int32", p * lanes + channel)
                                                for p in range(pixels)])
                    B_.buffer_store(b, value, [channel, 0, tirx.Ramp(tirx.const(0, "int32"), 1,
                                                                     pixels)])
    TensorIntrin.register(name, desc, builder.get(), override=True)
    _registered.add(name)
    return name


def channel_rows(sch, copy, lanes: int) -> bool:
    """Write the copy-out of a tile of channel vectors (`copy`: its last two loops over the
    tile's channels and pixels, from `tiled.epilogue_on_channel_vectors`) `lanes` channels at a
    time by `register_channel_rows`. Left to LLVM, the vectorized copy gathered each channel's
    pixels byte by byte from the spilled tile (`vpextrb`, `vpinsrb`). False (nothing changed)
    where the channels do not fill whole vectors, a tile row is one pixel, or the copy runs
    under a predicate (a row computed past the output: `Conv2d.padded_width`)."""
    import tvm_ffi
    from tvm import tirx
    from .common import extent
    channels, pixels = sch.get_loops(copy)[-2:]
    realize = tvm_ffi.get_global_func("s_tir.schedule.GetSBlockRealize")(sch, copy)
    if extent(channels, sch) % lanes or not 1 < extent(pixels, sch) <= lanes or \
            not (isinstance(realize.predicate, tirx.IntImm) and int(realize.predicate)):
        return False
    _, inner = sch.split(channels, [None, lanes])
    dtype = str(sch.get(copy).writes[0].source.dtype)
    sch.tensorize(inner, register_channel_rows(extent(pixels, sch), lanes, dtype))
    return True
