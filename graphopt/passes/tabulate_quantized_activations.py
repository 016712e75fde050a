"""tabulate_quantized_activations: an elementwise float chain between a per-tensor
`dequantize_linear` of uint8 values and a per-tensor `quantize_linear` (the activations a
quantized model computes in float: SiLU as sigmoid * x, hard-swish, sigmoid) becomes a lookup
in a 256-entry table of its results (`table_lookup`), as ONNX Runtime's QLinearSigmoid and
QLinearLeakyRelu do.

The table is the chain itself evaluated by the reference kernels on each of the 256 inputs,
so the rewritten graph computes what the interpreter computes for the chain, exactly; a
compiled kernel gets it exactly too (the chain's own kernel differs where its fast exp rounds
an output the other way). Applies where every node between the two is elementwise (the ops in
ELEMENTWISE) on values of the dequantized shape or scalar constants, and no value inside the
chain is read elsewhere; `go.quantize` leaves the chains of its `keep` list's nodes to the
compile (`tabulating(keep)`). int8 EfficientNet-B0 spent about a third of its time in these
chains (`fused_dequantize_sigmoid_multiply_quantize`, 0.7 ns an element on a Zen 4 core).

A chain whose float result is read by something other than such a quantize (a squeeze-excite
block's SiLU, read by its pooling and by the scaling) becomes a lookup in a table of float
results, where the chain computes one of the COSTLY ops (a lookup costs more than a dequantize
and a relu, less than an exp); it ends where no reader extends it."""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node, Value
from ..ops.quant import TableLookup
from .manager import PassResult, register_pass
from .pattern import Match, Miss, Rule, apply_rules, named_in, op

# Ops whose output element i depends only on their inputs' elements i.
ELEMENTWISE = frozenset({"identity", "relu", "clip", "leaky_relu", "sigmoid", "tanh",
                         "hard_sigmoid", "hard_swish", "gelu", "exp", "log", "sqrt", "erf", "add",
                         "sub", "mul", "div"})
TABLE_SIZE = 256
# Ops that cost more per element than a lookup in a table of 256 floats (a vector gather).
COSTLY = frozenset({"sigmoid", "tanh", "gelu", "exp", "log", "erf"})


def _per_tensor(node: Node) -> bool:
    """Whether a (de)quantize node's scale and zero point are scalar constants."""
    return all(v.is_constant and v.data.size == 1 for v in node.inputs[1:3])


def chain_of(graph: Graph, quantize: Node, keep: frozenset[str] = frozenset()) -> Node:
    """The dequantize_linear starting the chain that `quantize` ends, or Miss with the reason
    it is not a chain this pass tabulates (one of its nodes named in `keep`, among them)."""
    if not _per_tensor(quantize):
        raise Miss("not a per-tensor quantize_linear", near=False)
    return _chain(graph, quantize.inputs[0], keep, end_reader=quantize)[0]


def float_chain_of(graph: Graph, end: Node, keep: frozenset[str] = frozenset()) -> Node:
    """The dequantize_linear starting the chain whose float result `end` computes, where the
    chain has a COSTLY op and none of `end`'s readers extends it (a longer float chain, or a
    quantize that `chain_of` takes); Miss otherwise."""
    dequantize, nodes = _chain(graph, end.output, keep)
    if not any(n.op_name in COSTLY for n in nodes):
        raise Miss("no op of the chain costs more than a lookup", near=False)
    for reader in end.output.users:
        if reader.op_name == "quantize_linear":
            extends = _tabulates(lambda: chain_of(graph, reader, keep))
        else:
            extends = reader.op_name in ELEMENTWISE and len(reader.outputs) == 1 and \
                _tabulates(lambda: _chain(graph, reader.output, keep))
        if extends:
            raise Miss(f"{reader.name} extends the chain", near=False)
    return dequantize


def _tabulates(chain) -> bool:
    try:
        chain()
    except Miss:
        return False
    return True


