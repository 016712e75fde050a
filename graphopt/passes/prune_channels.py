"""prune_channels: remove channel units (see `graphopt.compression.channels`) from a graph, so
that it really shrinks: the filters computing them go from their convolutions and linear
layers, the weights reading them from their consumers (convolutions' input channels, linear
layers' feature blocks after a flatten), batch norms and per-channel constants lose them, and
grouped convolutions lose whole groups. A pass factory: `prune_channels(groups, removed)`
returns the pass for one choice of units."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import PassError
from ..ir import Graph, Node, Value
from .manager import Pass, PassResult


def _take(data: np.ndarray, kept: list[int] | None, axis: int, size: int) -> np.ndarray:
    """`data` with only the `kept` channels along `axis` (unchanged when all are kept)."""
    if kept is None or len(kept) == size:
        return data
    return np.ascontiguousarray(np.take(data, kept, axis=axis))


def _features(kept: list[int] | None, block: int) -> list[int] | None:
    """Channel indices -> the feature indices of a flattened value (block features each)."""
    if kept is None or block == 1:
        return kept
    return [c * block + i for c in kept for i in range(block)]


def prune_channels(groups, removed: set) -> Pass:
    """The pass removing the units whose roots are in `removed` from the graph `groups` was
    computed on (the graph it is given must have the same value names)."""

    def prune_channels(graph: Graph) -> PassResult:
        if not removed:
            return PassResult(graph, False)
        new = Graph(graph.name)
        values: dict[int, Value] = {}
        for v in graph.inputs:
            values[id(v)] = new.add_input(v.name, v.type)
        count = 0
        for node in graph.topological_order():
            op, arrays = _shrink(node, groups, removed)
            inputs = []
            for i, v in enumerate(node.inputs):
                if not v.is_constant:
                    inputs.append(values[id(v)])
                elif arrays[i] is v.data and id(v) in values:
                    inputs.append(values[id(v)])        # shared and unchanged: one constant
                else:
                    c = new.add_constant(v.name, arrays[i])
                    if arrays[i] is v.data:
                        values[id(v)] = c
                    inputs.append(c)
            try:
                copy = new.add_node(op, inputs, node.name, [o.name for o in node.outputs],
                                    node.provenance)
            except Exception as e:
                raise PassError(f"removing channels broke the node: {e}", node=node.name,
                                op=node.op_name) from e
            count += op is not node.op or any(a is not v.data for a, v in zip(arrays, node.inputs)
                                              if v.is_constant)
            for o, c in zip(node.outputs, copy.outputs):
                values[id(o)] = c
        for v in graph.constants.values():
            if not v.users and id(v) not in values:
                values[id(v)] = new.add_constant(v.name, v.data)
        new.set_outputs([values[id(v)] for v in graph.outputs])
        return PassResult(new, True, {"rewrites": {"nodes resized": count},
                                      "units removed": len(removed)})

    return prune_channels


def _shrink(node: Node, groups, removed: set) -> tuple[object, list]:
    """The node's op (new attributes where channels change them) and its inputs' arrays with
    the removed channels taken out (None for values computed at run time)."""
    op, name = node.op, node.op_name
    arrays = [v.data for v in node.inputs]
    kept_in = groups.kept(node.inputs[0].name, removed)
    out = node.outputs[0]
    kept_out = groups.kept(out.name, removed)
    size_out = groups.channels.get(out.name, 0)
    size_in = groups.channels.get(node.inputs[0].name, 0)
    if name in ("conv2d", "fused_conv2d", "conv_transpose2d", "linear"):
        conv = getattr(op, "conv", op)
        groups_count = getattr(conv, "groups", 1)
        if name == "conv_transpose2d":           # weight [I, O/groups, KH, KW]
            arrays[1] = _take(_take(arrays[1], kept_in, 0, size_in), kept_out, 1, size_out)
        elif groups_count > 1:                   # whole groups go: weight rows only
            arrays[1] = _take(arrays[1], kept_out, 0, size_out)
            if kept_out is not None and len(kept_out) != size_out:
                per_out = size_out // groups_count
                conv = dataclasses.replace(conv, groups=len({c // per_out for c in kept_out}))
                op = conv if name == "conv2d" else dataclasses.replace(op, conv=conv)
        else:
            block = groups.block.get(node.inputs[0].name, 1)
            features = _features(kept_in, block)
            arrays[1] = _take(_take(arrays[1], kept_out, 0, size_out), features, 1,
                              size_in * block)
        has_bias = op.has_bias if name == "fused_conv2d" else len(node.inputs) > 2
        if has_bias:
            arrays[2] = _take(arrays[2], kept_out, 0, size_out)
    elif name in ("batch_norm", "instance_norm"):
        arrays[1:] = [_take(a, kept_out, 0, size_out) for a in arrays[1:]]
    elif name in ("add", "sub", "mul", "div"):
        for i, v in enumerate(node.inputs):
            axis = 1 - (out.type.ndim - v.type.ndim)
            if v.is_constant and 0 <= axis < v.type.ndim and v.shape[axis] > 1:
                block = groups.block.get(out.name, 1)
                arrays[i] = _take(arrays[i], _features(kept_out, block), axis, size_out * block)
    elif name == "reshape" and kept_out is not None and len(kept_out) != size_out:
        op = dataclasses.replace(op, shape=(out.shape[0], len(kept_out) *
                                            groups.block[out.name]))
    return op, arrays
