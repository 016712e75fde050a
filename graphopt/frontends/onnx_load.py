"""Reading an ONNX model safely: parse (path, bytes or ModelProto), refuse names that are not
UTF-8, load external weights only from inside the model's directory, bring old opsets up to 13,
and check the graph's structure (dangling inputs, cycles) before anything walks it. Every
failure is a `ModelFormatError` naming the node.

Memory is bounded: every constant array the import creates (initializers, external data,
Constant values, folded results) is charged to a `ConstantBudget` before it is allocated, from
the sizes its dims and dtype declare."""
from __future__ import annotations

import math
import os
from typing import Union

import networkx as nx
import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from onnx import external_data_helper, helper, numpy_helper

from ..errors import GraphoptError, ModelFormatError, UnsupportedOpError

MIN_OPSET = 13
PROTOBUF_LIMIT = 2 ** 31 - 1   # protobuf cannot serialize a larger message
# What `load_onnx` may spend on constant arrays unless told otherwise (max_constant_bytes).
DEFAULT_MAX_CONSTANT_BYTES = 1 << 30
ModelSource = Union[str, os.PathLike, bytes, onnx.ModelProto]
# Element types stored packed, several per byte of raw_data: bits per element.
PACKED_BITS = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4,
               onnx.TensorProto.FLOAT4E2M1: 4, onnx.TensorProto.INT2: 2,
               onnx.TensorProto.UINT2: 2, onnx.TensorProto.FLOAT6E2M3: 6,
               onnx.TensorProto.FLOAT6E3M2: 6}


class ConstantBudget:
    """The bytes one import may spend on constant arrays; each is charged before it exists."""

    def __init__(self, limit: int):
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
            raise GraphoptError(f"expected max_constant_bytes as a non-negative int, found "
                                f"{limit!r}")
        self.limit, self.used = int(limit), 0

    def reserve(self, nbytes: int, what: str) -> None:
        """Refuse unless `nbytes` more would fit (without charging them)."""
        if self.used + nbytes > self.limit:
            raise ModelFormatError(
                f"{what} needs {nbytes:,} bytes, beyond the limit on the model's constants "
                f"({self.used:,} of max_constant_bytes={self.limit:,} already used); pass a "
                f"larger max_constant_bytes to load_onnx for a model you trust")

    def charge(self, nbytes: int, what: str) -> None:
        self.reserve(nbytes, what)
        self.used += nbytes


def read_model(source: ModelSource, budget: ConstantBudget) -> onnx.ModelProto:
    """A parsed model with its external data (if any) loaded from vetted locations."""
    if isinstance(source, onnx.ModelProto):
        model, base_dir = source, None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        model, base_dir = parse_bytes(bytes(source), "the given bytes"), None
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            if os.path.getsize(path) > PROTOBUF_LIMIT:
                raise ModelFormatError(f"'{path}' is larger than 2 GiB, more than one protobuf "
                                       f"message can hold (weights belong in external data)")
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ModelFormatError(f"cannot read ONNX model '{path}': {e.strerror or e}") from None
        model, base_dir = parse_bytes(data, f"'{path}'"), os.path.dirname(os.path.abspath(path))
    else:
        raise ModelFormatError(f"expected a path, bytes or onnx.ModelProto, found "
                               f"{type(source).__name__}")
    check_strings(model, "model")
    external = [t for t in all_tensors(model.graph)
                if external_data_helper.uses_external_data(t)]
    if external:
        if base_dir is None:
            raise ModelFormatError(f"initializer '{external[0].name}' keeps its data in an "
                                   f"external file; load the model from its path so the file "
                                   f"can be found next to it")
        # Sized from dims and dtype before anything is read: a file can hold far more than its
        # tensors declare.
        sizes = [tensor_bytes(t, f"initializer '{t.name}'") for t in external]
        budget.reserve(sum(sizes), f"the external data of {len(external)} tensor(s)")
        model = onnx.ModelProto.FromString(model.SerializeToString())   # never mutate the caller's
        tensors = [t for t in all_tensors(model.graph)
                   if external_data_helper.uses_external_data(t)]
        for tensor, size in zip(tensors, sizes):
            load_external_tensor(tensor, base_dir, size)
    return model


def check_strings(message, path: str) -> None:
    """Refuse string fields (names, op types, ...) that are not valid UTF-8: protobuf hands them
    over as bytes, which nothing downstream expects. Tensors' raw data is not walked."""
    if isinstance(message, onnx.TensorProto):
        fields = [(f, getattr(message, f.name)) for f in message.DESCRIPTOR.fields
                  if f.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE)
                  and f.name != "segment"]
    else:
        fields = message.ListFields()
    for field, value in fields:
        if field.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE):
            continue
        repeated = field.is_repeated
        for i, item in enumerate(value if repeated else [value]):
            where = f"{path}.{field.name}" + (f"[{i}]" if repeated else "")
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                check_strings(item, where)
            elif isinstance(item, bytes):
                raise ModelFormatError(f"{where} is not valid UTF-8 text: {item[:60]!r}")