def _chain(graph: Graph, end: Value, keep: frozenset[str],
           end_reader: Node | None = None) -> tuple[Node, list[Node]]:
    """(the dequantize_linear, the chain's nodes) of the elementwise chain computing `end`
    from one per-tensor dequantized uint8 value; Miss where it is not one. Values inside the
    chain may be read only by its nodes; `end` by anything, or only by `end_reader` where
    given."""
    shape = end.shape
    found, stack, sources = {}, [end], []
    while stack:
        value = stack.pop()
        node = value.producer
        if node is None or id(node) in found:
            if node is None:
                raise Miss(f"reads {value.name}, not computed from one dequantized value",
                           near=False)
            continue
        if node.op_name == "dequantize_linear":
            sources.append(node)
            found[id(node)] = node
            continue
        if node.op_name not in ELEMENTWISE or value.shape != shape or \
                value.dtype != end.dtype:
            raise Miss(f"{node.name} ({node.op_name}) is not elementwise on the chain's "
                       f"values", near=False)
        found[id(node)] = node
        for v in node.inputs:
            if v.is_constant:
                if v.data.size != 1:
                    raise Miss(f"{node.name} reads the non-scalar constant {v.name}")
            else:
                stack.append(v)
    if len(sources) != 1:
        raise Miss(f"reads {len(sources)} dequantized values, not one", near=False)
    (dequantize,) = sources
    x = dequantize.inputs[0]
    if x.dtype != "uint8" or not _per_tensor(dequantize) or dequantize.output.shape != shape:
        raise Miss(f"{dequantize.name} is not a per-tensor dequantize_linear of uint8 values "
                   "in the chain's shape")
    kept = [n.name for n in found.values() if named_in(n, keep)]
    if kept:
        raise Miss(f"{kept[0]} is kept in float32 (keep list)")
    inside = set(found)
    for node in found.values():
        if node.output is end and end_reader is None:
            continue
        readers = {id(u) for u in node.output.users} - inside - {id(end_reader)}
        if readers or any(node.output is v for v in graph.outputs):
            raise Miss(f"{node.output.name} is also read outside the chain")
    return dequantize, list(found.values())


def table_of(dequantize: Node, end: Value) -> np.ndarray:
    """`end` (the chain's float result, or the quantized output of the quantize ending it) for
    each uint8 input 0..255 of the chain starting at `dequantize`, by the reference kernels
    (each node evaluated once, from `end` back)."""
    rank = len(dequantize.output.shape)
    codes = np.arange(TABLE_SIZE, dtype=np.uint8).reshape((1,) * (rank - 1) + (TABLE_SIZE,))
    values: dict[int, np.ndarray] = {id(dequantize.inputs[0]): codes}

    def read(v: Value) -> np.ndarray:
        if v.is_constant:
            return v.data
        if id(v) not in values:
            values[id(v)] = v.producer.op.reference(*(read(u) for u in v.producer.inputs))
        return values[id(v)]

    return np.ascontiguousarray(read(end).reshape(TABLE_SIZE))


def tabulating(keep: frozenset[str] = frozenset()):
    """The pass, leaving the chains of the nodes `keep` names (`go.quantize`'s keep list) as
    they are."""

    def check(graph: Graph, m: Match) -> str | None:
        chain_of(graph, m.root, keep)
        return None

    def check_float(graph: Graph, m: Match) -> str | None:
        float_chain_of(graph, m.root, keep)
        return None

    def lookup(graph: Graph, end: Node, dequantize: Node) -> Value:
        table = graph.add_constant(graph.fresh_name(f"{end.name}.table"),
                                   table_of(dequantize, end.output))
        return graph.add_node(TableLookup(), [dequantize.inputs[0], table],
                              name=graph.fresh_name(f"{end.name}.lookup"),
                              provenance=end.provenance).output

    rules = [Rule("dequantize -> elementwise chain -> quantize as a table lookup",
                  op("quantize_linear"),
                  lambda graph, m: lookup(graph, m.root, chain_of(graph, m.root, keep)), check),
             Rule("dequantize -> elementwise chain with a costly op as a table of floats",
                  op(tuple(sorted(ELEMENTWISE))),
                  lambda graph, m: lookup(graph, m.root, float_chain_of(graph, m.root, keep)),
                  check_float, report_misses=False)]   # its root is any elementwise node

    def tabulate_quantized_activations(graph: Graph) -> PassResult:
        return apply_rules(graph, rules)

    return tabulate_quantized_activations


tabulate_quantized_activations = register_pass(tabulating())

__all__ = ["COSTLY", "ELEMENTWISE", "chain_of", "float_chain_of", "table_of",
           "tabulate_quantized_activations", "tabulating"]
