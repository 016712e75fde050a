"""Memory of a graph: the peak of the activations live at once when its nodes run in
topological order, and its weights' size as stored and as each precision would store them."""
from __future__ import annotations

from collections import defaultdict

from ..analysis import count_params
from ..ir import Graph

# Bytes per parameter of each precision a graph's weights can be stored in.
PRECISION_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}


def peak_activation_bytes(graph: Graph) -> int:
    """The most bytes of graph inputs and node outputs alive at once, running the nodes in
    topological order: a value lives from its node's run to its last reader's (graph outputs
    to the end). A lower bound for a runtime that keeps no buffer longer than needed."""
    order = graph.topological_order()
    last_read: dict[int, int] = {}
    for step, node in enumerate(order):
        for value in node.inputs:
            last_read[id(value)] = step
    kept = {id(v) for v in graph.outputs}
    live = sum(v.type.nbytes for v in graph.inputs)
    peak = live
    for step, node in enumerate(order):
        live += sum(v.type.nbytes for v in node.outputs)
        peak = max(peak, live)
        done = {id(v): v for v in node.inputs if not v.is_constant}
        done.update({id(v): v for v in node.outputs if id(v) not in last_read})
        live -= sum(v.type.nbytes for key, v in done.items()
                    if key not in kept and last_read.get(key, step) == step)
    return peak


def weight_bytes_by_dtype(graph: Graph) -> dict[str, int]:
    """Bytes of the graph's constants, by dtype."""
    found: dict[str, int] = defaultdict(int)
    for constant in graph.constants.values():
        found[constant.dtype] += constant.type.nbytes
    return dict(found)


def memory_summary(graph: Graph) -> dict:
    """Peak activations, weights as stored (by dtype) and the parameters' size per precision."""
    params = count_params(graph)
    return {"peak_activation_bytes": peak_activation_bytes(graph),
            "weight_bytes": weight_bytes_by_dtype(graph),
            "params": params,
            "params_bytes_per_precision": {p: params * size
                                           for p, size in PRECISION_BYTES.items()}}
