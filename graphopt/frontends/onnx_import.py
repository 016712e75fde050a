"""ONNX -> graphopt IR. The walk is generic: shape arithmetic on values known at import time
(initializers, Constant, Shape of a static type, Gather/Unsqueeze/Concat on those...) is folded
with onnx's reference evaluator; every other node goes through the conversion table in
`onnx_ops`. Unsupported ops are collected over the whole model and reported together."""
from __future__ import annotations

import collections
import math
import warnings
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from .. import ops
from ..errors import (DeclaredShapeWarning, GraphoptError, ModelFormatError, ShapeError,
                      UnsupportedOpError)
from ..ir import DTYPES, Graph, Node, TensorType, Value
from ..verify import verify
from .onnx_context import NodeContext, UnsupportedForm, onnx_dtype
from .onnx_control_flow import (SEQUENCE_OPS, SequenceOf, if_outputs, loop_outputs,
                                scan_outputs, sequence_outputs)
from .onnx_load import (DEFAULT_MAX_CONSTANT_BYTES, ConstantBudget, ModelSource, check_model,
                        default_opset, first_line, node_inputs, node_label, read_model,
                        sort_nodes, subgraphs, tensor_array, upgrade_opset)

# Ops evaluated at import time when all their inputs are known (shape arithmetic, constants).
FOLDABLE = frozenset({
    "Abs", "Add", "And", "Cast", "CastLike", "Ceil", "Concat", "ConstantOfShape", "Div", "Equal",
    "Expand", "Flatten", "Floor", "Gather", "Greater", "Identity", "Less", "Max", "Min", "Mod",
    "Mul", "Neg", "Not", "Or", "Range", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSum",
    "Reshape", "Sign", "Slice", "Sqrt", "Squeeze", "Sub", "Tile", "Transpose", "Unsqueeze",
    "Where"})
# Ops whose subgraphs, or sequences, are imported as dataflow (`onnx_control_flow`).
CONTROL_FLOW = {"If": if_outputs, "Loop": loop_outputs, "Scan": scan_outputs,
                **dict.fromkeys(SEQUENCE_OPS, sequence_outputs)}
MAX_FOLDED_ELEMENTS = 1 << 24
# Nodes a constant operand (a pad value, axes) may be computed through (`computed_constant`).
COMPUTED_CONSTANT_DEPTH = 4
FOLDED_ITEMSIZE = 8   # bytes per folded element reserved before folding (the widest numeric type)



def declared_dim(dim: onnx.TensorShapeProto.Dimension) -> int | str:
    """A declared dimension: its size, or its name ('?' when it has none) when it is symbolic.
    A negative size (the -1 onnx's version converter writes for unknown sizes) is symbolic."""
    if dim.HasField("dim_value") and dim.dim_value >= 0:
        return dim.dim_value
    return dim.dim_param or "?"


