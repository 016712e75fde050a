"""A graph for Netron: graphopt's ONNX export, except that each fused node is one node of the
custom domain `ai.graphopt` (op type `FusedConv2d` ...) carrying the op's attributes, the
original nodes it stands for and how the target computes it, instead of the chain of standard
ONNX nodes the export writes for runtimes. `serve` hands the file to netron's server."""
from __future__ import annotations

import dataclasses
import os

from ..ir import Graph, Node
from ..ops.base import Op
from .extras import require
from .graph_svg import op_family

DOMAIN = "ai.graphopt"
DOMAIN_VERSION = 1


def is_composite(node: Node, exported: int) -> bool:
    """Whether Netron shows `node` as one graphopt node: an op made by a fusion pass
    (ops/fused.py), or a node standing for several original nodes that the export writes as
    several ONNX nodes (a quantized convolution with its residual, ...)."""
    return op_family(node) == "fused" or (exported > 1 and len(node.provenance) > 1)


def view_model(graph: Graph, decided: bool = False):
    """The ONNX model (onnx.ModelProto) Netron is shown: passes onnx.checker; runtimes do not
    know its `ai.graphopt` ops. `decided`: the graph went through a target's passes, so each
    node also says how the target computes it."""
    import onnx
    from onnx import helper
    from ..frontends.onnx_export import EXPORTERS, ExportContext, to_onnx
    model = to_onnx(graph)      # inputs, outputs, weights and value types as runtimes get them
    context = ExportContext(graph)
    nodes = []
    for node in graph.topological_order():
        start = len(context.nodes)
        EXPORTERS[node.op_name](context, node)
        written = context.nodes[start:]
        if is_composite(node, len(written)):
            nodes.append(composite_node(node, decided))
        else:
            notes = ([f"stands for {', '.join(node.provenance)}"]
                     if node.provenance != (node.name,) else []) + \
                ([f"computed as {node.op.target_choice()}"]
                 if decided and node.op.target_choice() else [])
            written[-1].doc_string = "; ".join(notes)
            nodes.extend(written)
    read = {name for n in nodes for name in n.input}
    weights = [t for t in model.graph.initializer if t.name in graph.constants and t.name in read]
    made = [t for t in context.initializers if t.name in read]
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(weights + made)
    produced = {name for n in nodes for name in n.output}
    kept = [v for v in model.graph.value_info if v.name in produced]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    onnx.checker.check_model(model)
    return model


def composite_node(node: Node, decided: bool = False):
    """One `ai.graphopt` node for `node`: its op's attributes (nested ops' under their field's
    name: `conv.stride`, `activation` and `activation.alpha`), `stands_for` and, when a target
    `decided`, `computed_as`."""
    from onnx import helper
    attributes = flatten(node.op)
    attributes["stands_for"] = list(node.provenance)
    if decided and node.op.target_choice():
        attributes["computed_as"] = node.op.target_choice()
    return helper.make_node(op_type(node.op_name), [v.name for v in node.inputs],
                            [v.name for v in node.outputs], name=node.name, domain=DOMAIN,
                            doc_string=str(node.op), **attributes)


def op_type(op_name: str) -> str:
    """fused_conv2d -> FusedConv2d, as ONNX names its ops."""
    return "".join(part[:1].upper() + part[1:] for part in op_name.split("_"))


def flatten(op: Op, prefix: str = "") -> dict:
    """An op's attributes as ONNX attribute values (ints, floats, strings and their lists); a
    nested op is its name under the field's own name, then its attributes under `field.`."""
    found = {}
    for field in dataclasses.fields(op):
        key, value = prefix + field.name, getattr(op, field.name)
        if isinstance(value, Op):
            found[key] = value.name
            found.update(flatten(value, key + "."))
        elif isinstance(value, bool):
            found[key] = int(value)
        elif isinstance(value, (int, float, str)):
            found[key] = value
        elif isinstance(value, tuple) and value and all(isinstance(v, (int, float))
                                                        and not isinstance(v, bool)
                                                        for v in value):
            found[key] = list(value)
        elif value is not None and value != ():
            found[key] = str(value)
    return found


def save_view(graph: Graph, path: str, decided: bool = False) -> str:
    """Write `view_model(graph, decided)` to `path` (atomically)."""
    from ..frontends.onnx_export import write_model
    write_model(view_model(graph, decided), os.fspath(path))
    return path


def serve(path: str, host: str = "localhost", port: int = 0, browse: bool = True):
    """Start Netron's server on the model file at `path` (port 0: a free one), opening it in
    the browser when `browse`; returns the (host, port) it listens on."""
    netron = require("netron", "view", "graphopt view")
    return netron.start(path, address=(host, port), browse=browse)
