"""convert_float16, convert_bfloat16: run a float32 graph in half precision. Float32 weights
become half-precision constants (rounded once, to nearest even) and the nodes computing in
float32 compute in the half dtype instead, each as its half-precision kernel does (float32
accumulation, the result rounded; see `ops.base.accumulator`). The graph's inputs and outputs
keep their float32 types: a `cast` stands at each precision boundary, and only there: one
after a graph input, one before a graph output, and around the nodes that stay float32.

These nodes stay float32:
- the nodes a `keep` list names (by node name, by the name of an original node they stand for
  after fusion, or by op name: `convert_precision("float16", keep=["softmax", "fc"])`);
- softmax: its small probabilities fall below float16's normal range (6e-5), bfloat16 keeps
  under 3 digits of them, and it is cheap and usually ends the network, where it costs no cast
  (the output's cast moves before it);
- a node reading a float32 constant with finite values the half dtype cannot hold (float16
  ends at 65504): rounding them to infinity would change what the node computes;
- a node whose op does not take the half dtype (its shape/dtype rule refuses it).
Batch normalization converts: its inference form is a per-channel multiply-add, computed in
float32 from its (rounded) statistics; `go.quantize` folds it into the layer before it first.

This pass is a walk over the graph rather than a table of rules: whether a value needs a cast
depends on the precision of all its users, not on a local pattern."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from .. import ops
from ..errors import PassError, ShapeError
from ..ir import HALF_DTYPES, Graph, Node, Value, float_info, is_float_dtype
from .manager import Pass, PassResult, register_pass
from .pattern import named_in

# Ops computing in float32 even in a converted graph, and why (reported with the pass's misses).
STAY_FLOAT32 = {"softmax": "softmax stays float32 (probabilities below half precision's range)"}
RULE = "convert to {dtype}"


def convert_precision(dtype: str, keep: Iterable[str] = ()) -> Pass:
    """The pass that converts float32 computation to `dtype` ("float16" or "bfloat16"),
    leaving the nodes `keep` names (node, original node or op names) in float32."""
    if dtype not in HALF_DTYPES:
        raise ValueError(f"expected a dtype in {HALF_DTYPES}, found {dtype!r}")
    kept = frozenset(keep)

    def convert(graph: Graph) -> PassResult:
        return _convert(graph, dtype, kept)

    convert.__name__ = convert.__qualname__ = f"convert_{dtype}"
    return convert


@register_pass
def convert_float16(graph: Graph) -> PassResult:
    return _convert(graph, "float16", frozenset())


@register_pass
def convert_bfloat16(graph: Graph) -> PassResult:
    return _convert(graph, "bfloat16", frozenset())


def stays_float32(node: Node, dtype: str, keep: frozenset[str]) -> str | None:
    """Why a float32 node stays float32 in a graph converted to `dtype`, or None."""
    if named_in(node, keep):
        return "kept in float32 (keep list)"
    if node.op_name in STAY_FLOAT32:
        return STAY_FLOAT32[node.op_name]
    largest = float(float_info(dtype).max)
    for v in node.inputs:
        if v.is_constant and v.dtype == "float32" and v.data.size:
            finite = v.data[np.isfinite(v.data)]
            if finite.size and float(np.abs(finite).max()) > largest:
                return f"constant %{v.name} holds values beyond {dtype}'s range (±{largest:g})"
    try:
        node.op.output_types(*(v.type.with_dtype(dtype) if v.dtype == "float32" else v.type
                               for v in node.inputs))
    except ShapeError as e:
        return f"{node.op_name} does not take {dtype}: {e.detail}"
    return None


def _computes_float32(node: Node) -> bool:
    """A node whose float inputs and outputs are all float32, with at least one float output
    (a cast converts dtypes: it is never converted itself)."""
    values = [*node.inputs, *node.outputs]
    return node.op_name != "cast" and any(is_float_dtype(v.dtype) for v in node.outputs) and \
        all(v.dtype == "float32" for v in values if is_float_dtype(v.dtype))


def _convert(graph: Graph, dtype: str, keep: frozenset[str]) -> PassResult:
    order = graph.topological_order()
    staying = {}
    converted = set()
    for node in order:
        if not _computes_float32(node):
            continue
        reason = stays_float32(node, dtype, keep)
        if reason is None:
            converted.add(id(node))
        else:
            staying[node.name] = reason
    misses = {RULE.format(dtype=dtype): sorted(staying.items())} if staying else {}
    if not converted:
        return PassResult(graph, False, {"misses": misses})
    rebuilt = _Rebuild(graph, dtype)
    for node in order:
        rebuilt.add(node, id(node) in converted)
    rebuilt.finish()
    stats = {"nodes converted": len(converted), "nodes kept float32": len(staying),
             "casts": rebuilt.casts, "weights converted": rebuilt.weights, "misses": misses}
    return PassResult(rebuilt.graph, True, stats)


class _Rebuild:
    """The converted graph, built node by node. Each value of the original graph may exist in
    the new one in several dtypes; `value(v, dtype)` gives it in `dtype`, adding the cast (or,
    for a constant, the converted array) the first time it is asked for."""

    def __init__(self, original: Graph, dtype: str):
        self.original, self.dtype = original, dtype
        self.graph = Graph(original.name)
        self.public = {id(v) for v in original.outputs}
        # id(original value) -> {dtype: value in the new graph}
        self.forms: dict[int, dict[str, Value]] = {}
        self.casts = self.weights = 0
        for v in original.inputs:
            self.forms[id(v)] = {v.dtype: self.graph.add_input(v.name, v.type)}

    def value(self, v: Value, dtype: str) -> Value:
        forms = self.forms.setdefault(id(v), {})
        if dtype in forms:
            return forms[dtype]
        if v.is_constant:   # its first form takes its name
            name = f"{v.name}.{dtype}" if forms else v.name
            forms[dtype] = self.graph.add_constant(name, v.data.astype(dtype))
            self.weights += v.dtype != dtype
            return forms[dtype]
        source = next(iter(forms.values()))
        # A half value widened to float32 and wanted in half again is the value itself.
        widened = source.producer is not None and source.producer.op_name == "cast" and \
            source.producer.inputs[0].dtype == dtype and source.dtype == "float32"
        if widened:
            forms[dtype] = source.producer.inputs[0]
            return forms[dtype]
        name = v.name if id(v) in self.public and dtype == v.dtype else f"{v.name}.{dtype}"
        cast = self.graph.add_node(ops.Cast(dtype), [source], name=f"{source.name}.to_{dtype}",
                                   output_names=[name])
        self.casts += 1
        forms[dtype] = cast.output
        return cast.output

    def add(self, node: Node, convert: bool) -> None:
        def wanted(v: Value) -> str:
            return self.dtype if convert and v.dtype == "float32" else v.dtype
        inputs = [self.value(v, wanted(v)) for v in node.inputs]
        # A graph output computed in half precision leaves through a cast that takes its name.
        names = [f"{v.name}.{self.dtype}" if id(v) in self.public and wanted(v) != v.dtype
                 else v.name for v in node.outputs]
        new = self.graph.add_node(node.op, inputs, name=node.name, output_names=names,
                                  provenance=node.provenance)
        for v, out in zip(node.outputs, new.outputs):
            self.forms.setdefault(id(v), {})[out.dtype] = out

    def finish(self) -> None:
        self.graph.set_outputs([self.value(v, v.dtype) for v in self.original.outputs])
        if self.graph.output_names != self.original.output_names:   # a name taken by a cast
            raise PassError(f"graph outputs {self.original.output_names} would be renamed "
                            f"{self.graph.output_names}")
