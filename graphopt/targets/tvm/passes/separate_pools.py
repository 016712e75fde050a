"""separate_pools (CPU): mark max pools `separable` (every dtype but float64), computed as a row
max then a column max over contiguous rows (`schedules/pool2d.py`: ResNet-18's stem pool
1.5-2 ms direct, 0.1 ms separable; int8 VGG-11's first uint8 pool, 64 ch 224x224, 2.2 -> 0.14
ms, ORT 0.29; bfloat16 ResNet-18's stem pool 2.8 -> 0.22 ms), and undilated average pools the
same way with sums (Inception-v3's 3x3 stride-1 pools of 768 ch 17x17: 0.95 ms each through
TOPI's pool, ORT 0.09)."""
from __future__ import annotations

import dataclasses

from .annotate import annotate

SEPARABLE_MAX_DTYPES = ("float32", "float16", "bfloat16", "uint8", "int8", "int32", "int64")


def separate_pools(context):
    """The pass for one compile (`context` is not needed: every max pool of a
    SEPARABLE_MAX_DTYPES dtype and every undilated average pool qualifies)."""

    def decide(node):
        if node.op_name == "max_pool2d" and node.inputs[0].dtype in SEPARABLE_MAX_DTYPES:
            return dataclasses.replace(node.op, separable=True)
        if node.op_name == "avg_pool2d" and node.op.dilation == (1, 1):
            return dataclasses.replace(node.op, separable=True)
        return None

    def separate_pools(graph):
        return annotate(graph, decide)

    return separate_pools
