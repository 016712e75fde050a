"""eliminate_common_subexpressions: merge constants holding equal data, then nodes applying an
equal op to the same inputs (value numbering in topological order; add and mul commute).

Hand-written rather than a rule table: value numbering needs a table of the nodes seen so far,
which a local pattern cannot express."""
from __future__ import annotations

import hashlib

import numpy as np

from ..ir import Graph, Value
from .manager import PassResult, register_pass, sample_digest
from .pattern import allow_rewrite, can_take_over, replace_value

COMMUTATIVE = ("add", "mul")


def _merge_constants(graph: Graph) -> int:
    """Constants are grouped by type and a digest of a sample of their elements; only within a
    group are whole arrays hashed and compared (hashing every weight took VGG-16's compile
    0.7 s, run twice in the default pipeline)."""
    seen: dict[tuple, list[Value]] = {}
    digests: dict[int, bytes] = {}
    merged = 0

    def digest(value: Value) -> bytes:
        if id(value) not in digests:
            data = np.ascontiguousarray(value.data).view(np.uint8)
            digests[id(value)] = hashlib.sha1(data).digest()
        return digests[id(value)]

    def equal(a: Value, b: Value) -> bool:
        return a.data is b.data or (digest(a) == digest(b) and np.array_equal(a.data, b.data))

    for c in list(graph.constants.values()):
        bucket = seen.setdefault((c.dtype, c.shape, sample_digest(c.data)), [])
        twin = next((k for k in bucket if equal(k, c)), None)
        if twin is None:
            bucket.append(c)
        elif can_take_over(graph, c, twin) is None and allow_rewrite("equal constants", c.name):
            graph.replace_all_uses(c, twin)
            merged += 1
    graph.remove_unused_constants()
    return merged


def _merge_nodes(graph: Graph) -> int:
    seen: dict[tuple, Value] = {}
    merged = 0
    for node in graph.topological_order():
        if len(node.outputs) != 1:
            continue
        operands = [id(v) for v in node.inputs]
        if node.op_name in COMMUTATIVE:
            operands.sort()
        try:
            key = (node.op, tuple(operands))
            twin = seen.setdefault(key, node.output)
        except TypeError:    # an op with an unhashable attribute is never merged
            continue
        if twin is node.output or can_take_over(graph, node.output, twin) is not None:
            continue
        if not allow_rewrite("equal nodes", node.name):
            break
        replace_value(graph, node.output, twin, [node])
        merged += 1
    return merged


@register_pass
def eliminate_common_subexpressions(graph: Graph) -> PassResult:
    g = graph.copy()
    constants = _merge_constants(g)
    nodes = _merge_nodes(g)
    if not constants and not nodes:
        return PassResult(graph, False, {})
    return PassResult(g, True, {"rewrites": {k: v for k, v in (("equal constants", constants),
                                                               ("equal nodes", nodes)) if v}})
