"""Reading an ONNX model safely: parse (path, bytes or ModelProto), load external weights only from
inside the model's directory, bring old opsets up to 13, and check the graph's structure (dangling
inputs, cycles) before anything walks it. Every failure is a `ModelFormatError` naming the node."""
from __future__ import annotations

import os
from typing import Union

import networkx as nx
import onnx
from onnx import external_data_helper

from ..errors import ModelFormatError, UnsupportedOpError

MIN_OPSET = 13
PROTOBUF_LIMIT = 2 ** 31 - 1   # protobuf cannot serialize a larger message
ModelSource = Union[str, os.PathLike, bytes, onnx.ModelProto]


def read_model(source: ModelSource) -> onnx.ModelProto:
    """A parsed model with its external data (if any) loaded from vetted locations."""
    if isinstance(source, onnx.ModelProto):
        model, base_dir = source, None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        model, base_dir = parse_bytes(bytes(source), "the given bytes"), None
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ModelFormatError(f"cannot read ONNX model '{path}': {e.strerror or e}") from None
        model, base_dir = parse_bytes(data, f"'{path}'"), os.path.dirname(os.path.abspath(path))
    else:
        raise ModelFormatError(f"expected a path, bytes or onnx.ModelProto, found "
                               f"{type(source).__name__}")
    external = [t for t in all_tensors(model.graph)
                if external_data_helper.uses_external_data(t)]
    if external:
        if base_dir is None:
            raise ModelFormatError(f"initializer '{external[0].name}' keeps its data in an "
                                   f"external file; load the model from its path so the file "
                                   f"can be found next to it")
        model = onnx.ModelProto.FromString(model.SerializeToString())   # never mutate the caller's
        for tensor in all_tensors(model.graph):
            if external_data_helper.uses_external_data(tensor):
                load_external_tensor(tensor, base_dir)
    return model


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


def load_external_tensor(tensor: onnx.TensorProto, base_dir: str) -> None:
    """Read one external tensor after checking its location stays inside `base_dir`.

    Written by hand rather than with onnx's loader: the location must be vetted (no `..`, no
    absolute path, no symlink leading out: the CVE-2024-27318/27319 class) before any file is
    opened, and offset/length must be checked against the file's real size."""
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
    size = os.path.getsize(path)
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else size - offset
    except ValueError:
        raise ModelFormatError(f"{where}: external data offset/length are not integers: "
                               f"{info}") from None
    if offset < 0 or length < 0 or offset + length > size:
        raise ModelFormatError(f"{where}: external data range [{offset}, {offset + length}) "
                               f"lies outside '{location}' ({size} bytes)")
    with open(path, "rb") as f:
        f.seek(offset)
        tensor.raw_data = f.read(length)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT


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
    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as e:
        raise UnsupportedOpError(f"opset {opset} could not be converted to opset {MIN_OPSET}: "
                                 f"{first_line(e)}") from None


def sort_nodes(model: onnx.ModelProto) -> list[tuple[int, str, onnx.NodeProto]]:
    """The main graph's nodes in dependency order, each with its index and label (name or stand-in), after
    checking that every input is defined and that there is no cycle."""
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
        for name in node.input:
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
