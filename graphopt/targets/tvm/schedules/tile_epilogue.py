"""The epilogue of the AMX convolutions (`amx.py`): their hand-written kernel stores its C tiles
as accumulators blocked by output channel, [N, O / lanes, OH, OW, lanes]; a second kernel
reads them back as NCHW (`amx.from_tiles`) through the conv's epilogue (bias, residual,
activation, the int8 requantize, the rounding to bfloat16). Lowering marks that kernel
(`amx.EPILOGUE_ATTRS`).

Left to the generic rule, the kernel read one accumulator per output element, 64 bytes apart,
in a scalar loop (ResNet-18 at batch 1, one thread: 1.1 ms of bfloat16's 9.2 and 1.5 ms of
int8's 5.6). Here each task takes a block of `lanes` channels of one output row, `pixels` at
a time (a divisor of the row: 14 of 56): the pixels x lanes accumulators are loaded as whole
vectors and transposed in registers (`transpose.py`), after which each channel's pixels are
one vector that the epilogue computes and stores as a contiguous run of its row (the same:
0.87 and 0.85 ms). The last block of output channels that are not whole blocks, and the
last step of a row the kernel computed to whole tiles, read the padded accumulators and store
only the real outputs. Runs of 16 pixels across rows (the tiles and the output viewed with the
plane flattened) took 0.73 and 0.72 ms, but TVM fused that view into the next kernel (a pool,
a copy), whose indices then divided and reduced by the plane size."""
from __future__ import annotations

from .amx import EPILOGUE_ATTRS
from .common import PARALLEL_MIN_ELEMENTS, VectorShape, blocks_of, extent, inline_elementwise

NAME = "tile_epilogue"
MIN_PIXELS = 4
ACCUMULATORS = ("float32", "int32")


def pixels_per_step(width: int, lanes: int) -> int:
    """Pixels transposed at once: the largest divisor of the output row within `lanes`."""
    return max(d for d in range(1, min(width, lanes) + 1) if width % d == 0)


def schedule(sch, vec: VectorShape) -> bool | None:
    func = sch.mod["main"]
    if not (func.attrs and all(k in func.attrs for k in EPILOGUE_ATTRS)):
        return None
    inline_elementwise(sch, keep=[])
    blocks = blocks_of(sch)
    if len(blocks) != 1:
        return None
    block = blocks[0]
    acc = next((p for p in func.params if len(p.shape) == 5 and p.dtype in ACCUMULATORS), None)
    index = next((i for i, r in enumerate(sch.get(block).reads)
                  if acc is not None and r.source.same_as(acc)), None)
    loops = sch.get_loops(block)
    if index is None or len(loops) != 4:
        return None
    lanes = int(acc.shape[-1])
    n, c, h, w = loops
    channels, height, width = extent(c, sch), extent(h, sch), extent(w, sch)
    pixels = pixels_per_step(width, lanes)
    if pixels < MIN_PIXELS and int(acc.shape[3]) > width:
        # a row the kernel computed to whole tiles (`amx.row_tiles`: 17 as 18): steps of the
        # tile's pixels, the last one's extra columns read and not stored
        pixels = pixels_per_step(int(acc.shape[3]), lanes)
    if lanes & (lanes - 1) or pixels < MIN_PIXELS:
        return None
    from .transpose import register
    c_outer, c_inner = sch.split(c, [None, lanes])
    w_outer, w_inner = sch.split(w, [None, pixels])
    sch.reorder(n, c_outer, h, w_outer, c_inner, w_inner)
    # the tile's pixels x lanes accumulators, channel-major, in registers
    copy = sch.cache_read(block, index, "local")
    sch.compute_at(copy, w_outer)
    sch.transform_layout(copy, ("write", 0), lambda b, o, i, j, k: (b, o, i, k, j))
    sch.tensorize(sch.get_loops(copy)[-2], register(pixels, lanes, str(acc.dtype), "global"))
    sch.vectorize(w_inner)
    rows = sch.fuse(n, c_outer, h)
    if channels * height * width >= PARALLEL_MIN_ELEMENTS:
        sch.parallel(rows)
    return True
