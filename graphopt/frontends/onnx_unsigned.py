"""An ONNX model with every signed 8-bit operand of an integer product made unsigned.

ONNX Runtime multiplies uint8 by int8 with `vpmaddubsw` on x86 CPUs without VNNI (AVX2 and
plain AVX-512): each pair of products is summed in int16 *with saturation*, so a
QLinearConv, ConvInteger, MatMulInteger or QLinearMatMul (or the QDQ group it fuses into)
whose uint8 x int8 pairs pass 32767 returns wrong values there, and exact ones on VNNI or AMX
CPUs. Its uint8 x uint8 kernels widen to int16 and multiply with `vpmaddwd`: exact everywhere.
Adding 128 to an int8 tensor and to its zero point leaves every `q - zero_point` as it was, so
the model rewritten here computes exactly what the ONNX semantics say on every x86 CPU. This is
how graphopt runs ONNX Runtime as a *reference* (`compare.onnxruntime_outputs`); the models
graphopt exports keep their int8 weights, as `quantize_static` writes them.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper, numpy_helper

# Integer products: for each op, the (value, zero point) input positions of its 8-bit operands.
PRODUCT_OPERANDS = {
    "ConvInteger": ((0, 2), (1, 3)),
    "MatMulInteger": ((0, 2), (1, 3)),
    "QLinearConv": ((0, 2), (3, 5)),
    "QLinearMatMul": ((0, 2), (3, 5)),
}
# Ops that fuse with a DequantizeLinear reading an int8 weight (the QDQ format).
QDQ_CONSUMERS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def has_integer_products(model: onnx.ModelProto) -> bool:
    """Whether `model` has a node this module may rewrite (an integer product or a
    DequantizeLinear): the others are returned as they are, unread."""
    return any(n.op_type in PRODUCT_OPERANDS or n.op_type == "DequantizeLinear"
               for n in model.graph.node)


def unsigned_integer_operands(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose int8 operands of integer products (and int8 weights dequantized
    for a Conv, MatMul or Gemm) are uint8, shifted by 128 with their zero points: the same
    values, computed without ONNX Runtime's int16 saturation. Other nodes are untouched;
    a model with no such operand is returned as it is."""
    if not has_integer_products(model):
        return model   # no copy and no shape inference for a float model
    original, model = model, onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    elem_types = _elem_types(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    added_nodes: list[onnx.NodeProto] = []
    shifted: dict[str, str] = {}
    taken = set(elem_types) | {o for n in graph.node for o in n.output} | \
        {v.name for v in graph.input}

    def fresh(name: str) -> str:
        candidate, n = name, 0
        while candidate in taken:
            n += 1
            candidate = f"{name}_{n}"
        taken.add(candidate)
        return candidate

    def unsigned(name: str) -> str:
        """The uint8 twin of int8 tensor `name`: a new initializer, or Cast/Add/Cast nodes."""
        if name not in shifted:
            new = fresh(f"{name}_uint8")
            elem_types[new] = TensorProto.UINT8
            if name in initializers:
                values = numpy_helper.to_array(initializers[name]).astype("int16") + 128
                graph.initializer.append(numpy_helper.from_array(values.astype("uint8"), new))
            else:
                wide, one_two_eight, plus = (fresh(f"{name}_{s}")
                                             for s in ("int32", "128", "plus_128"))
                graph.initializer.append(helper.make_tensor(one_two_eight, TensorProto.INT32,
                                                            [], [128]))
                added_nodes.extend([
                    helper.make_node("Cast", [name], [wide], to=TensorProto.INT32),
                    helper.make_node("Add", [wide, one_two_eight], [plus]),
                    helper.make_node("Cast", [plus], [new], to=TensorProto.UINT8)])
            shifted[name] = new
        return shifted[name]

    def shift_operand(node: onnx.NodeProto, value: int, zero_point: int) -> None:
        if elem_types.get(node.input[value]) != TensorProto.INT8:
            return
        while len(node.input) <= zero_point:   # an omitted zero point is 0: 128 once shifted
            node.input.append("")
        if node.input[zero_point]:
            node.input[zero_point] = unsigned(node.input[zero_point])
        else:
            name = fresh(f"{node.input[value]}_zero_point_uint8")
            elem_types[name] = TensorProto.UINT8
            graph.initializer.append(helper.make_tensor(name, TensorProto.UINT8, [], [128]))
            node.input[zero_point] = name
        node.input[value] = unsigned(node.input[value])

    for node in list(graph.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type.startswith("QLinear") and len(node.input) > 7 and \
                elem_types.get(node.input[7]) == TensorProto.INT8:
            continue   # an int8 result has int8 x int8 kernels only (and they are exact)
        for value, zero_point in PRODUCT_OPERANDS.get(node.op_type, ()):
            shift_operand(node, value, zero_point)
        if (node.op_type == "DequantizeLinear" and node.input[0] in initializers
                and all(c.op_type in QDQ_CONSUMERS for c in consumers.get(node.output[0], ()))):
            shift_operand(node, 0, 2)
    if added_nodes:
        graph.node.extend(added_nodes)
        _sort_topologically(graph)
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    unread = [t for t in graph.initializer if t.name in shifted and t.name not in read]
    for t in unread:   # replaced by their twins (ONNX Runtime warns of unread initializers)
        graph.initializer.remove(t)
    return model if shifted else original


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named value the model declares or initializes; values only an
    inference can type come from onnx's shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:   # a model onnx cannot infer still has its declared types
        inferred = model.graph
    types = {}
    for info in (*inferred.input, *inferred.value_info, *inferred.output):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    for t in model.graph.initializer:
        types[t.name] = t.data_type
    return types


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder `graph.node` so that every node follows the nodes producing its inputs."""
    import networkx as nx
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    order = nx.DiGraph()
    order.add_nodes_from(range(len(graph.node)))
    order.add_edges_from((producer[name], i) for i, node in enumerate(graph.node)
                         for name in node.input if name in producer)
    nodes = [graph.node[i] for i in nx.lexicographical_topological_sort(order)]
    del graph.node[:]
    graph.node.extend(nodes)
