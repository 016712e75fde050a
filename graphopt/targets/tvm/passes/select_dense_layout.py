"""select_dense_layout (CPU): record on each linear layer, each 2-D matmul by a constant, and
each LSTM and GRU with constant weights, the block of output columns its weight is packed in
(`schedules/dense.dense_blocking`: whole vector registers after the row tile, or half-width
ones, the last block padded with zero columns where the block does not divide them), which
lowering packs and the dense rule streams; and on the bfloat16 linear layers and matmuls of a
CPU with AVX512-BF16 but no AMX-BF16, algorithm "dpbf16" (whole 16-lane registers):
bfloat16 pairs on vdpbf16ps (`schedules/dense_bf16.py`), as its bfloat16 convolutions.
Linear layers alone, one Zen 4 thread, us, widened float32 / dpbf16: LeNet-5's 400 -> 120
with tanh 2.04 / 1.23, 120 -> 84 0.67 / 0.41, 84 -> 10 0.43 / 0.40; 1024 -> 1024 37.7 / 22.0,
at batch 8 148 / 75; 4096 -> 1000 150 / 101 (see STREAMED_MIN_WEIGHT_BYTES for larger
ones)."""
from __future__ import annotations

import dataclasses

from ....ir import HALF_DTYPES, Node
from .annotate import annotate

RECURRENT = ("lstm", "gru")
# A bfloat16 product of fewer rows than this whose weight is larger than this many bytes reads
# it from memory at the same speed on either kernel, and keeps the widened one (one Zen 4
# thread, 32 MiB L3, ms, widened / dpbf16: 1 x 25088 -> 4096 8.0-10.1 / 8.8-11.3, 1 x 9216 ->
# 4096 4.09 / 4.23, but 1 x 4096 -> 4096, 32 MB, 1.42 / 1.30 and 8 x 25088 -> 4096 17.0 /
# 16.7).
STREAMED_MAX_ROWS, STREAMED_MIN_WEIGHT_BYTES = 8, 32 << 20


def select_dense_layout(context):
    """The pass for one compile (`context`: vector shape, whether weights are constant)."""
    from ..schedules import conv2d_bf16, dense_bf16
    from ..schedules.dense import dense_blocking
    pairs = conv2d_bf16.preferred(context.vector)

    def decide(node: Node):
        if node.op_name in RECURRENT:
            return recurrent(node)
        if node.op_name not in ("linear", "matmul"):
            return None
        x, w = node.inputs[:2]
        out = node.outputs[0]
        # half-precision layers widen their operands in the float32 kernel's registers, or
        # (dpbf16) multiply bfloat16 pairs
        packable = (context.constant_weights and w.is_constant and x.type.ndim == 2
                    and w.type.ndim == 2 and out.dtype in ("float32", *HALF_DTYPES)
                    and x.dtype == out.dtype)
        if not packable:
            return dataclasses.replace(node.op, weight_block=0, algorithm="")
        if pairs and x.dtype == "bfloat16" and not streamed(out.shape[0], w.type.numel * 2):
            blocking = dense_blocking(out.shape[0], out.shape[1], context.vector, x.shape[1],
                                      half_width=False)
            if blocking:
                return dataclasses.replace(node.op, weight_block=blocking[0],
                                           algorithm=dense_bf16.ALGORITHM)
        blocking = dense_blocking(out.shape[0], out.shape[1], context.vector, x.shape[1])
        return dataclasses.replace(node.op, weight_block=blocking[0] if blocking else 0,
                                   algorithm="")

    def streamed(rows: int, weight_bytes: int) -> bool:
        """Whether a product streams its weight from memory at either kernel's speed (few rows,
        a weight beyond the last-level cache): it keeps the widened float32 kernel."""
        return rows < STREAMED_MAX_ROWS and weight_bytes > STREAMED_MIN_WEIGHT_BYTES

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
