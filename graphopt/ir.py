"""The typed IR: a `Graph` of `Node`s that consume and produce `Value`s of a `TensorType`.

The IR is op-agnostic: a node holds an op object (see `graphopt.ops`) whose attributes are typed
and whose `infer` gives the node's output types. Weights are constants: named `Value`s with data.
Graph edits go through a few methods (`add_node`, `replace_all_uses`, `remove_node`, ...); networkx
is used for analysis (`to_networkx`), not as the storage.
"""
from __future__ import annotations

import collections
import itertools
import math
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

try:
    import ml_dtypes  # registers bfloat16 with numpy (np.dtype("bfloat16"), its casts and ufuncs)
except ImportError:   # numpy and the TVM runtime alone (what go.load needs): no bfloat16 arrays
    ml_dtypes = None

from .errors import GraphoptError, ShapeError, VerifyError

if TYPE_CHECKING:
    import networkx

# A node's op is a `graphopt.ops.Op`; ir.py stays op-agnostic and does not import the ops.
Op = Any

DTYPES = ("float32", "float16", "bfloat16", "float64", "int8", "uint8", "int32", "int64", "bool")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
# The dtypes half-precision nodes compute in: their kernels read and write them and accumulate in
# float32. numpy's dtype of bfloat16 (ml_dtypes) has kind "V", not "f": test a dtype with
# `is_float_dtype`, never with `dtype.kind == "f"`.
HALF_DTYPES = ("float16", "bfloat16")
# No tensor graphopt handles comes near this; a larger shape is a mistake or a hostile model, and
# refusing it keeps every element, byte and MAC count far from any integer overflow.
MAX_ELEMENTS = 1 << 40


def is_float_dtype(dtype) -> bool:
    """Whether `dtype` (a name, a numpy or a TVM dtype) is one of graphopt's float dtypes."""
    return str(dtype) in FLOAT_DTYPES


def float_info(dtype) -> np.finfo:
    """`np.finfo` for every float dtype, bfloat16 included (numpy's own finfo refuses it)."""
    return np.finfo(dtype) if ml_dtypes is None else ml_dtypes.finfo(np.dtype(dtype))


def dimension(value, what: str = "dimension") -> int:
    """`value` as a Python int: ints and numpy integers pass, anything else (a float such as
    8.7, a bool, a string, None) is refused rather than truncated."""
    if isinstance(value, (bool, np.bool_)):
        raise ShapeError(f"expected an integer {what}, found the bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ShapeError(f"expected an integer {what}, found {value!r}") from None


def _count(n: int) -> str:
    """An element count for a message: exact up to 15 digits, else its order of magnitude."""
    return str(n) if n < 10 ** 15 else f"~10**{len(str(n)) - 1}"


@dataclass(frozen=True)
class TensorType:
    """Static shape and dtype of a tensor."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self):
        if isinstance(self.shape, (str, bytes)) or not isinstance(self.shape, Iterable):
            raise ShapeError(f"expected a shape as a sequence of dimensions, found {self.shape!r}")
        shape = tuple(self.shape)
        object.__setattr__(self, "shape", tuple(dimension(d, f"dimension in shape {shape}")
                                                for d in shape))
        if not isinstance(self.dtype, str) or self.dtype not in DTYPES:
            raise ShapeError(f"unknown dtype {self.dtype!r}; expected one of {', '.join(DTYPES)}")
        if any(d < 0 for d in self.shape):
            raise ShapeError(f"negative dimension in shape {self.shape}")
        if max(self.shape, default=0) > MAX_ELEMENTS or self.numel > MAX_ELEMENTS:
            shown = ", ".join(_count(d) for d in self.shape)
            raise ShapeError(f"shape ({shown}) holds {_count(self.numel)} elements; graphopt "
                             f"refuses shapes beyond 2**40 elements or 2**40 per dimension")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        """Number of elements, an exact Python int."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Size in bytes, an exact Python int."""
        return self.numel * np.dtype(self.dtype).itemsize

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def with_shape(self, shape: Sequence[int]) -> "TensorType":
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype: str) -> "TensorType":
        return TensorType(self.shape, dtype)

    @classmethod
    def of(cls, array: np.ndarray) -> "TensorType":
        return cls(array.shape, str(array.dtype))

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.shape))}]"


