"""trim_conv_taps: drop the kernel rows and columns of a convolution that read only padding.

A dilated convolution on a small plane can have taps that fall in the zero padding for every
output position: DeepLabV3's ASPP convolves a 4x4 feature map (a 64x64 image at output stride
16) with 3x3 kernels dilated 12, 24 and 36, padded as much, and only the centre tap ever reads
the plane. Those taps add zeros; kernels computing them also pad the plane (960 channels to
76x76 for the 4x4 map). The edge rows and columns of the kernel that never touch the plane are
removed with the padding they read: the ASPP branches become 1x1 convolutions without padding.
Interior taps stay (the dilation stays uniform), and a convolution whose padding would become
negative, or whose output shape would change, is left as it is."""
from __future__ import annotations

import dataclasses

from ..ir import Graph, Value
from .manager import PassResult, register_pass
from .pattern import Match, Rule, any_value, apply_rules, const, op


def live_taps(size: int, kernel: int, stride: int, dilation: int, before: int,
              out: int) -> tuple[int, int]:
    """(first, last) kernel taps along one axis that read the plane for some output position."""
    alive = [tap for tap in range(kernel)
             if any(0 <= o * stride + tap * dilation - before < size for o in range(out))]
    return (alive[0], alive[-1]) if alive else (0, kernel - 1)


def trimmed(conv: ops.Conv2d, x_shape, w_shape, out_shape):
    """(conv with its padding trimmed, (row slice, column slice) of the weight), or None when
    every tap reads the plane or trimming would not keep the output shape."""
    height, width = x_shape[2:]
    k_h, k_w = w_shape[2:]
    (s_h, s_w), (d_h, d_w) = conv.stride, conv.dilation
    top, left, bottom, right = conv.padding
    rows = live_taps(height, k_h, s_h, d_h, top, out_shape[2])
    cols = live_taps(width, k_w, s_w, d_w, left, out_shape[3])
    if rows == (0, k_h - 1) and cols == (0, k_w - 1):
        return None
    new_top, new_left = top - rows[0] * d_h, left - cols[0] * d_w
    if new_top < 0 or new_left < 0:
        return None

    def after(size, taps, stride, dilation, before, out):
        span = dilation * (taps[1] - taps[0])
        return max(0, (out - 1) * stride + span + 1 - size - before)

    new_bottom = after(height, rows, s_h, d_h, new_top, out_shape[2])
    new_right = after(width, cols, s_w, d_w, new_left, out_shape[3])
    # a single remaining tap along an axis has no spacing: dilation 1 there
    dilation = (d_h if rows[1] > rows[0] else 1, d_w if cols[1] > cols[0] else 1)
    new = dataclasses.replace(conv.plain, padding=(new_top, new_left, new_bottom, new_right),
                              dilation=dilation)
    spans = (slice(rows[0], rows[1] + 1), slice(cols[0], cols[1] + 1))
    return new, spans


def _plan(m: Match):
    node = m.root
    return trimmed(node.op, node.inputs[0].shape, node.inputs[1].shape, node.output.shape)


def _check(graph: Graph, m: Match) -> str | None:
    node = m.root
    if node.op != node.op.plain:
        return f"{node.op} carries target decisions"
    plan = _plan(m)
    if plan is None:
        return "every tap reads the plane (or trimming would change the output)"
    new, (rows, cols) = plan
    weight = m["w"].type
    sliced = weight.with_shape((*weight.shape[:2], rows.stop - rows.start,
                                cols.stop - cols.start))
    inputs = [node.inputs[0].type, sliced, *[v.type for v in node.inputs[2:]]]
    if new.output_types(*inputs) != [node.output.type]:
        return "trimming would change the output shape"
    return None


def _trim(graph: Graph, m: Match) -> Value:
    node = m.root
    new, (rows, cols) = _plan(m)
    w = m["w"]
    weight = graph.add_constant(graph.fresh_name(f"{w.name}.trimmed"),
                                w.data[:, :, rows, cols].copy())
    trimmed_node = graph.add_node(new, [node.inputs[0], weight, *node.inputs[2:]],
                                  name=graph.fresh_name(f"{node.name}.trimmed"),
                                  provenance=node.provenance)
    return trimmed_node.output


RULES = [Rule("taps that read only padding",
              op("conv2d", any_value("x"), const("w")), _trim, _check)]


@register_pass
def trim_conv_taps(graph: Graph) -> PassResult:
    return apply_rules(graph, RULES)
