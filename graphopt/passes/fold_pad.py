"""fold_pad: an explicit spatial pad feeding a convolution or a pooling becomes that op's own
padding (zero pad into conv2d and avg_pool2d, -inf pad into max_pool2d)."""
from __future__ import annotations

import dataclasses
import math

from ..errors import ShapeError
from ..ir import Graph, Value
from .manager import PassResult, register_pass
from .pattern import Match, Rule, any_value, apply_rules, merged_provenance, op

FILL = {"conv2d": 0.0, "avg_pool2d": 0.0, "max_pool2d": -math.inf}


def _folded_op(m: Match):
    """The consumer's op with the pad added to its padding; raises ShapeError if invalid."""
    consumer, pad = m.root.op, m["pad"].op
    (top, bottom), (left, right) = pad.pads[2], pad.pads[3]
    pt, pl, pb, pr = consumer.padding
    changes = {"padding": (pt + top, pl + left, pb + bottom, pr + right)}
    if m.root.op_name == "avg_pool2d":
        changes["count_include_pad"] = True    # the padded zeros were counted as elements
    return dataclasses.replace(consumer, **changes)


def _check(graph: Graph, m: Match) -> str | None:
    pad, name = m["pad"].op, m.root.op_name
    if len(pad.pads) != 4 or any(pad.pads[0]) or any(pad.pads[1]):
        return f"{pad} pads more than the spatial (H, W) axes"
    if pad.mode != "constant":
        return f"{pad} pads in mode {pad.mode}; {name} pads with a constant"
    if pad.value != FILL[name]:
        return f"{pad} fills with {pad.value}, {name} pads with {FILL[name]}"
    if name == "avg_pool2d" and any(m.root.op.padding) and not m.root.op.count_include_pad:
        return f"{m.root.op} already pads without counting the padding"
    try:
        folded = _folded_op(m).output_types(m["x"].type, *[v.type for v in m.root.inputs[1:]])
    except ShapeError as e:
        return f"the folded padding is invalid: {e.detail}"
    if folded != [m.root.output.type]:   # ceil_mode counts windows differently over padding
        return f"the folded op would return {folded[0]}, not {m.root.output.type}"
    return None


def _fold(graph: Graph, m: Match) -> Value:
    root = m.root
    node = graph.add_node(_folded_op(m), [m["x"], *root.inputs[1:]],
                          name=graph.fresh_name(f"{root.name}.padded"),
                          provenance=merged_provenance(m["pad"], root))
    return node.output


RULES = [Rule("pad into padding",
              op(tuple(FILL), op("pad", any_value("x"), name="pad", shared=True)), _fold, _check)]


@register_pass
def fold_pad(graph: Graph) -> PassResult:
    return apply_rules(graph, RULES)
