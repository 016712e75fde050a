"""Channel groups: which channels of a graph can be removed together, and what reads them.

Every channel of every tensor with a channel axis (axis 1 of NCHW activations and of [N, F]
features) is a slot; ops tie slots together: an elementwise op ties channel c of its operands
and its output, a residual add ties the channels of every producer of the sum, a concat ties
its inputs' channels to offsets of its output, a grouped convolution ties all channels of a
group (removed only as a whole group), a flatten ties channel c to a block of features. Slots
tied together form a **unit**, removed as one; the filters that produce a unit's channels are
its **sources**. Units that reach a graph output, a graph input or an op whose channels cannot
shrink (softmax, lrn, transpose, ...) are pinned. The ties are kept in networkx's UnionFind.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from networkx.utils import UnionFind

from ..ir import Graph, Node, Value
from ..ops.activation import Softmax, Unary

# Ops that produce new channels from their input's (filters): output slots are fresh sources.
SOURCE_OPS = ("conv2d", "fused_conv2d", "linear", "conv_transpose2d")
# Ops whose output channel c is their input channel c (and whose constant inputs, if any, are
# per-channel parameters along axis 0: a batch norm's scale, bias, mean and variance, an
# instance norm's scale and bias), besides the elementwise unary ops (activation.Unary).
CHANNELWISE_OPS = ("batch_norm", "instance_norm", "max_pool2d", "avg_pool2d", "global_avg_pool2d",
                   "global_max_pool2d", "resize")
ELEMENTWISE_BINARY = ("add", "sub", "mul", "div")

Slot = tuple[str, int]     # (value name, channel index)


@dataclass
class Unit:
    """Channels removed together: `slots` in every value they appear in, `sources` the
    (node, output channel) filters that compute them, `pinned` when they must stay."""

    root: Slot
    slots: list[Slot] = field(default_factory=list)
    sources: list[tuple[str, int]] = field(default_factory=list)
    pinned: bool = False

    @property
    def source_layers(self) -> tuple[str, ...]:
        return tuple(sorted({name for name, _ in self.sources}))


@dataclass
class ChannelGroups:
    """The units of a graph. `families` groups the prunable units by the layers that compute
    them (one family per conv, or per set of convs tied by residual adds); `block[value]` is the
    number of features per channel of a flattened value (1 elsewhere)."""

    graph: Graph
    units: dict[Slot, Unit]
    slot_root: dict[Slot, Slot]
    channels: dict[str, int]
    block: dict[str, int]
    why_pinned: dict[Slot, str]

    def families(self) -> dict[tuple[str, ...], list[Unit]]:
        found: dict[tuple[str, ...], list[Unit]] = defaultdict(list)
        for unit in self.units.values():
            if not unit.pinned and unit.sources:
                found[unit.source_layers].append(unit)
        return dict(found)

    def kept(self, value: str, removed: set[Slot]) -> list[int] | None:
        """The channels of `value` that stay when the units rooted at `removed` go (None: the
        value has no tracked channel axis)."""
        if value not in self.channels:
            return None
        return [c for c in range(self.channels[value])
                if self.slot_root[(value, c)] not in removed]

    def pin_reasons(self, layer: str) -> list[str]:
        """Why the channels a layer computes are pinned (for reports and errors)."""
        return sorted({self.why_pinned[u.root] for u in self.units.values()
                       if u.pinned and any(n == layer for n, _ in u.sources)
                       and u.root in self.why_pinned})


def channel_axis(value: Value) -> int | None:
    """Axis 1 of tensors of rank >= 2 (NCHW activations, [N, F] features)."""
    return 1 if value.type.ndim >= 2 else None


class _Analysis:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.ties = UnionFind()
        self.channels: dict[str, int] = {}
        self.block: dict[str, int] = {}
        self.sources: list[tuple[Slot, str, int]] = []
        self.pins: list[tuple[Slot, str]] = []

    def track(self, value: Value, block: int = 1) -> bool:
        """Give `value` slots (one per channel); False when it has no channel axis."""
        if value.is_constant or channel_axis(value) is None:
            return False
        count = value.shape[1] // block
        self.channels[value.name], self.block[value.name] = count, block
        for c in range(count):
            self.ties[(value.name, c)]     # UnionFind adds an element on first lookup
        return True

    def tie(self, a: Value, b: Value, offset: int = 0) -> None:
        for c in range(self.channels[a.name]):
            self.ties.union((a.name, c), (b.name, c + offset))

    def pin(self, value: Value, reason: str) -> None:
        for c in range(self.channels.get(value.name, 0)):
            self.pins.append(((value.name, c), reason))

    def run(self) -> ChannelGroups:
        for v in self.graph.inputs:
            if self.track(v):
                self.pin(v, f"graph input '{v.name}'")
        for node in self.graph.topological_order():
            self.visit(node)
        for v in self.graph.outputs:
            self.pin(v, f"graph output '{v.name}'")
        units: dict[Slot, Unit] = {}
        slot_root: dict[Slot, Slot] = {}
        for value, count in self.channels.items():
            for c in range(count):
                root = self.ties[(value, c)]
                slot_root[(value, c)] = root
                units.setdefault(root, Unit(root)).slots.append((value, c))
        for slot, layer, channel in self.sources:
            units[slot_root[slot]].sources.append((layer, channel))
        why: dict[Slot, str] = {}
        for slot, reason in self.pins:
            root = slot_root[slot]
            units[root].pinned = True
            why.setdefault(root, reason)
        return ChannelGroups(self.graph, units, slot_root, self.channels, self.block, why)

    # ---- per op ---------------------------------------------------------------------------------
    def visit(self, node: Node) -> None:
        op, name = node.op, node.op_name
        inputs = [v for v in node.inputs if v.name in self.channels]
        if len(node.outputs) != 1:
            for v in inputs:
                self.pin(v, f"read by {name} '{node.name}'")
            return
        out = node.output
        if name in SOURCE_OPS:
            self.visit_source(node)
        elif name in CHANNELWISE_OPS or (isinstance(op, Unary) and not isinstance(op, Softmax)) \
                or (name == "pad" and len(op.pads) > 1 and tuple(op.pads[1]) == (0, 0)):
            x = node.inputs[0]
            if not all(v.is_constant for v in node.inputs[1:]):
                return self.untracked(node)
            if x.name in self.channels and self.track(out, self.block[x.name]) and \
                    self.channels[out.name] == self.channels[x.name]:
                self.tie(x, out)
            else:
                self.untracked(node)
        elif name in ELEMENTWISE_BINARY:
            self.visit_binary(node)
        elif name == "concat":
            self.visit_concat(node)
        elif name in ("flatten", "reshape") and self.is_flatten(node):
            x = node.inputs[0]
            self.track(out, x.shape[2] * x.shape[3] if x.type.ndim == 4 else 1)
            self.tie(x, out)
        else:
            self.untracked(node)

    def untracked(self, node: Node) -> None:
        """An op whose channels cannot shrink: its inputs' channels are pinned, its outputs
        get slots of their own, pinned too (nothing downstream may remove them)."""
        for v in node.inputs:
            self.pin(v, f"read by {node.op_name} '{node.name}'")
        for out in node.outputs:
            if self.track(out):
                self.pin(out, f"computed by {node.op_name} '{node.name}'")

    def is_flatten(self, node: Node) -> bool:
        """flatten(axis=1) of [N, C, ...], or the reshape to [N, C*H*W] that does the same."""
        x, out = node.inputs[0], node.output
        if x.name not in self.channels or self.block[x.name] != 1 or out.type.ndim != 2:
            return False
        return out.shape[0] == x.shape[0] and (node.op_name == "reshape" or node.op.axis == 1)

    def visit_source(self, node: Node) -> None:
        op, out = node.op, node.output
        x = node.inputs[0]
        parameters = node.inputs[1:-1] if getattr(op, "has_residual", False) else node.inputs[1:]
        if not all(v.is_constant for v in parameters) or \
                (node.op_name == "linear" and out.type.ndim != 2):
            return self.untracked(node)   # weights computed at run time, or [N, T, F] features
        conv = getattr(op, "conv", op)          # fused_conv2d keeps its conv's attributes
        groups = getattr(conv, "groups", 1)
        self.track(out)
        for c in range(self.channels.get(out.name, 0)):
            self.sources.append(((out.name, c), node.name, c))
        if groups > 1 and x.name in self.channels:
            if node.op_name == "conv_transpose2d":
                self.pin(x, f"read by grouped conv_transpose2d '{node.name}'")
                self.pin(out, f"computed by grouped conv_transpose2d '{node.name}'")
            else:
                # A group is removed as a whole: its input and output channels are one unit.
                per_in, per_out = x.shape[1] // groups, out.shape[1] // groups
                for g in range(groups):
                    first = (out.name, g * per_out)
                    for c in range(per_in):
                        self.ties.union(first, (x.name, g * per_in + c))
                    for c in range(per_out):
                        self.ties.union(first, (out.name, g * per_out + c))
        elif x.name in self.channels and self.block[x.name] != 1 and node.op_name != "linear":
            self.pin(x, f"read by {node.op_name} '{node.name}'")
        if node.op_name == "fused_conv2d" and op.has_residual:
            residual = node.inputs[-1]
            if residual.name in self.channels:
                self.tie(residual, out)
            else:
                self.pin(out, f"added to an untracked residual in '{node.name}'")

    def visit_binary(self, node: Node) -> None:
        out = node.output
        if not self.track(out):
            return self.untracked(node)
        for v in node.inputs:
            axis = 1 - (out.type.ndim - v.type.ndim)
            size = v.shape[axis] if 0 <= axis < v.type.ndim else 1
            if size == 1:
                continue                         # broadcast along channels: no tie
            if v.is_constant:
                continue                         # a per-channel constant: sliced with them
            if v.name in self.channels and axis == 1 and \
                    self.block[v.name] == self.block[out.name]:
                self.tie(v, out)
            else:
                self.pin(out, f"{node.op_name} '{node.name}' reads '{v.name}' along channels")
                self.pin(v, f"read by {node.op_name} '{node.name}'")

    def visit_concat(self, node: Node) -> None:
        out = node.output
        axis = node.op.axis + out.type.ndim if node.op.axis < 0 else node.op.axis
        tracked = all(v.name in self.channels and self.block[v.name] == 1 for v in node.inputs)
        if not tracked or not self.track(out):
            return self.untracked(node)
        offset = 0
        for v in node.inputs:
            self.tie(v, out, offset if axis == 1 else 0)
            offset += v.shape[1] if axis == 1 else 0


def channel_groups(graph: Graph) -> ChannelGroups:
    """The channel units of `graph` (see the module docstring)."""
    return _Analysis(graph).run()
