"""The report's charts, drawn by matplotlib (figures made directly, no pyplot state) into inline
SVG: MACs and parameters per layer before and after, and the per-layer error along the network."""
from __future__ import annotations

import io
import re
from dataclasses import dataclass

from ..analysis import node_macs, node_params
from ..compare import CompareReport
from ..ir import Graph
from .extras import require

BEFORE_COLOR, AFTER_COLOR, DIVERGENT_COLOR = "#9ecae1", "#e6550d", "#d62728"


@dataclass(frozen=True)
class LayerCost:
    """MACs and params of one original layer, before and after (after: those of the optimized
    nodes that stand for it, counted at the first original node of their provenance)."""

    layer: str
    macs: tuple[int, int]
    params: tuple[int, int]


def layer_costs(original: Graph, optimized: Graph) -> list[LayerCost]:
    """Per original layer with MACs or params before or after, in the original's order."""
    order = [n.name for n in original.topological_order()]
    known = set(order)
    before = {n.name: (node_macs(n), node_params(n)) for n in original.nodes}
    after: dict[str, list[int]] = {}
    for node in optimized.nodes:
        # the original node a fused or rewritten node is charged to: the first it stands for
        # that the original graph has (a conv, not the batch norm folded into it)
        anchor = next((name for name in node.provenance if name in known), node.name)
        cost = after.setdefault(anchor, [0, 0])
        cost[0] += node_macs(node)
        cost[1] += node_params(node)
    rows = []
    for name in order + [n for n in after if n not in known]:
        macs0, params0 = before.get(name, (0, 0))
        macs1, params1 = after.get(name, (0, 0))
        if macs0 or params0 or macs1 or params1:
            rows.append(LayerCost(name, (macs0, macs1), (params0, params1)))
    return rows


def figure(width: float, height: float):
    require("matplotlib", "report", "the report's charts")
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout="constrained")


def to_svg(fig) -> str:
    """The figure as an `<svg>` element: text as text (the page's fonts), ids the same on every
    run (a fixed hash salt), no metadata."""
    import matplotlib
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "graphopt", "svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    # matplotlib's RDF <metadata> (creator, format) means nothing in a page
    return re.sub(r"<metadata>.*?</metadata>\s*", "", text[text.find("<svg"):], flags=re.S)


def cost_chart(costs: list[LayerCost]) -> str:
    """Grouped bars of MACs (top) and params (bottom) per layer, before and after."""
    fig = figure(min(24.0, max(7.0, 0.22 * len(costs) + 2)), 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True)
    positions = range(len(costs))
    for ax, what, unit, pick in ((top, "MACs", 1e6, lambda c: c.macs),
                                 (bottom, "params", 1e3, lambda c: c.params)):
        ax.bar([p - 0.2 for p in positions], [pick(c)[0] / unit for c in costs], 0.4,
               label="before", color=BEFORE_COLOR)
        ax.bar([p + 0.2 for p in positions], [pick(c)[1] / unit for c in costs], 0.4,
               label="after", color=AFTER_COLOR)
        ax.set_ylabel(f"{what} ({'M' if unit == 1e6 else 'K'})")
        ax.grid(axis="y", alpha=0.3)
    top.legend(loc="upper right")
    top.set_title("MACs and parameters per layer")
    bottom.set_xticks(list(positions), [c.layer for c in costs], rotation=90, fontsize=7)
    return to_svg(fig)


def error_chart(comparison: CompareReport) -> str:
    """Max relative error of each lined-up layer along the network (log scale), the tolerance
    as a dashed line, the first divergent layer marked."""
    layers = comparison.layers or []
    fig = figure(min(24.0, max(7.0, 0.18 * len(layers) + 2)), 3.8)
    ax = fig.subplots()
    floor = 1e-17    # an exact layer (error 0) still shows on the log axis
    errors = [max(layer.max_rel, floor) for layer in layers]
    ax.plot(range(len(layers)), errors, marker="o", markersize=3, color=AFTER_COLOR,
            label="max |error| / max |reference|")
    tolerances = [layer.tolerance for layer in layers]
    if tolerances:
        ax.step(range(len(layers)), tolerances, where="mid", linestyle="--", color="#555555",
                label="tolerance")
    first = comparison.first_divergent if comparison.layers is not None else None
    if first is not None:
        index = [layer.name for layer in layers].index(first)
        ax.axvline(index, color=DIVERGENT_COLOR, linewidth=1.5)
        ax.annotate(f"first divergent: {first}", (index, errors[index]),
                    textcoords="offset points", xytext=(6, 8), color=DIVERGENT_COLOR,
                    fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("relative error")
    ax.set_xticks(range(len(layers)), [layer.name for layer in layers], rotation=90,
                  fontsize=7)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"error per layer against the {comparison.reference_dtype} reference")
    return to_svg(fig)


def kernel_chart(names: list[str], milliseconds: list[float], title: str) -> str:
    """Horizontal bars: time per kernel (or ONNX Runtime node), the longest on top."""
    fig = figure(7.5, max(2.0, 0.22 * len(names) + 1.0))
    ax = fig.subplots()
    ax.barh(range(len(names))[::-1], milliseconds, color=AFTER_COLOR)
    ax.set_yticks(range(len(names))[::-1], names, fontsize=7)
    ax.set_xlabel("ms")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return to_svg(fig)
