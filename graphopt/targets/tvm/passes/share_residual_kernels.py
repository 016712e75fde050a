"""share_residual_kernels (CPU): where Winograd convs differ only in whether they add a residual
(a ResNet basic block's two 3x3 convs: bias + relu, then bias + residual + relu), record
`optional_residual` on each, so that all of them run one kernel, which takes a residual operand
and a run-time switch for it (`FusedConv2d`, `conv_kernel.switched_add`).

A Winograd kernel took 0.73 s to build on average, the other rules' 0.08-0.21 s
(`parallel_build.BUILD_COST`). With their fused epilogues ResNet-18's 3x3 convs built six of
them, against three bare ones without graphopt's passes: its compile took 1.17-1.28x as long
with the passes as without. One kernel per conv shape (an Intel Xeon, two cores, three compiles
each, the three builds in turn): 3.1-3.7 s, against 3.7-4.6 s with a kernel per epilogue and
3.5-4.0 s without the passes; run time 0.99-1.00x (batch 1 and 8, one and two threads), the
outputs the same bit for bit. The other rules' kernels, cheaper to build, keep one kernel per
epilogue."""
from __future__ import annotations

import dataclasses
from collections import defaultdict

from ....ir import Graph, Node
from .annotate import annotate


def share_residual_kernels(context):
    """The pass for one compile (`context` is not needed: the convs' recorded algorithms
    decide)."""

    def kernel_key(node: Node):
        """What a shareable conv's kernel depends on besides its residual, or None for a conv
        that cannot share one: a fused Winograd conv whose input has its output's type (the
        input stands in for the residual it lacks)."""
        op = node.op
        if node.op_name != "fused_conv2d" or op.conv.algorithm != "winograd" or \
                node.inputs[0].type != node.outputs[0].type:
            return None
        operands = node.inputs[:-1] if op.has_residual else node.inputs
        return (dataclasses.replace(op, has_residual=False, optional_residual=False),
                tuple(v.type for v in operands))

    def share_residual_kernels(graph: Graph):
        residuals = defaultdict(set)    # kernel key -> {has_residual} of the convs sharing it
        for node in graph.nodes:
            key = kernel_key(node)
            if key is not None:
                residuals[key].add(node.op.has_residual)
        shared = {key for key, kinds in residuals.items() if len(kinds) == 2}

        def decide(node: Node):
            if kernel_key(node) in shared:
                return dataclasses.replace(node.op, optional_residual=True)
            return None

        return annotate(graph, decide)

    return share_residual_kernels