class Importer:
    """One conversion of one model."""

    def __init__(self, model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]],
                 constant_inputs: Mapping[str, np.ndarray], budget: ConstantBudget):
        from .onnx_ops import TABLE
        self.table = TABLE
        self.model, self.opset, self.budget = model, default_opset(model), budget
        self.graph = Graph(model.graph.name or "onnx_model")
        self.values: dict[str, Value] = {}
        self.static: dict[str, np.ndarray] = {}
        self.poisoned: set[str] = set()
        self.derived: set[str] = set()   # stand-ins for poisoned values and what they compute
        self.sequences: dict[str, SequenceOf] = {}   # sequences known at import
        self.read_as_arrays: list[Node] = []   # nodes whose outputs converters read as constants
        self._inferred: dict[str, TensorType] | None = None
        self.unsupported: dict[str, list[str]] = collections.defaultdict(list)
        self.value_names = {name for node in nodes_within(model.graph) for name in node.output}
        self.value_names |= {v.name for v in model.graph.input}
        self.value_names |= {t.name for t in model.graph.initializer}
        self.declared = {v.name: v for v in model.graph.value_info}
        self.read_initializers()
        self.read_inputs(input_shapes, constant_inputs)

    # ---- graph boundary ---------------------------------------------------------------------
    def read_initializers(self) -> None:
        for tensor in self.model.graph.initializer:
            try:
                self.static[tensor.name] = tensor_array(tensor, f"initializer '{tensor.name}'",
                                                        self.budget)
            except GraphoptError:
                raise
            except Exception as e:
                raise ModelFormatError(f"initializer '{tensor.name}' cannot be read "
                                       f"({onnx_dtype(tensor.data_type)}"
                                       f"{list(tensor.dims)}): {first_line(e)}") from None

    def read_inputs(self, input_shapes, constant_inputs) -> None:
        known = {v.name for v in self.model.graph.input}
        for name in list(input_shapes) + list(constant_inputs):
            if name not in known:
                raise ModelFormatError(f"no graph input named '{name}'; inputs are "
                                       f"{sorted(known)}")
        for v in self.model.graph.input:
            if v.name in self.static:      # old-style models list initializers as inputs too
                continue
            if v.name in constant_inputs:
                self.static[v.name] = np.asarray(constant_inputs[v.name])
                continue
            if not v.type.HasField("tensor_type"):
                raise UnsupportedOpError(f"graph input '{v.name}' is not a tensor")
            tt = v.type.tensor_type
            dtype = onnx_dtype(tt.elem_type)
            if dtype not in DTYPES:
                raise UnsupportedOpError(f"graph input '{v.name}' has dtype {dtype}; graphopt "
                                         f"supports {', '.join(DTYPES)}")
            if v.name in input_shapes:
                shape = input_shapes[v.name]
            else:
                if not tt.HasField("shape"):
                    raise ModelFormatError(f"graph input '{v.name}' has no shape; pass "
                                           f"input_shapes={{'{v.name}': (...)}}")
                dims = [declared_dim(d) for d in tt.shape.dim]
                symbolic = [d for d in dims if isinstance(d, str)]
                if symbolic:
                    raise ModelFormatError(f"graph input '{v.name}' has symbolic dimensions "
                                           f"{symbolic} (shape {dims}); graphopt needs static "
                                           f"shapes: pass input_shapes={{'{v.name}': (...)}}")
                shape = tuple(dims)
            try:
                type_ = TensorType(shape, dtype)
            except ShapeError as e:
                raise ShapeError(f"graph input '{v.name}': {e.detail}") from None
            self.values[v.name] = self.graph.add_input(v.name, type_)

    def finish_outputs(self) -> None:
        outputs = []
        for out in self.model.graph.output:
            if out.name in self.sequences:
                raise UnsupportedOpError(f"output '{out.name}' is a sequence; a graph's outputs "
                                         f"are tensors")
            value = self.value(out.name)
            if value.name != out.name or any(value is o for o in outputs):
                # The output is an input, a constant, an alias or listed twice: an identity
                # node carries the public name.
                value = self.graph.add_node(ops.Identity(), [value], name=f"{out.name}/identity",
                                            output_names=[out.name]).output
            self.check_declared(out, value)
            outputs.append(value)
        self.graph.set_outputs(outputs)

    def check_declared(self, info: onnx.ValueInfoProto, value: Value) -> None:
        """A declared dtype must agree with what we infer. A declared shape that disagrees is
        only a warning (as in ONNX Runtime): the inferred shape is used. Negative sizes (the -1
        that onnx's version converter writes) and named dimensions are symbolic."""
        if not info.type.HasField("tensor_type"):
            return
        tt = info.type.tensor_type
        where = value.producer.name if value.producer is not None else None
        op = value.producer.op_name if value.producer is not None else None
        if tt.elem_type and onnx_dtype(tt.elem_type) != value.dtype:
            raise ModelFormatError(f"'{info.name}' is declared {onnx_dtype(tt.elem_type)} but "
                                   f"computes {value.type}", node=where, op=op)
        if tt.HasField("shape"):
            dims = [declared_dim(d) for d in tt.shape.dim]
            if len(dims) != value.type.ndim or any(
                    isinstance(d, int) and d != s for d, s in zip(dims, value.shape)):
                at = f"node '{where}' ({op}): " if where is not None else ""
                warnings.warn(f"{at}'{info.name}' is declared with shape {dims} but computes "
                              f"{value.type}; using the computed shape", DeclaredShapeWarning,
                              stacklevel=2)

    # ---- values ---------------------------------------------------------------------------------
    def value(self, name: str) -> Value:
        """The Value of an ONNX name; a known array becomes a named graph constant on first use."""
        if name not in self.values:
            self.not_a_sequence(name)
            data = self.static[name]
            if str(data.dtype) not in DTYPES:
                raise UnsupportedForm(f"constant '{name}' has dtype {data.dtype}")
            self.values[name] = self.graph.add_constant(name, data)
        return self.values[name]

    def not_a_sequence(self, name: str) -> None:
        if name in self.sequences:
            raise UnsupportedForm(f"the sequence '{name}' read as a tensor")

    def computed_constant(self, name: str) -> np.ndarray | None:
        """The array of a value the graph computes from constants alone, through at most
        COMPUTED_CONSTANT_DEPTH nodes (a QDQ model's QuantizeLinear then DequantizeLinear of a
        constant pad value; such nodes stay nodes at import so that weights keep their QDQ
        form), else None."""
        def array(value: Value, depth: int) -> np.ndarray | None:
            if value.is_constant:
                return value.data
            node = value.producer
            if node is None or depth == 0:
                return None
            arrays = [array(v, depth - 1) for v in node.inputs]
            if any(a is None for a in arrays):
                return None
            return node.op.run(*arrays)[node.outputs.index(value)]
        value = self.values.get(name)
        data = None if value is None else array(value, COMPUTED_CONSTANT_DEPTH)
        if data is not None:
            self.read_as_arrays.append(value.producer)
        return data

    def type_of(self, name: str) -> TensorType:
        if name in self.values:
            return self.values[name].type
        self.not_a_sequence(name)
        data = self.static[name]
        if str(data.dtype) not in DTYPES:
            raise UnsupportedForm(f"constant '{name}' has dtype {data.dtype}")
        return TensorType.of(data)

    def node_name(self, ctx: NodeContext) -> str:
        # Node and value names share one namespace in the IR: keep the ONNX node name unless it
        # would take a value's name.
        name = ctx.name
        if name in self.value_names:
            name = f"{name}/{ctx.op_type}"
        return name

    # ---- the walk -------------------------------------------------------------------------------
    def run(self, nodes: list[tuple[int, str, onnx.NodeProto]]) -> Graph:
        for _, label, node in nodes:
            self.visit(node, label)
        self.raise_unsupported()
        self.finish_outputs()
        self.graph.remove_unused_nodes(self.read_as_arrays)
        self.graph.remove_unused_constants()
        verify(self.graph)
        return self.graph

    def visit(self, node: onnx.NodeProto, label: str) -> None:
        """Convert one node, or record why it cannot be and poison its outputs."""
        inputs = node_inputs(node)
        if any(n in self.poisoned for n in inputs) and not self.stand_in(inputs):
            # Downstream of an unsupported node, of a type ONNX's inference does not know:
            # only an op that no form of graphopt converts is a root cause of its own.
            if not self.importable(node):
                self.unsupported[op_kind(node)].append(label)
            self.poisoned.update(node.output)
            return
        derived = any(n in self.derived for n in inputs)
        if derived:
            self.derived.update(node.output)
        try:
            self.convert(node, label, inputs)
        except UnsupportedForm as e:
            self.unsupported[f"{op_kind(node)} ({e})"].append(label)
            self.poisoned.update(node.output)
        except MemoryError:
            raise   # not the model's form: the process is out of memory
        except Exception as e:
            if derived:
                # Computed from a stand-in for an unsupported node's output: the model is
                # refused for that node, whose real output might not have failed here.
                self.poisoned.update(node.output)
            elif isinstance(e, GraphoptError):
                if e.node is not None:
                    raise
                raise type(e)(e.detail, node=label, op=node.op_type) from None
            else:   # a malformed node must never escape as a raw traceback
                raise ModelFormatError(f"cannot convert: {type(e).__name__}: "
                                       f"{first_line(e)}", node=label,
                                       op=node.op_type) from None

    def importable(self, node: onnx.NodeProto) -> bool:
        """Whether some form of `node` converts (or folds) when its inputs allow it."""
        return node.domain in ("", "ai.onnx") and (
            node.op_type in self.table or node.op_type in FOLDABLE
            or node.op_type in ("Shape", "Size", "Constant", *CONTROL_FLOW))

    def stand_in(self, inputs: list[str]) -> bool:
        """Replace each poisoned input by a graph input of the type ONNX's shape inference gives
        it, so that the nodes after an unsupported one are still converted and their own
        unsupported forms reported (the graph is refused anyway). False when a type is unknown."""
        known = self.inferred_types()
        missing = [n for n in inputs if n in self.poisoned and n not in known]
        if missing:
            return False
        for name in inputs:
            if name in self.poisoned:
                self.poisoned.discard(name)
                self.derived.add(name)
                self.values[name] = self.graph.add_input(name, known[name])
        return True

    def inferred_types(self) -> dict[str, TensorType]:
        """Static types of the model's values by ONNX's shape inference, on the graph's input
        shapes (computed once, on the first unsupported node)."""
        if self._inferred is None:
            self._inferred = onnx_inferred_types(self.model, {
                v.name: self.values[v.name].type for v in self.model.graph.input
                if v.name in self.values})
        return self._inferred

    def convert(self, node: onnx.NodeProto, label: str, inputs: list[str]) -> None:
        op_type = node.op_type
        if node.domain not in ("", "ai.onnx"):
            self.unsupported[op_kind(node)].append(label)
            self.poisoned.update(node.output)
            return
        if op_type in ("Shape", "Size"):
            results = [self.shape_of(NodeContext(self, node, label))]
        elif op_type == "Constant":
            results = [constant_value(NodeContext(self, node, label), self.budget)]
        elif op_type in CONTROL_FLOW:
            results = CONTROL_FLOW[op_type](self, node, label)
            if results is None:
                self.poisoned.update(node.output)
                return
        elif op_type in FOLDABLE and all(n in self.static for n in inputs):
            results = self.fold(node)
        elif op_type in self.table:
            out = self.table[op_type](NodeContext(self, node, label))
            results = list(out) if isinstance(out, (list, tuple)) else [out]
        else:
            self.unsupported[op_type].append(label)
            self.poisoned.update(node.output)
            return
        for name, result in zip(node.output, results):
            if not name or result is None:   # an output not computed: no node reads it
                continue
            if isinstance(result, np.ndarray):
                self.static[name] = result
            elif isinstance(result, SequenceOf):
                self.sequences[name] = result
            else:
                self.values[name] = result
                if name in self.declared and name not in self.derived:
                    self.check_declared(self.declared[name], result)

    def shape_of(self, ctx: NodeContext) -> np.ndarray:
        shape = ctx.type(0).shape
        if ctx.op_type == "Size":
            return np.array(int(np.prod(shape, dtype=np.int64)), np.int64)
        rank = len(shape)
        start, end = ctx.attr("start", 0), ctx.attr("end", rank)
        start, end = (min(max(i + rank if i < 0 else i, 0), rank) for i in (start, end))
        return np.array(shape[start:end], np.int64)

    def fold(self, node: onnx.NodeProto) -> list[np.ndarray]:
        """Evaluate a node on known inputs with onnx's reference implementation."""
        from onnx.reference import ReferenceEvaluator
        feeds = {n: self.static[n] for n in node.input if n}
        count = check_fold_size(node, [self.static[n] if n else None for n in node.input])
        what = f"the folded result of this {node.op_type}"
        self.budget.reserve(count * FOLDED_ITEMSIZE, what)
        inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                                a.shape) for n, a in feeds.items()]
        outputs = [helper.make_value_info(o, onnx.TypeProto()) for o in node.output if o]
        graph = helper.make_graph([node], "fold", inputs, outputs)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        results = ReferenceEvaluator(model).run(None, feeds)
        named = dict(zip([o for o in node.output if o], results))
        folded = [np.asarray(named[o]) if o else None for o in node.output]
        self.budget.charge(sum(a.nbytes for a in folded if a is not None), what)
        return folded

    def raise_unsupported(self) -> None:
        if not self.unsupported:
            return
        parts = []
        for kind, labels in sorted(self.unsupported.items()):
            shown = ", ".join(labels[:5]) + (f", ... ({len(labels) - 5} more)"
                                             if len(labels) > 5 else "")
            parts.append(f"{kind}: {len(labels)} node{'s' if len(labels) > 1 else ''} "
                         f"[{shown}]")
        raise UnsupportedOpError(f"model '{self.graph.name}' uses {len(parts)} unsupported op "
                                 f"type(s)/form(s): " + "; ".join(parts))


