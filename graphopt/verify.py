"""Structural checks of a graph, cheap enough to run after every pass."""
from __future__ import annotations

from .errors import GraphoptError, VerifyError
from .ir import Graph, TensorType


def verify(graph: Graph) -> Graph:
    """Check SSA, acyclicity, that every use is defined and that values and their users list each
    other, that constants match their types and that every node's output types equal its op's
    inference. Returns the graph; raises VerifyError."""
    defined: dict[int, str] = {}
    names: set[str] = set()

    def define(value, where: str) -> None:
        if value.name in names:
            raise VerifyError(f"value name '{value.name}' is defined twice (SSA), again by {where}")
        names.add(value.name)
        defined[id(value)] = value.name

    for v in graph.inputs:
        if v.producer is not None or v.data is not None:
            raise VerifyError(f"graph input '{v.name}' must have neither producer nor data")
        define(v, "a graph input")
    for name, c in graph.constants.items():
        if c.data is None or name != c.name:
            raise VerifyError(f"constant '{name}' has no data or a mismatched name")
        if TensorType.of(c.data) != c.type:
            raise VerifyError(f"constant '{name}' is declared {c.type} but holds "
                              f"{TensorType.of(c.data)}")
        define(c, "a constant")
    node_names: set[str] = set()
    for node in graph.nodes:
        if node.name in node_names:
            raise VerifyError("node name is used twice", node=node.name, op=node.op_name)
        node_names.add(node.name)
        for out in node.outputs:
            if out.producer is not node:
                raise VerifyError(f"output %{out.name} does not point back at its node",
                                  node=node.name, op=node.op_name)
            define(out, f"node '{node.name}'")
    for node in graph.nodes:
        for i, v in enumerate(node.inputs):
            if id(v) not in defined:
                raise VerifyError(f"input {i} (%{v.name}) is not defined in the graph (dangling use)",
                                  node=node.name, op=node.op_name)
            if node not in v.users:
                raise VerifyError(f"input %{v.name} does not list this node among its users",
                                  node=node.name, op=node.op_name)
    # The other direction: every node a value lists among its users is a node of this graph
    # that reads the value, listed once (passes walk `users` to find what to rewrite).
    members = {id(node) for node in graph.nodes}
    for value in graph.values():
        listed: set[int] = set()
        for user in value.users:
            if id(user) not in members:
                raise VerifyError(f"%{value.name} lists this node among its users, but the node "
                                  "is not in the graph", node=user.name, op=user.op_name)
            if not any(v is value for v in user.inputs):
                raise VerifyError(f"%{value.name} lists this node among its users, but the node "
                                  "does not read it", node=user.name, op=user.op_name)
            if id(user) in listed:
                raise VerifyError(f"%{value.name} lists this node twice among its users",
                                  node=user.name, op=user.op_name)
            listed.add(id(user))
    for v in graph.outputs:
        if id(v) not in defined:
            raise VerifyError(f"graph output %{v.name} is not defined in the graph")
    graph.topological_order()   # raises VerifyError on a cycle
    for node in graph.nodes:
        try:
            expected = node.op.output_types(*[v.type for v in node.inputs])
        except GraphoptError as e:
            raise VerifyError(f"shape/dtype inference fails: {e.detail}", node=node.name,
                              op=node.op_name) from None
        found = [v.type for v in node.outputs]
        if expected != found:
            raise VerifyError(f"expected output types {', '.join(map(str, expected))}, found "
                              f"{', '.join(map(str, found))}", node=node.name, op=node.op_name)
    return graph


def is_valid(graph: Graph) -> bool:
    try:
        verify(graph)
    except VerifyError:
        return False
    return True


__all__ = ["verify", "is_valid"]
