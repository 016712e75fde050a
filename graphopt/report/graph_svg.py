"""A graph as Graphviz DOT, laid out by `dot` into SVG: nodes coloured by op family (the module
of `graphopt/ops/` that defines the op), fused and folded nodes listing the original nodes they
stand for (provenance), tensor shapes on the edges, changed nodes outlined. A graph with more
nodes than `max_nodes` is folded by block: nodes whose names share a dotted prefix
("layer1.0.conv1", "layer1.0.bn1") are drawn as one box."""
from __future__ import annotations

import re
import subprocess
from collections import Counter
from dataclasses import dataclass

from ..analysis import _human, node_macs
from ..errors import GraphoptError
from ..ir import Graph, Node, Value
from .extras import dot_executable

# Fill colour per op family (ops/<family>.py); other families get FALLBACK_COLOR.
FAMILY_COLORS = {"conv": "#9ecae1", "fused": "#6baed6", "linear": "#c6dbef",
                 "activation": "#fdd0a2", "epilogue": "#fdd0a2", "pool": "#a1d99b",
                 "binary": "#fcbba1", "math": "#fcbba1", "reduce": "#dadaeb",
                 "shape": "#e0e0e0", "resize": "#bcbddc", "cast": "#f7f7f7",
                 "quant": "#fee391"}
FALLBACK_COLOR = "#ffffff"
CHANGED_COLOR = "#d62728"
MAX_LISTED = 4          # provenance names written on a node; the rest are counted


def op_family(node: Node) -> str:
    """The family of a node's op: the name of the `graphopt.ops` module that defines it."""
    return type(node.op).__module__.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Changes:
    """What an optimization changed, by node name: `after` names the new or rewritten nodes of
    the optimized graph (another op, attributes or output type, or standing for other nodes),
    `before` the original nodes that no longer stand as they were."""

    before: frozenset[str]
    after: frozenset[str]

    @classmethod
    def of(cls, original: Graph, optimized: Graph) -> "Changes":
        originals = {n.name: n for n in original.nodes}
        kept = {n.name for n in optimized.nodes if n.name in originals
                and originals[n.name].op == n.op and n.provenance == (n.name,)
                and [v.type for v in originals[n.name].outputs] == [v.type for v in n.outputs]}
        return cls(frozenset(n.name for n in original.nodes if n.name not in kept),
                   frozenset(n.name for n in optimized.nodes if n.name not in kept))


def graph_svg(graph: Graph, changed: frozenset[str] = frozenset(), max_nodes: int = 120,
              fold_depth: int | None = None) -> str:
    """`graph` drawn as an `<svg>` element (for inlining in HTML), `changed` nodes outlined."""
    return render_svg(to_dot(graph, changed, max_nodes, fold_depth))


