"""Depthwise conv2d (groups == input == output channels, NCHW) vectorized along output rows.

A depthwise conv has no reduction over channels to tile (9 or 25 products per output), so the
output row is the vector axis: the tile is a few output rows of one channel, each row whole
vectors of `weight_block` columns (the row padded to whole vectors at lowering, the epilogue
writing only the real columns); every step broadcasts one weight tap and multiplies a
contiguous input row segment. The input is copied per channel into a zero-padded buffer split
into `stride` column phases ([rows, stride, columns / stride]), so that a stride-2 tap also
reads contiguous columns. Lowered by `depthwise_conv2d` (algorithm "depthwise",
`select_conv_algorithm`), scheduled by `schedule`."""
from __future__ import annotations

from .common import VectorShape, blocks_of, extent, inline_elementwise, iter_kinds
from .tiled import accumulator_writer, balanced_tile

NAME = "depthwise"
ALGORITHM = "depthwise"
PHASES_BLOCK = "depthwise_phases"
CONV_BLOCK = "depthwise_conv2d"


def applies(in_channels: int, out_channels: int, groups: int, vector) -> bool:
    """A depthwise conv with a channel multiplier of 1, on a CPU with vector registers."""
    return vector is not None and groups > 1 and in_channels == out_channels == groups


def column_phases(x, conv, kernel, block: int, name: str):
    """TE: NCHW `x` zero-padded as `conv` pads it and split into `stride` column phases, [N, C,
    rows, stride, columns / stride] (phase p of row i, column j: padded column j * stride + p),
    with the columns that output rows padded to whole blocks of `block` read; and (out_h,
    out_w, padded_w). A strided tap then reads contiguous columns of one phase."""
    from tvm import te, tirx
    n, channels, height, width = (int(d) for d in x.shape)
    k_h, k_w = kernel
    (s_h, s_w), (d_h, d_w) = conv.stride, conv.dilation
    top, left, bottom, right = conv.padding
    out_h = (height + top + bottom - d_h * (k_h - 1) - 1) // s_h + 1
    out_w = (width + left + right - d_w * (k_w - 1) - 1) // s_w + 1
    padded_w = -(-out_w // block) * block
    rows = (out_h - 1) * s_h + d_h * (k_h - 1) + 1
    columns = padded_w + d_w * (k_w - 1) // s_w       # per phase
    zero = tirx.const(0, x.dtype)

    def phase(b, c, i, p, j):
        # a Select of a clamped (always valid) load, so that the copy vectorizes
        row, column = i - top, j * s_w + p - left
        inside = tirx.all(row >= 0, row < height, column >= 0, column < width)
        return tirx.Select(inside, x[b, c, tirx.min(tirx.max(row, 0), height - 1),
                                     tirx.min(tirx.max(column, 0), width - 1)], zero)

    phases = te.compute((n, channels, rows, s_w, columns), phase, name=name)
    return phases, (out_h, out_w, padded_w)


def real_columns(tile, out_w: int):
    """TE: `tile` (NCHW rows computed to whole vectors) sliced back to `out_w` columns, or
    `tile` itself where the rows were whole already."""
    from tvm import te
    if int(tile.shape[3]) == out_w:
        return tile
    return te.compute((*tile.shape[:3], out_w), lambda b, c, i, j: tile[b, c, i, j],
                      name="real_columns")


def depthwise_conv2d(x, weight, conv, block: int):
    """TE: the depthwise conv of NCHW `x` with `weight` [C, KH, KW], computed on rows padded to
    whole blocks of `block` columns and sliced back to the real width."""
    from tvm import te
    n, channels = (int(d) for d in x.shape[:2])
    _, k_h, k_w = (int(d) for d in weight.shape)
    (s_h, s_w), (d_h, d_w) = conv.stride, conv.dilation
    phases, (out_h, out_w, padded_w) = column_phases(x, conv, (k_h, k_w), block, PHASES_BLOCK)
    ry, rx = te.reduce_axis((0, k_h), "ry"), te.reduce_axis((0, k_w), "rx")
    tile = te.compute(
        (n, channels, out_h, padded_w),
        lambda b, c, i, j: te.sum(phases[b, c, i * s_h + ry * d_h, (rx * d_w) % s_w,
                                         j + (rx * d_w) // s_w] * weight[c, ry, rx],
                                  axis=[ry, rx]),
        name=CONV_BLOCK)
    return real_columns(tile, out_w)


def find_conv(sch):
    found = [b for b in blocks_of(sch) if sch.get(b).name_hint == CONV_BLOCK
             and iter_kinds(sch.get(b)) == "SSSSRR"]
    return found[0] if len(found) == 1 else None


def schedule(sch, vec: VectorShape) -> bool:
    """Parallel over (image, channel); per channel the phase buffer, then tiles of output rows
    (as many as the accumulator registers hold), each row whole vectors, taps unrolled; the
    epilogue writes each tile from registers. None for functions this rule does not lower."""
    conv = find_conv(sch)
    if conv is None:
        return None
    phases = [b for b in blocks_of(sch) if sch.get(b).name_hint == PHASES_BLOCK]
    if len(phases) != 1:
        return None
    phases = phases[0]
    inline_elementwise(sch, keep=[conv, phases])
    writer = accumulator_writer(sch, conv)
    if writer is None:
        return None
    n, c, oh, ow, kh, kw = sch.get_loops(conv)
    lanes = vec.lanes
    if extent(ow, sch) % lanes:
        return None   # rows are padded to whole vectors at lowering
    vectors = extent(ow, sch) // lanes
    rows = balanced_tile(extent(oh, sch), max(1, vec.accumulators // vectors))
    oh_outer, oh_inner = sch.split(oh, [None, rows])
    ow_vectors, ow_lanes = sch.split(ow, [None, lanes])
    if vectors > vec.accumulators:   # very wide rows: tiles of whole vectors along the row
        ow_outer, ow_vectors = sch.split(ow_vectors, [None, vec.accumulators])
        sch.reorder(n, c, oh_outer, ow_outer, kh, kw, oh_inner, ow_vectors, ow_lanes)
        tile = ow_outer
    else:
        sch.reorder(n, c, oh_outer, kh, kw, oh_inner, ow_vectors, ow_lanes)
        tile = oh_outer
    planes = sch.fuse(n, c)
    if extent(planes, sch) > 1:
        sch.parallel(planes)
    sch.compute_at(phases, planes)
    sch.vectorize(sch.get_loops(phases)[-1])
    sch.reverse_compute_at(writer, tile)
    sch.vectorize(ow_lanes)
    for loop in (kh, kw, oh_inner, ow_vectors):
        sch.unroll(loop)
    init = sch.decompose_reduction(conv, kh)
    sch.vectorize(sch.get_loops(init)[-1])
    inner = sch.get_loops(writer)[-1]
    if extent(inner, sch) > 1:
        sch.vectorize(inner)
    return True