class Value:
    """An SSA value: a graph input, a constant (with `data`) or the output of one node."""

    __slots__ = ("name", "type", "producer", "data", "users")

    def __init__(self, name: str, type: TensorType, producer: "Node | None" = None,
                 data: np.ndarray | None = None):
        self.name, self.type, self.producer, self.data = name, type, producer, data
        self.users: list[Node] = []

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One op application. `provenance` lists the original nodes this node stands for, so that
    values of an optimized graph can be lined up with the original's (fusions merge them)."""

    __slots__ = ("name", "op", "inputs", "outputs", "provenance")

    def __init__(self, name: str, op: "Op", inputs: list[Value], outputs: list[Value],
                 provenance: tuple[str, ...] | None = None):
        self.name, self.op, self.inputs, self.outputs = name, op, inputs, outputs
        self.provenance = provenance if provenance is not None else (name,)

    @property
    def op_name(self) -> str:
        return self.op.name

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise GraphoptError(f"has {len(self.outputs)} outputs, not one", node=self.name,
                                op=self.op_name)
        return self.outputs[0]

    def __repr__(self) -> str:
        outs = ", ".join(map(repr, self.outputs))
        ins = ", ".join(f"%{v.name}" for v in self.inputs)
        return f"{outs} = {self.op}({ins})  # {self.name}"