def all_tensors(graph: onnx.GraphProto):
    """Every TensorProto of a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from all_tensors(sub)


def parse_bytes(data: bytes, what: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:   # protobuf's DecodeError and friends
        raise ModelFormatError(f"{what} is not a valid ONNX model (truncated or corrupt "
                               f"protobuf: {type(e).__name__}: {e})") from None
    if not model.HasField("graph"):
        raise ModelFormatError(f"{what} holds no graph (not an ONNX model, or empty)")
    return model


def tensor_bytes(tensor: onnx.TensorProto, where: str) -> int:
    """The bytes of a tensor's data as its dims and dtype declare them (raw_data's length for
    packed element types), without reading or allocating anything."""
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise ModelFormatError(f"{where} has negative dims {dims}")
    count = math.prod(dims)
    if tensor.data_type in PACKED_BITS:
        return (count * PACKED_BITS[tensor.data_type] + 7) // 8
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        raise ModelFormatError(f"{where} has an unknown data type {tensor.data_type}") from None
    return count * itemsize


def tensor_array(tensor: onnx.TensorProto, where: str, budget: ConstantBudget) -> np.ndarray:
    """A tensor's numpy array, after checking that its data holds exactly what its dims and
    dtype declare and charging its size to `budget`: nothing is allocated for a tensor whose
    dims promise more than its data holds or than the budget allows."""
    if external_data_helper.uses_external_data(tensor):
        raise ModelFormatError(f"{where} keeps its data in an external file, which only a "
                               f"model's initializers and attributes may")
    size = tensor_bytes(tensor, where)
    count = math.prod(tensor.dims)
    if tensor.HasField("raw_data"):
        found = len(tensor.raw_data)
        if tensor.data_type != onnx.TensorProto.STRING and found != size:
            raise ModelFormatError(f"{where} declares {onnx_type(tensor)} ({size:,} bytes) but "
                                   f"its raw_data holds {found:,} bytes")
    elif tensor.data_type not in PACKED_BITS:
        field = helper.tensor_dtype_to_field(tensor.data_type)
        per_element = 2 if tensor.data_type in (onnx.TensorProto.COMPLEX64,
                                                onnx.TensorProto.COMPLEX128) else 1
        found = len(getattr(tensor, field))
        if found != count * per_element:
            raise ModelFormatError(f"{where} declares {onnx_type(tensor)} ({count:,} elements) "
                                   f"but its {field} holds {found:,} values")
        if tensor.data_type == onnx.TensorProto.STRING:
            size += sum(len(item) for item in tensor.string_data)
    budget.charge(size, where)
    return numpy_helper.to_array(tensor)


def load_external_tensor(tensor: onnx.TensorProto, base_dir: str, size: int) -> None:
    """Read the `size` bytes of one external tensor after checking its location stays inside
    `base_dir`.

    Written by hand rather than with onnx's loader: the location must be vetted (no `..`, no
    absolute path, no symlink leading out: the CVE-2024-27318/27319 class) before any file is
    opened, and offset/length must be checked against the tensor's size and the file's real
    size before anything is read."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    where = f"initializer '{tensor.name}'"
    if not location:
        raise ModelFormatError(f"{where} uses external data but names no location")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location:
        raise ModelFormatError(f"{where}: external data location '{location}' is an absolute "
                               f"path; only files inside the model's directory are allowed")
    parts = location.replace("\\", "/").split("/")
    if ".." in parts:
        raise ModelFormatError(f"{where}: external data location '{location}' escapes the "
                               f"model's directory through '..'")
    root = os.path.realpath(base_dir)
    path = os.path.realpath(os.path.join(root, location))
    if os.path.commonpath([root, path]) != root:
        raise ModelFormatError(f"{where}: external data location '{location}' resolves to "
                               f"'{path}', outside the model's directory '{root}' (symlink)")
    if not os.path.isfile(path):
        raise ModelFormatError(f"{where}: external data file '{location}' does not exist in "
                               f"'{root}'")
    file_size = os.path.getsize(path)
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else size
    except ValueError:
        raise ModelFormatError(f"{where}: external data offset/length are not integers: "
                               f"{info}") from None
    if length != size:
        raise ModelFormatError(f"{where}: external data length {length} does not match the "
                               f"tensor's {onnx_type(tensor)} ({size} bytes)")
    if offset < 0 or offset + length > file_size:
        raise ModelFormatError(f"{where}: external data range [{offset}, {offset + length}) "
                               f"lies outside '{location}' ({file_size} bytes)")
    with open(path, "rb") as f:
        f.seek(offset)
        tensor.raw_data = f.read(length)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT


