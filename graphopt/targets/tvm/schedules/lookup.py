"""`table_lookup` of uint8 values in a 256-entry table on AVX-512 VBMI (`vpermi2b`).

The generic rule vectorizes the lookup as a gather: about 0.35 ns an element on a Zen 4 core
(int8 EfficientNet-B0's 32 lookups: 1.4 ms). `vpermi2b` looks up 64 bytes at once in a
128-byte table held in two registers (the index's bit 6 picks the register, bits 0-5 the byte):
two of them cover the 256 entries, and the index's top bit picks between their results. A
table of wider entries (float32: int8 EfficientNet-B0's SiLUs, 1.0 ms of its 7.4 as gathers) is
looked up byte plane by byte plane, each plane a table of bytes, and the planes' results are
interleaved into whole entries (one shuffle, which LLVM lowers to unpacks and permutes).
Where the CPU has VBMI (Ice Lake and later Intel cores, Zen 4 and Zen 5) and the elements fill
at least one 64-byte vector, `finish` replaces the kernel's body by that loop over the flattened
tensors, the elements after the last whole vector looked up one by one; elsewhere the generic
rule schedules the gather. The tail made the lookups of int8 LeNet-5's tanh tables vpermi2b
too (a Zen 4, us, gather / vpermi2b, the kernel alone: 6 x 28 x 28 bytes, 73.5 vectors, 1.79 /
0.83 at one thread, 2.40 / 1.09 in a run at two; 84 bytes 0.22 / 0.19; the model's run, the
builds alternated: 0.934 at one thread, 0.926 at two)."""
from __future__ import annotations

import math

from .common import PARALLEL_MIN_ELEMENTS, VectorShape, blocks_of

NAME = "lookup"
BLOCK = "table_lookup"       # the block TableLookup.lower_tvm computes
BYTES = 64                   # one zmm register of uint8
LLVM = "llvm.x86.avx512.vpermi2var.qi.512"


def _elements(buffer) -> int:
    return math.prod(int(d) for d in buffer.shape)


# Bytes per table entry the kernel looks up (uint8; float16 and bfloat16; float32 and int32).
ENTRY_BYTES = (1, 2, 4)


def _lookup_buffers(func):
    """(x, table, y) buffers of a table_lookup PrimFunc `vpermi2b` computes (uint8 x, a table
    of ENTRY_BYTES-wide entries), or None."""
    if len(func.params) != 3:
        return None
    x, table, y = func.params
    if not (str(x.dtype) == "uint8" and str(table.dtype) == str(y.dtype)
            and table.dtype.bits // 8 in ENTRY_BYTES and table.dtype.lanes == 1
            and [int(d) for d in table.shape] == [256] and _elements(x) >= BYTES):
        return None
    return x, table, y


def schedule(sch, vec: VectorShape) -> bool | None:
    """Accept a uint8 table_lookup PrimFunc on a VBMI CPU (True; `finish` writes the kernel),
    else None."""
    names = [sch.get(b).name_hint for b in blocks_of(sch)]
    if not vec.vbmi or names != [BLOCK] or _lookup_buffers(sch.mod["main"]) is None:
        return None
    return True


def finish(func, vec: VectorShape):
    """The kernel: for each 64 bytes of x, in each byte plane of the table two vpermi2b lookups
    in its halves and a select on the index's top bit; the planes' bytes interleaved into
    entries and written to y (parallel over blocks of vectors); then the elements after the
    last whole vector, one at a time."""
    from tvm import tirx
    x, table, y = _lookup_buffers(func)
    size = _elements(x)
    width = table.dtype.bits // 8
    vectors = size // BYTES
    flat_x = tirx.decl_buffer((size,), "uint8", "x_flat", data=x.data)
    flat_y = tirx.decl_buffer((size * width,), "uint8", "y_flat", data=y.data)
    table_bytes = tirx.decl_buffer((256 * width,), "uint8", "table_bytes", data=table.data)
    v = tirx.Var("v", "int32")
    start = v * tirx.const(BYTES, "int32")
    index = tirx.BufferLoad(flat_x, [tirx.Ramp(start, 1, BYTES)])
    kind = f"uint8x{BYTES}"
    top = index >= tirx.Broadcast(tirx.const(128, "uint8"), BYTES)

    whole = [tirx.BufferLoad(table_bytes, [tirx.Ramp(tirx.const(i * BYTES, "int32"), 1, BYTES)])
             for i in range(4 * width)]

    def plane(byte):
        """Byte `byte` of the entries of x's 64 indices."""
        # each quarter's entries are `width` whole vectors of the table: one byte shuffle of
        # contiguous loads (a strided load became 64 byte inserts)
        quarter = [whole[k * width] if width == 1 else tirx.Shuffle(
            whole[k * width:(k + 1) * width], [e * width + byte for e in range(BYTES)])
            for k in range(4)]

        def permute(low, high):
            return tirx.call_llvm_pure_intrin(kind, LLVM, low, index, high)
        return tirx.Select(top, permute(quarter[2], quarter[3]),
                           permute(quarter[0], quarter[1]))

    planes = [plane(byte) for byte in range(width)]
    # entry e's byte b is plane b's byte e: the planes interleaved
    value = planes[0] if width == 1 else tirx.Shuffle(
        planes, [b * BYTES + e for e in range(BYTES) for b in range(width)])
    store = tirx.BufferStore(flat_y, value, [tirx.Ramp(start * width, 1, BYTES * width)])
    kind_of_loop = tirx.ForKind.PARALLEL if size >= PARALLEL_MIN_ELEMENTS else \
        tirx.ForKind.SERIAL
    loop = tirx.For(v, tirx.const(0, "int32"), tirx.const(vectors, "int32"), kind_of_loop,
                    store)
    body = [tirx.DeclBuffer(flat_x, data=x.data), tirx.DeclBuffer(flat_y, data=y.data),
            tirx.DeclBuffer(table_bytes, data=table.data), loop]
    if size % BYTES:
        entries = tirx.decl_buffer((size,), y.dtype, "y_entries", data=y.data)
        flat_table = tirx.decl_buffer((256,), table.dtype, "table_entries", data=table.data)
        k = tirx.Var("k", "int32")
        code = tirx.BufferLoad(flat_x, [k]).astype("int32")
        tail = tirx.BufferStore(entries, tirx.BufferLoad(flat_table, [code]), [k])
        body += [tirx.DeclBuffer(entries, data=y.data),
                 tirx.DeclBuffer(flat_table, data=table.data),
                 tirx.For(k, tirx.const(vectors * BYTES, "int32"),
                          tirx.const(size - vectors * BYTES, "int32"),
                          tirx.ForKind.SERIAL, tail)]
    return func.with_body(tirx.SeqStmt(body))
