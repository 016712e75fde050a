"""Reshapes the target passes' rewrites put around a node, views of its input or output (in
the models measured TVM built no kernel for them): `images_as_pixels`, `planes_as_rows`."""
from __future__ import annotations

from ....ir import Graph, Value
from ....ops.shape import Reshape


def reshaped(graph: Graph, value: Value, shape, name: str, provenance) -> Value:
    """`value` reshaped to `shape` by a new node of `graph` named after `name` (made fresh),
    standing for `provenance`."""
    return graph.add_node(Reshape(tuple(shape)), [value], name=graph.fresh_name(name),
                          provenance=provenance).output
