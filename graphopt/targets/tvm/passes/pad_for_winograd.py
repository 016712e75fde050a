"""pad_for_winograd (CPU): an unpadded 3x3 stride-1 float32 convolution that the Winograd kernel
would take with 'same' padding becomes that padded convolution followed by a slice of its
interior (the valid output is the 'same' output without its border), so `select_conv_algorithm`
gives it the Winograd kernel, which computes 'same' convolutions only. The padded output costs
(H / (H - 2))^2 more work and the slice one copy; the Winograd kernel saves more (Inception-v3's
unpadded stem convs, an Intel Xeon, 1 / 2 threads, ms, direct / padded Winograd + slice / ORT:
32 ch 149x149 3.77 / 3.12 / 2.70, 2.10 / 1.66 / 1.37; 80 -> 192 ch 73x73 9.88 / 9.07 / 8.02,
5.23 / 3.34 / 3.96)."""
from __future__ import annotations

import dataclasses

from ....ir import Graph, Value
from ....ops.shape import Slice
from ....passes.manager import PassResult
from ....passes.pattern import Match, Rule, apply_rules, op

SAME = (1, 1, 1, 1)
# The least share of the padded output that the valid output keeps: below it (small planes,
# e.g. 28x28 of 30x30, 87 %) the padded border's work is not worth it. Whole models, interleaved,
# on the Intel Xeon, with / without the rewrite, 1 / 2 threads: Johnson et al.'s style transfer
# (128 ch 66x66 -> 64x64 residual convs after reflection pads) 0.85 / 0.84, Inception-v3 0.98 /
# 0.98. Hosts with 32 KiB of L1 or AVX2 are untimed for this rewrite; it applies there too,
# wherever `winograd.output_tile` gives the padded convolution the Winograd kernel.
MIN_INTERIOR = 0.9


def pad_for_winograd(context):
    """The pass for one compile (`context`: the vector shape Winograd's choice depends on)."""
    from ..schedules import winograd

    def conv_of(node):
        return getattr(node.op, "conv", node.op)

    def check(graph: Graph, m: Match) -> str | None:
        node = m.root
        conv = conv_of(node)
        x, w = node.inputs[:2]
        if context.vector is None or context.kernels == "onednn" or not context.constant_weights:
            return "the compile takes no Winograd kernel"
        if getattr(node.op, "has_residual", False):
            return "a residual input has the unpadded output's shape"
        if any(conv.padding):
            return "already padded"
        if not w.is_constant or x.dtype != "float32" or node.output.dtype != "float32":
            return "not a float32 convolution with a constant weight"
        batch, _, height, width = x.shape
        # output_tile decides the rest (3x3, stride 1, no dilation or groups, the channels)
        if not winograd.output_tile(w.shape[1], w.shape[0], height, width, w.shape[2:],
                                    conv.stride, conv.dilation, conv.groups, SAME,
                                    context.vector, batch):
            return "the padded convolution would not take the Winograd kernel"
        if (height - 2) * (width - 2) < MIN_INTERIOR * height * width:
            return "the padded border would add more than MIN_INTERIOR allows"
        return None

    def rewrite(graph: Graph, m: Match) -> Value:
        node = m.root
        padded_conv = dataclasses.replace(conv_of(node), padding=SAME)
        padded_op = padded_conv if node.op_name == "conv2d" else \
            dataclasses.replace(node.op, conv=padded_conv)
        padded = graph.add_node(padded_op, list(node.inputs),
                                name=graph.fresh_name(f"{node.name}.same"),
                                provenance=node.provenance)
        height, width = node.inputs[0].shape[2:]
        interior = Slice(starts=(1, 1), ends=(height - 1, width - 1), axes=(2, 3), steps=(1, 1))
        return graph.add_node(interior, [padded.output], name=graph.fresh_name(f"{node.name}.valid"),
                              provenance=node.provenance).output

    rules = [Rule("unpadded 3x3 conv as a padded Winograd conv and its interior",
                  op(("conv2d", "fused_conv2d")), rewrite, check, report_misses=False)]

    def pad_for_winograd(graph: Graph) -> PassResult:
        return apply_rules(graph, rules)

    return pad_for_winograd
