"""Per-node statistics of a graph: parameters, multiply-accumulates, and the summary table.

Duck-typed over `graphopt.ir` (it does not import it) so that `Graph.summary()` can delegate here."""
from __future__ import annotations

from .table import format_table


def node_params(node) -> int:
    """Elements of the constant inputs a node owns as parameters (not statistics buffers)."""
    buffers = node.op.buffer_inputs
    return sum(v.type.numel for i, v in enumerate(node.inputs)
               if v.is_constant and i not in buffers)


def node_macs(node) -> int:
    return int(node.op.macs([v.type for v in node.inputs], [v.type for v in node.outputs]))


def count_params(graph) -> int:
    # A constant shared by several nodes counts once.
    counted: dict[int, int] = {}
    for node in graph.nodes:
        for i, v in enumerate(node.inputs):
            if v.is_constant and i not in node.op.buffer_inputs:
                counted[id(v)] = v.type.numel
    return sum(counted.values())


def count_macs(graph) -> int:
    return sum(node_macs(n) for n in graph.nodes)


def _human(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def summary_dict(graph, target_choices: bool = False) -> dict:
    """`summary`'s content as the stable JSON form (docs/json.md)."""
    def tensor(v):
        return {"name": v.name, "shape": list(v.type.shape), "dtype": v.type.dtype}
    nodes = []
    for node in graph.topological_order():
        entry = {"name": node.name, "op": node.op_name,
                 "outputs": [tensor(v) for v in node.outputs], "params": node_params(node),
                 "macs": node_macs(node)}
        if target_choices:
            entry["computed_as"] = node.op.target_choice()
        nodes.append(entry)
    return {"graph": graph.name, "inputs": [tensor(v) for v in graph.inputs],
            "outputs": [tensor(v) for v in graph.outputs], "nodes": nodes,
            "totals": {"nodes": len(graph.nodes), "params": count_params(graph),
                       "macs": count_macs(graph),
                       "constant_bytes": sum(c.data.nbytes for c in graph.constants.values())}}


def summary(graph, target_choices: bool = False) -> str:
    """A table with one row per node (name, op, output shape, params, MACs) and the totals;
    `target_choices` adds how the target will compute each node (after its target passes)."""
    rows = []
    for node in graph.topological_order():
        out = ", ".join(str(v.type) for v in node.outputs)
        row = (node.name, node.op_name, out, f"{node_params(node):,}", _human(node_macs(node)))
        rows.append(row + ((node.op.target_choice(),) if target_choices else ()))
    header = ("node", "op", "output", "params", "MACs") + (("computed as",) if target_choices
                                                          else ())
    lines = [f"graph '{graph.name}': inputs " +
             ", ".join(f"{v.name}: {v.type}" for v in graph.inputs) + "; outputs " +
             ", ".join(f"{v.name}: {v.type}" for v in graph.outputs),
             format_table(rows, header, right=(3, 4), rule=True)]
    weight_bytes = sum(c.data.nbytes for c in graph.constants.values())
    lines.append(f"total: {len(graph.nodes)} nodes, {count_params(graph):,} params "
                 f"({weight_bytes / 2**20:.1f} MiB of constants), {_human(count_macs(graph))} MACs")
    return "\n".join(lines)