def onnx_type(tensor: onnx.TensorProto) -> str:
    """e.g. FLOAT[1, 4], for messages."""
    values = onnx.TensorProto.DataType.values()
    name = onnx.TensorProto.DataType.Name(tensor.data_type) if tensor.data_type in values \
        else f"type {tensor.data_type}"
    return f"{name}{list(tensor.dims)}"


def default_opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise ModelFormatError("the model imports no version of the default ONNX domain")
    return int(versions[0])


def upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Models older than opset 13 are converted with onnx's version converter; newer opsets than
    the installed onnx package knows are refused."""
    opset = default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ModelFormatError(f"the model uses opset {opset}; the installed onnx package knows "
                               f"opsets up to {newest}")
    if opset >= MIN_OPSET:
        return model
    scans = [node_label(n, i) for i, n in enumerate(model.graph.node) if n.op_type == "Scan"]
    if opset < 9 and scans:
        # onnx's adapter drops Scan-8's batch axis from the model's inputs: another model
        raise UnsupportedOpError(f"model '{model.graph.name}' uses 1 unsupported op "
                                 f"type(s)/form(s): Scan (opset 8's batched form, with "
                                 f"sequence_lens): {len(scans)} node{'s' if len(scans) > 1 else ''}"
                                 f" [{', '.join(scans)}]")
    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as e:
        raise UnsupportedOpError(f"opset {opset} could not be converted to opset {MIN_OPSET}: "
                                 f"{first_line(e)}") from None


def sort_nodes(model: onnx.ModelProto) -> list[tuple[int, str, onnx.NodeProto]]:
    """The main graph's nodes in dependency order, each with its index and label (name or
    stand-in), after checking that every input is defined and that there is no cycle."""
    graph = model.graph
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    producers: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for out in node.output:
            if not out:
                continue
            if out in producers or out in defined:
                raise ModelFormatError(f"output '{out}' is defined twice (SSA)",
                                       node=node_label(node, index), op=node.op_type)
            producers[out] = index
    deps = nx.DiGraph()
    deps.add_nodes_from(range(len(graph.node)))
    for index, node in enumerate(graph.node):
        for name in node_inputs(node):
            if not name or name in defined:
                continue
            if name not in producers:
                raise ModelFormatError(f"input '{name}' is not a graph input, an initializer or "
                                       f"any node's output (dangling input)",
                                       node=node_label(node, index), op=node.op_type)
            deps.add_edge(producers[name], index)
    for out in graph.output:
        if out.name not in producers and out.name not in defined:
            raise ModelFormatError(f"graph output '{out.name}' is produced by no node")
    try:
        order = list(nx.lexicographical_topological_sort(deps))
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(deps)
        names = [node_label(graph.node[a], a) for a, _ in cycle]
        raise ModelFormatError(f"the graph has a cycle through nodes {names}",
                               node=names[0], op=graph.node[cycle[0][0]].op_type) from None
    return [(i, node_label(graph.node[i], i), graph.node[i]) for i in order]


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """The names a node reads: its inputs, then what its subgraphs (an If's branches, a Loop's
    body) read from the enclosing graph."""
    return [n for n in node.input if n] + [n for n in outer_names(node) if n not in node.input]


def outer_names(node: onnx.NodeProto) -> list[str]:
    """The names that `node`'s subgraphs read without defining them, in order, once each."""
    names: dict[str, None] = {}
    for graph in subgraphs(node):
        defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
        defined |= {out for inner in graph.node for out in inner.output}
        for inner in graph.node:
            names.update((n, None) for n in node_inputs(inner) if n not in defined)
        names.update((v.name, None) for v in graph.output if v.name not in defined)
    return list(names)


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs in `node`'s attributes (an If's branches, a Loop's or Scan's body)."""
    return [g for a in node.attribute for g in
            ([a.g] if a.type == onnx.AttributeProto.GRAPH else
             a.graphs if a.type == onnx.AttributeProto.GRAPHS else [])]


def check_model(model: onnx.ModelProto, order: list[int]) -> None:
    """onnx.checker on the model with its nodes in dependency order (node indices `order`)."""
    if model.ByteSize() > PROTOBUF_LIMIT:
        return   # the checker serializes the model, which protobuf refuses past 2 GB
    if order != list(range(len(model.graph.node))):
        nodes = [onnx.NodeProto.FromString(model.graph.node[i].SerializeToString()) for i in order]
        model = onnx.ModelProto.FromString(model.SerializeToString())
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    try:
        onnx.checker.check_model(model)
    except Exception as e:   # ValidationError, or protobuf errors on odd fields
        raise ModelFormatError(f"onnx.checker rejects the model: {first_line(e)}") from None


def node_label(node: onnx.NodeProto, index: int) -> str:
    """A node's name, or a stable stand-in for unnamed nodes."""
    return node.name or f"{node.op_type}_{index}"


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:500]
