"""images_as_pixels (CPU): a quantized 1x1 convolution of several 1x1 images (the linear layers
`quantize_int8` makes: [rows, in, 1, 1]) computed over the images as the pixels of one image's
row, [1, in, 1, rows], with a transpose on each side. The dot-product kernels' register tile is a
row of pixels by channel blocks: over images of one pixel each they streamed the whole weight
once per image (int8 VGG-11's 25088 -> 4096 layer at batch 8, a Zen 4 core: 39.8 ms, 41 GOP/s),
over the row once for all of them (6.7 ms; the model 1.12 -> 0.97-0.99x ONNX Runtime's int8
time). The transposes move a few KB; the graph before the target passes, which per-layer
comparisons read, keeps the images' layout."""
from __future__ import annotations

from ....ir import Graph, Value
from ....ops.shape import Transpose
from ....passes.manager import PassResult
from ....passes.pattern import Match, Rule, apply_rules, op
from .views import reshaped


def images_as_pixels(context):
    """The pass for one compile (`context` unused: every CPU kernel of a qlinear_conv2d reads
    the row at least as well)."""

    def check(graph: Graph, m: Match) -> str | None:
        node = m.root
        x, w = node.inputs[0], node.inputs[3]
        batch, _, height, width = x.shape
        if batch == 1:
            return "one image"
        if (height, width) != (1, 1) or tuple(w.shape[2:]) != (1, 1) or \
                any(node.op.conv.padding):
            return "not an unpadded 1x1 conv of 1x1 images"
        if node.op.has_residual:
            return "a residual in the images' layout"
        return None

    def transposed(graph: Graph, value: Value, name: str, provenance) -> Value:
        return graph.add_node(Transpose((1, 0)), [value], name=graph.fresh_name(name),
                              provenance=provenance).output

    def rewrite(graph: Graph, m: Match) -> Value:
        # 2-D transposes between reshapes (views): TVM fuses each into the kernel next to it
        # on the far side of the reshape, never into the conv's own kernel
        node = m.root
        x, provenance = node.inputs[0], node.provenance
        rows, channels = x.shape[:2]
        rows_first = reshaped(graph, x, (rows, channels), f"{node.name}.rows", provenance)
        columns = transposed(graph, rows_first, f"{node.name}.to_pixels", provenance)
        pixels = reshaped(graph, columns, (1, channels, 1, rows), f"{node.name}.pixels",
                          provenance)
        conv = graph.add_node(node.op, [pixels, *node.inputs[1:]],
                              name=graph.fresh_name(f"{node.name}.row"), provenance=provenance)
        out_channels = conv.output.shape[1]
        flat = reshaped(graph, conv.output, (out_channels, rows), f"{node.name}.columns",
                        provenance)
        back = transposed(graph, flat, f"{node.name}.to_images", provenance)
        return reshaped(graph, back, node.output.shape, f"{node.name}.images", provenance)

    rules = [Rule("1x1 conv of 1x1 images as one row of pixels", op("qlinear_conv2d"),
                  rewrite, check, report_misses=False)]

    def images_as_pixels(graph: Graph) -> PassResult:
        return apply_rules(graph, rules)

    return images_as_pixels
