"""select_dense_layout (CPU): record on each linear layer, each 2-D matmul by a constant, and
each LSTM and GRU with constant weights, the block of output columns its weight is packed in (`schedules/dense.dense_blocking`: whole
vector registers after the row tile, or half-width ones, the last block padded with zero
columns where the block does not divide them), which lowering packs and the dense rule
streams."""
from __future__ import annotations

import dataclasses

from ....ir import HALF_DTYPES, Node
from .annotate import annotate

RECURRENT = ("lstm", "gru")


def select_dense_layout(context):
    """The pass for one compile (`context`: vector shape, whether weights are constant)."""
    from ..schedules.dense import dense_blocking

    def decide(node: Node):
        if node.op_name in RECURRENT:
            return recurrent(node)
        if node.op_name not in ("linear", "matmul"):
            return None
        x, w = node.inputs[:2]
        out = node.outputs[0]
        # a float32 kernel: half-precision layers widen their operands in its registers
        packable = (context.constant_weights and w.is_constant and x.type.ndim == 2
                    and w.type.ndim == 2 and out.dtype in ("float32", *HALF_DTYPES)
                    and x.dtype == out.dtype)
        blocking = dense_blocking(out.shape[0], out.shape[1], context.vector, x.shape[1]) \
            if packable else None
        return dataclasses.replace(node.op, weight_block=blocking[0] if blocking else 0)

    def recurrent(node: Node):
        """An LSTM's or GRU's products by its constant W^T and R^T ([I or H, G * H]): packed
        like a linear layer's weight, blocked for the per-step product (batch rows)."""
        x, w, r = node.inputs[:3]
        batch = x.shape[1] if node.op.layout == 0 else x.shape[0]
        packable = (context.constant_weights and w.is_constant and r.is_constant
                    and x.dtype in ("float32", *HALF_DTYPES))   # half: widened at lowering
        blocking = dense_blocking(batch, w.shape[1], context.vector) if packable else None
        return dataclasses.replace(node.op, weight_block=blocking[0] if blocking else 0)

    def select_dense_layout(graph):
        return annotate(graph, decide)

    return select_dense_layout