def render_svg(dot_source: str) -> str:
    """Lay `dot_source` out with Graphviz dot; the SVG element without its XML prologue."""
    dot = dot_executable()
    try:
        done = subprocess.run([dot, "-Tsvg"], input=dot_source.encode(), capture_output=True,
                              timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GraphoptError(f"Graphviz dot ({dot}) could not lay the graph out: {e}") from e
    if done.returncode != 0:
        raise GraphoptError(f"Graphviz dot ({dot}) failed on the graph: "
                            f"{done.stderr.decode(errors='replace').strip()[:500]}")
    svg = done.stdout.decode()
    start = svg.find("<svg")
    if start < 0:
        raise GraphoptError(f"Graphviz dot ({dot}) wrote no SVG")
    return svg[start:]


def block_key(name: str, depth: int) -> str:
    """The first `depth` parts of a dotted (or slashed, as torch's ONNX export writes) name."""
    parts = [p for p in re.split(r"[./]", name) if p]
    return ".".join(parts[:depth]) if len(parts) > depth else name


def fold_depth_for(graph: Graph, max_nodes: int) -> int | None:
    """The deepest name prefix that draws `graph` in at most `max_nodes` boxes (None: no fold
    needed; 1 when even that draws more)."""
    if len(graph.nodes) <= max_nodes:
        return None
    deepest = max(len([p for p in re.split(r"[./]", n.name) if p]) for n in graph.nodes)
    for depth in range(deepest - 1, 0, -1):
        if len({block_key(n.name, depth) for n in graph.nodes}) <= max_nodes:
            return depth
    return 1


def to_dot(graph: Graph, changed: frozenset[str] = frozenset(), max_nodes: int = 120,
           fold_depth: int | None = None) -> str:
    """The DOT source of `graph`; folded by block at `fold_depth` (default: as `max_nodes`
    requires, see `fold_depth_for`)."""
    depth = fold_depth if fold_depth is not None else fold_depth_for(graph, max_nodes)
    lines = [f"digraph {quote(graph.name)} {{", "  rankdir=TB; nodesep=0.25; ranksep=0.35;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8, color="#555555"];']
    for value in graph.inputs:
        lines.append(f"  {quote('in:' + value.name)} [label={quote(value.name)}, shape=oval, "
                     f'fillcolor="#ffffff"];')
    boxes = {n.name: (n.name if depth is None else block_key(n.name, depth))
             for n in graph.nodes}
    members: dict[str, list[Node]] = {}
    for node in graph.topological_order():
        members.setdefault(boxes[node.name], []).append(node)
    for box, nodes in members.items():
        lines.append("  " + (node_statement(nodes[0], changed) if len(nodes) == 1 and
                             nodes[0].name == box else block_statement(box, nodes, changed)))
    edges: dict[tuple[str, str], list[str]] = {}
    for node in graph.topological_order():
        for value in node.inputs:
            source = source_of(value, boxes)
            if source is not None and source != boxes[node.name]:
                edges.setdefault((source, boxes[node.name]), []).append(shape_label(value))
    for i, value in enumerate(graph.outputs):
        sink = "out:" + value.name
        lines.append(f"  {quote(sink)} [label={quote(value.name)}, shape=oval, "
                     f'fillcolor="#ffffff"];')
        source = source_of(value, boxes)
        if source is not None:
            edges.setdefault((source, sink), []).append(shape_label(value))
    for (source, target), labels in edges.items():
        shown = list(dict.fromkeys(labels))
        label = ", ".join(shown[:2]) + (" ..." if len(shown) > 2 else "")
        lines.append(f"  {quote(source)} -> {quote(target)} [label={quote(label)}];")
    lines.append("}")
    return "\n".join(lines)


def source_of(value: Value, boxes: dict[str, str]) -> str | None:
    """The box a value comes from: its producer's, a graph input's own, None for constants."""
    if value.producer is not None:
        return boxes[value.producer.name]
    return None if value.is_constant else "in:" + value.name


def node_statement(node: Node, changed: frozenset[str]) -> str:
    lines = [node.name, node.op_name + described(node)]
    if node.provenance != (node.name,):
        lines.append("stands for " + listed(node.provenance))
    macs = node_macs(node)
    if macs:
        lines.append(f"{_human(macs)} MACs")
    tooltip = f"{node.op}; provenance: {', '.join(node.provenance)}"
    return (f"{quote(node.name)} [label={quote(chr(10).join(lines))}, "
            f"fillcolor=\"{FAMILY_COLORS.get(op_family(node), FALLBACK_COLOR)}\", "
            f"tooltip={quote(tooltip)}{outline(node.name in changed)}];")


def block_statement(box: str, nodes: list[Node], changed: frozenset[str]) -> str:
    ops = Counter(n.op_name for n in nodes)
    families = Counter(op_family(n) for n in nodes)
    macs = sum(node_macs(n) for n in nodes)
    lines = [f"{box} ({len(nodes)} nodes)",
             ", ".join(f"{op} x{count}" if count > 1 else op for op, count in ops.items())]
    if macs:
        lines.append(f"{_human(macs)} MACs")
    edited = [n.name for n in nodes if n.name in changed]
    if edited:
        lines.append(f"{len(edited)} changed")
    tooltip = "; ".join(f"{n.name}: {n.op_name}" for n in nodes)
    color = FAMILY_COLORS.get(families.most_common(1)[0][0], FALLBACK_COLOR)
    return (f"{quote(box)} [label={quote(chr(10).join(lines))}, shape=box3d, "
            f"fillcolor=\"{color}\", tooltip={quote(tooltip[:1000])}{outline(bool(edited))}];")


def described(node: Node) -> str:
    """What a fused op carries besides its own name (its epilogue), in parentheses."""
    activation = getattr(node.op, "activation", None)
    extra = [activation.name] if activation is not None and hasattr(activation, "name") else []
    if getattr(node.op, "has_residual", False):
        extra.insert(0, "+residual")
    return f" ({', '.join(extra)})" if extra else ""


def listed(names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" +{len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def outline(changed: bool) -> str:
    return f', color="{CHANGED_COLOR}", penwidth=2.5' if changed else ""


def shape_label(value: Value) -> str:
    shape = "x".join(map(str, value.shape)) or "scalar"
    return shape if value.dtype == "float32" else f"{shape} {value.dtype}"


def quote(text: str) -> str:
    """A DOT string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