class Graph:
    """A dataflow graph with named inputs, outputs, constants and nodes."""

    def __init__(self, name: str = "graph"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.constants: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self._names: set[str] = set()   # value and node names share one namespace
        self._counter = itertools.count()

    # ---- construction -------------------------------------------------------------------------
    def fresh_name(self, prefix: str) -> str:
        """A name starting with `prefix` not yet used in this graph."""
        if prefix not in self._names:
            return prefix
        while True:
            name = f"{prefix}_{next(self._counter)}"
            if name not in self._names:
                return name

    def has_name(self, name: str) -> bool:
        """Whether a node or value of this graph is named `name` (they share one namespace)."""
        return name in self._names

    def _claim(self, name: str) -> str:
        if not isinstance(name, str):
            raise VerifyError(f"expected a str name in graph '{self.name}', found {name!r}")
        if name in self._names:
            raise VerifyError(f"name '{name}' is already used in graph '{self.name}'")
        self._names.add(name)
        return name

    def add_input(self, name: str, type: TensorType) -> Value:
        value = Value(self._claim(name), type)
        self.inputs.append(value)
        return value

    def add_constant(self, name: str, data: np.ndarray) -> Value:
        data = np.ascontiguousarray(data) if np.ndim(data) else np.array(data)  # keep 0-d 0-d
        value = Value(self._claim(self.fresh_name(name)), TensorType.of(data), data=data)
        self.constants[value.name] = value
        return value

    def add_node(self, op: "Op", inputs: Sequence[Value], name: str | None = None,
                 output_names: Sequence[str] | None = None,
                 provenance: tuple[str, ...] | None = None) -> Node:
        """Append a node; its output types come from the op's shape/dtype rule."""
        name = self._claim(self.fresh_name(name or op.name))
        try:
            out_types = op.output_types(*[v.type for v in inputs])
        except ShapeError as e:
            self._names.discard(name)
            raise ShapeError(e.detail, node=name, op=op.name) from None
        if output_names is None:
            output_names = [name] if len(out_types) == 1 else \
                [f"{name}:{i}" for i in range(len(out_types))]
        node = Node(name, op, list(inputs), [], provenance)
        node.outputs = [Value(self._claim(self.fresh_name(n)), t, producer=node)
                        for n, t in zip(output_names, out_types)]
        for v in inputs:
            if node not in v.users:
                v.users.append(node)
        self.nodes.append(node)
        return node

    def set_outputs(self, values: Sequence[Value]) -> None:
        self.outputs = list(values)

    # ---- editing --------------------------------------------------------------------------------
    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Make every user of `old` (and the graph outputs) use `new` instead. A node built to
        stand for `old`'s producer (nothing reads it yet, it does not read `old`, and its
        provenance is still its own name) takes that producer's provenance, so that a pass need
        not set it for compare's per-layer view to line the new node up with the original."""
        if old.type != new.type:
            raise VerifyError(f"cannot replace %{old.name}: {old.type} by %{new.name}: {new.type}")
        if self._stands_in(new.producer, old):
            new.producer.provenance = old.producer.provenance
        # The node producing `new` may itself read `old` (a node inserted after `old`): it keeps it.
        kept = [u for u in old.users if u is new.producer]
        for user in old.users:
            if user is new.producer:
                continue
            user.inputs = [new if v is old else v for v in user.inputs]
            if user not in new.users:
                new.users.append(user)
        old.users = kept
        # A graph output keeps its public name: the replacement takes it over when it can.
        for i, out in enumerate(self.outputs):
            if out is old:
                self.outputs[i] = new

    def _stands_in(self, node: Node | None, old: Value) -> bool:
        """Whether `node` is a fresh replacement for `old`'s producer (see replace_all_uses)."""
        if node is None or old.producer is None or node is old.producer:
            return False
        return node.provenance == (node.name,) and all(v is not old for v in node.inputs) and \
            not any(out.users or any(out is o for o in self.outputs) for out in node.outputs)

    def remove_node(self, node: Node) -> None:
        """Remove a node whose outputs are unused."""
        for out in node.outputs:
            if out.users or any(out is o for o in self.outputs):
                raise VerifyError(f"cannot remove: output %{out.name} is still used",
                                  node=node.name, op=node.op_name)
        for v in node.inputs:
            if node in v.users:
                v.users.remove(node)
        self.nodes.remove(node)
        self._names.discard(node.name)
        for out in node.outputs:
            self._names.discard(out.name)

    def remove_unused_nodes(self, candidates) -> int:
        """Remove those of `candidates` (and then their producers, transitively) whose outputs
        are unused and not graph outputs. Returns how many nodes were removed."""
        outputs = {id(v) for v in self.outputs}
        present = {id(n) for n in self.nodes}
        stack, removed = list(candidates), 0
        while stack:
            node = stack.pop()
            if id(node) not in present:
                continue
            if any(o.users or id(o) in outputs for o in node.outputs):
                continue
            self.remove_node(node)
            present.discard(id(node))
            removed += 1
            stack.extend(v.producer for v in node.inputs if v.producer is not None)
        return removed

    def remove_unused_constants(self) -> None:
        for name, value in list(self.constants.items()):
            if not value.users and all(value is not o for o in self.outputs):
                del self.constants[name]
                self._names.discard(name)

    def rename_value(self, value: Value, name: str) -> None:
        self._names.discard(value.name)
        if value.is_constant and self.constants.get(value.name) is value:
            del self.constants[value.name]
            value.name = self._claim(name)
            self.constants[value.name] = value
        else:
            value.name = self._claim(name)

    # ---- queries --------------------------------------------------------------------------------
    def topological_order(self) -> list[Node]:
        """Nodes ordered so that every producer comes before its users (Kahn's algorithm, stable
        with respect to insertion order)."""
        indegree = {id(n): sum(v.producer is not None for v in n.inputs) for n in self.nodes}
        ready = collections.deque(n for n in self.nodes if indegree[id(n)] == 0)
        order: list[Node] = []
        members = {id(n) for n in self.nodes}
        while ready:
            node = ready.popleft()
            order.append(node)
            for out in node.outputs:
                for user in out.users:
                    if id(user) in members:
                        indegree[id(user)] -= sum(v is out for v in user.inputs)
                        if indegree[id(user)] == 0:
                            ready.append(user)
        if len(order) != len(self.nodes):
            stuck = [n.name for n in self.nodes if n not in order]
            raise VerifyError(f"graph '{self.name}' has a cycle through nodes {stuck[:8]}")
        return order

    def values(self) -> Iterable[Value]:
        yield from self.inputs
        yield from self.constants.values()
        for node in self.nodes:
            yield from node.outputs

    def value(self, name: str) -> Value:
        for v in self.values():
            if v.name == name:
                return v
        raise GraphoptError(f"graph '{self.name}' has no value named '{name}'")

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise GraphoptError(f"graph '{self.name}' has no node named '{name}'")

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.outputs]

    def num_params(self) -> int:
        """Trainable parameters: constant elements, not counting statistics buffers (batch_norm's
        running mean and variance), as torch's `parameters()` counts them."""
        from .analysis import count_params
        return count_params(self)

    def summary(self) -> str:
        from .analysis import summary
        return summary(self)

    def to_networkx(self) -> "networkx.MultiDiGraph":
        """Nodes as graph vertices (with `op` and `node` data); edges carry the value name."""
        import networkx as nx
        g = nx.MultiDiGraph(name=self.name)
        for node in self.nodes:
            g.add_node(node.name, op=node.op_name, node=node)
        for node in self.nodes:
            for v in node.inputs:
                if v.producer is not None:
                    g.add_edge(v.producer.name, node.name, value=v.name)
        return g

    def copy(self) -> "Graph":
        """A structural copy: new Graph/Node/Value objects; constant arrays are shared (they are
        treated as immutable)."""
        new = Graph(self.name)
        mapping: dict[int, Value] = {}
        for v in self.inputs:
            mapping[id(v)] = new.add_input(v.name, v.type)
        for v in self.constants.values():
            c = Value(new._claim(v.name), v.type, data=v.data)
            new.constants[c.name] = c
            mapping[id(v)] = c
        for node in self.topological_order():
            n = Node(new._claim(node.name), node.op, [mapping[id(v)] for v in node.inputs], [],
                     node.provenance)
            n.outputs = [Value(new._claim(o.name), o.type, producer=n) for o in node.outputs]
            for v in n.inputs:
                if n not in v.users:
                    v.users.append(n)
            for o, no in zip(node.outputs, n.outputs):
                mapping[id(o)] = no
            new.nodes.append(n)
        new.outputs = [mapping[id(v)] for v in self.outputs]
        return new

    def __repr__(self) -> str:
        lines = [f"graph {self.name}(" + ", ".join(map(repr, self.inputs)) + ") {"]
        lines += [f"  {n!r}" for n in self.topological_order()]
        lines.append("  return " + ", ".join(f"%{v.name}" for v in self.outputs))
        lines.append("}")
        return "\n".join(lines)
