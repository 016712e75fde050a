"""planes_as_rows (CPU, 8 lanes): a float32 1x1 convolution (stride 1, no padding, no groups)
whose plane the conv2d rule would compute in padded rows computed over the plane as one row,
[N, C, 1, H * W], with a reshape (a view) on each side. With 8 lanes a register tile holds two
registers of output channels by up to 6 pixels (`tiled.conv_row_tile`): a 7-pixel row was
computed as two tiles of 4 (8 columns), a 14-pixel row as three of 5; the plane's 49 or 196
pixels as one row take tiles of 6 (54 and 198 columns) and fewer of them. The planes whose
pixels are whole vectors go to the pointwise rule instead and are left alone, as are 16-lane
targets, whose tiles of 7 divide these rows."""
from __future__ import annotations

from ....ir import Graph, Value
from ....passes.manager import PassResult
from ....passes.pattern import Match, Rule, apply_rules, op
from ..schedules.tiled import channel_block, conv_row_tile
from .views import reshaped

# The vector widths (float32 lanes) whose targets compute such planes as rows. A Zen 4 core as
# an AVX2 CPU (mcpu="znver3"), 1 thread, conv + relu alone, us, plane / row: 400 ch 7x7 176 /
# 156 (ONNX Runtime's AVX2 kernel 156), 960 -> 160 ch 7x7 170 / 151, 160 -> 960 ch 7x7 171 /
# 154, 96 -> 576 ch 14x14 241 / 218, 576 -> 96 ch 14x14 231 / 221; outputs identical. Built
# for the host's AVX-512 the rows lost (400 ch 7x7 148 / 164, 960 -> 160 ch 7x7 138 / 148).
ROW_LANES = (8,)


def planes_as_rows(context):
    """The pass for one compile: it rewrites only for a CPU target of ROW_LANES lanes."""
    vector = context.vector

    def check(graph: Graph, m: Match) -> str | None:
        node = m.root
        conv = getattr(node.op, "conv", node.op)
        x, w = node.inputs[0], node.inputs[1]
        if vector is None or vector.lanes not in ROW_LANES:
            return "a target of other vector widths"
        if context.kernels == "onednn":    # its convs pass NHWC to each other: no reshapes
            return "oneDNN's convolutions"
        _, _, height, width = x.shape
        out_channels = node.output.shape[1]
        if x.dtype != "float32" or node.output.dtype != "float32":
            return "not float32"
        if not (context.constant_weights and w.is_constant):
            return "weights not constant"
        if tuple(w.shape[2:]) != (1, 1) or tuple(conv.stride) != (1, 1) or \
                any(conv.padding) or tuple(conv.dilation) != (1, 1) or conv.groups != 1:
            return "not an unpadded stride-1 1x1 conv without groups"
        if height == 1 or (height * width) % vector.lanes == 0:
            return "a row already, or a plane of whole vectors"
        block = channel_block(out_channels, vector)
        if not block or width % conv_row_tile(width, block, vector) == 0:
            return "rows of whole tiles"
        return None

    def rewrite(graph: Graph, m: Match) -> Value:
        node = m.root
        provenance = node.provenance
        batch, channels, height, width = node.inputs[0].shape
        inputs = list(node.inputs)
        inputs[0] = reshaped(graph, inputs[0], (batch, channels, 1, height * width),
                             f"{node.name}.row_input", provenance)
        if getattr(node.op, "has_residual", False):
            residual = inputs[-1]
            inputs[-1] = reshaped(graph, residual, (batch, residual.shape[1], 1,
                                                    height * width),
                                  f"{node.name}.row_residual", provenance)
        conv = graph.add_node(node.op, inputs, name=graph.fresh_name(f"{node.name}.row"),
                              provenance=provenance)
        return reshaped(graph, conv.output, node.output.shape, f"{node.name}.plane",
                        provenance)

    rules = [Rule("1x1 conv of a padded-row plane as one row of pixels", op(name), rewrite,
                  check, report_misses=False) for name in ("conv2d", "fused_conv2d")]

    def planes_as_rows(graph: Graph) -> PassResult:
        return apply_rules(graph, rules)

    return planes_as_rows
