"""fold_batch_norm: a batch_norm right after a conv2d, conv_transpose2d or linear layer becomes
part of that layer's weight and bias. The new constants are computed in float64 and rounded
once to the layer's dtype (exact for float64 graphs)."""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Value
from .manager import PassResult, register_pass
from .pattern import Match, Rule, apply_rules, const, merged_provenance, op

PRODUCERS = ("conv2d", "conv_transpose2d", "linear")


def _check(graph: Graph, m: Match) -> str | None:
    layer = m["layer"]
    for v in layer.inputs[1:]:
        if not v.is_constant:
            return f"{layer.op_name} '{layer.name}' has a computed weight or bias %{v.name}"
    if layer.op_name == "linear" and layer.output.type.ndim != 2:
        return (f"batch_norm normalises axis 1 of {layer.output.type}, not the features of "
                f"linear '{layer.name}'")
    return None


def _scaled_weight(layer, weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The weight with every output channel multiplied by its float64 scale: each product
    computed in float64 and rounded once to the weight's dtype, in one pass (numpy's buffered
    cast, without a float64 copy of the whole weight). The scale is laid out along whole rows
    of the weight, so numpy's inner loop runs over a row, not over one channel's taps."""
    if layer.op_name == "conv_transpose2d":   # [in, out/groups, kh, kw], groups split both
        groups = layer.op.groups
        cin, per_group = weight.shape[:2]
        taps = int(np.prod(weight.shape[2:], dtype=np.int64))
        view = weight.reshape(groups, cin // groups, per_group * taps)
        scale = np.repeat(scale.reshape(groups, per_group), taps, axis=1)[:, None, :]
    else:                                     # [out, ...]
        view, scale = weight.reshape(weight.shape[0], -1), scale.reshape(-1, 1)
    scaled = np.empty_like(view)
    np.multiply(view, scale, out=scaled, casting="same_kind")
    return scaled.reshape(weight.shape)


def _fold(graph: Graph, m: Match) -> Value:
    layer, bn = m["layer"], m.root
    gamma, beta, mean, var = (m[k].data.astype(np.float64)
                              for k in ("gamma", "beta", "mean", "var"))
    weight = layer.inputs[1].data
    bias = layer.inputs[2].data.astype(np.float64) if len(layer.inputs) > 2 else 0.0
    scale = gamma / np.sqrt(var + bn.op.epsilon)
    new_weight = _scaled_weight(layer, weight, scale)
    new_bias = ((bias - mean) * scale + beta).astype(weight.dtype)
    w = graph.add_constant(f"{layer.name}.weight_bn", new_weight)
    b = graph.add_constant(f"{layer.name}.bias_bn", new_bias)
    node = graph.add_node(layer.op, [layer.inputs[0], w, b],
                          name=graph.fresh_name(f"{bn.name}.folded"),
                          provenance=merged_provenance(layer, bn))
    return node.output


RULES = [Rule("layer + batch_norm",
              op("batch_norm", op(PRODUCERS, name="layer"), const("gamma"), const("beta"),
                 const("mean"), const("var")),
              _fold, _check)]


@register_pass
def fold_batch_norm(graph: Graph) -> PassResult:
    return apply_rules(graph, RULES)