def nodes_within(graph: onnx.GraphProto):
    """The nodes of `graph` and of the subgraphs (If branches, Loop bodies) inside them."""
    for node in graph.node:
        yield node
        for inner in subgraphs(node):
            yield from nodes_within(inner)


def op_kind(node: onnx.NodeProto) -> str:
    """The op type as the unsupported list names it: with its domain unless it is ONNX's."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


SMALL_INITIALIZER = 1 << 10   # elements; larger ones are passed to shape inference as types only


def onnx_inferred_types(model: onnx.ModelProto,
                        input_types: Mapping[str, TensorType]) -> dict[str, TensorType]:
    """The static tensor types onnx's shape inference (with data propagation) gives the values
    of `model`, its graph inputs typed as `input_types`; {} when inference fails. The model's
    own value_info is left out (it may be wrong) and so are the data of large initializers."""
    graph = helper.make_graph(
        list(model.graph.node), model.graph.name,
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)),
                                       list(t.shape)) for n, t in input_types.items()] +
        [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
         for t in model.graph.initializer if math.prod(t.dims) > SMALL_INITIALIZER],
        [], initializer=[t for t in model.graph.initializer
                         if math.prod(t.dims) <= SMALL_INITIALIZER])
    small = helper.make_model(graph, opset_imports=model.opset_import,
                              ir_version=model.ir_version)
    try:
        inferred = onnx.shape_inference.infer_shapes(small, data_prop=True)
    except Exception:   # inference is a help for the report, never a reason to fail
        return {}
    types = {}
    for info in inferred.graph.value_info:
        tt = info.type.tensor_type
        if not info.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue
        dims = [declared_dim(d) for d in tt.shape.dim]
        dtype = onnx_dtype(tt.elem_type)
        if dtype in DTYPES and all(isinstance(d, int) for d in dims):
            try:
                types[info.name] = TensorType(tuple(dims), dtype)
            except ShapeError:   # beyond graphopt's limits: no stand-in
                continue
    return types


def constant_value(ctx: NodeContext, budget: ConstantBudget) -> np.ndarray:
    for a in ctx.node.attribute:
        if a.name == "value":
            return tensor_array(a.t, f"the value of Constant '{ctx.name}'", budget)
        if a.name in ("value_float", "value_int"):
            return np.array(helper.get_attribute_value(a),
                            np.float32 if a.name == "value_float" else np.int64)
        if a.name in ("value_floats", "value_ints"):
            return np.array(list(helper.get_attribute_value(a)),
                            np.float32 if a.name == "value_floats" else np.int64)
        if a.name in ("sparse_value", "value_string", "value_strings"):
            raise UnsupportedForm(f"attribute '{a.name}'")
    raise ModelFormatError("Constant has no value attribute", node=ctx.name, op="Constant")


BROADCASTING = frozenset({"Add", "And", "Div", "Equal", "Greater", "Less", "Max", "Min", "Mod",
                          "Mul", "Or", "Sub", "Where"})


def check_fold_size(node: onnx.NodeProto, inputs: list[np.ndarray | None]) -> int:
    """The number of elements folding `node` creates at most, computed before anything is
    allocated; a huge one (a malformed or hostile model) is refused. Ops not listed never
    produce more elements than their inputs hold together (Concat: the sum, even when one
    input is repeated)."""
    op = node.op_type
    present = [a for a in inputs if a is not None]
    if any(a.dtype.kind not in "biuf" for a in present) or (op == "Cast" and any(
            a.name == "to" and a.i == onnx.TensorProto.STRING for a in node.attribute)):
        raise UnsupportedForm("folding string tensors")
    count = sum(a.size for a in present)
    if op in BROADCASTING:
        count = np.prod(np.broadcast_shapes(*(a.shape for a in inputs if a is not None)),
                        dtype=np.float64)
    elif op == "Gather":
        data, indices = inputs[0], inputs[1]
        axis = int(next((helper.get_attribute_value(a) for a in node.attribute
                         if a.name == "axis"), 0))
        count = data.size / max(data.shape[axis], 1) * indices.size if data.ndim else 0
    elif op == "ConstantOfShape":
        count = np.prod(inputs[0].astype(np.float64))
    elif op == "Expand":
        count = np.prod(np.broadcast_shapes(inputs[0].shape, tuple(int(d) for d in inputs[1])),
                        dtype=np.float64)
    elif op == "Tile":
        count = np.prod(np.multiply(inputs[0].shape, inputs[1]).astype(np.float64))
    elif op == "Range":
        start, limit, delta = (float(np.asarray(a).reshape(-1)[0]) for a in inputs[:3])
        span = (limit - start) / delta if delta != 0 else math.inf
        count = math.ceil(span) if math.isfinite(span) else math.inf
    if not 0 <= count <= MAX_FOLDED_ELEMENTS:
        raise ModelFormatError(f"folding this {op} would create {count:.0f} elements (limit "
                               f"{MAX_FOLDED_ELEMENTS})", node=node.name or None, op=op)
    return int(count)


def load_onnx(source: ModelSource, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
              constant_inputs: Mapping[str, np.ndarray] | None = None,
              max_constant_bytes: int = DEFAULT_MAX_CONSTANT_BYTES) -> Graph:
    """Import an ONNX model (path, bytes or ModelProto) as a verified graphopt Graph.

    `input_shapes` fixes symbolic input dimensions; `constant_inputs` binds graph inputs to
    arrays (for inputs that must be static in graphopt, such as a Reshape's target shape).
    `max_constant_bytes` (1 GiB by default) bounds the constant arrays the import creates
    (initializers, external data, Constant values, folded shape arithmetic), each checked
    before it is allocated: a larger model is refused with a ModelFormatError."""
    budget = ConstantBudget(max_constant_bytes)
    try:
        model = upgrade_opset(read_model(source, budget))
        nodes = sort_nodes(model)
        check_model(model, [index for index, _, _ in nodes])
        importer = Importer(model, input_shapes or {}, constant_inputs or {}, budget)
        return importer.run(nodes)
    except GraphoptError:
        raise
    except UnsupportedForm as e:
        raise UnsupportedOpError(str(e)) from None
    except RecursionError:
        raise ModelFormatError("the model is nested too deeply to read") from None
    except MemoryError:
        raise   # not the model's form: the process is out of memory
    except Exception as e:   # last line of defence: never a raw traceback from deep inside
        raise ModelFormatError(f"cannot import the model: {type(e).__name__}: "
                               f"{first_line(e)}") from None
