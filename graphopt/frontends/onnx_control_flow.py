"""ONNX control flow at import, turned into plain dataflow (graphopt's IR has no control flow):

- If: a condition known at import (exporters test shapes so) imports the branch it picks; a
  condition computed at run time imports both branches and selects each output with a Where.
- Loop: unrolled, when its trip count and its condition are known at import (torch.jit.script's
  `for i in range(n)`); each iteration's copy of the body reads the previous one's values.
- Scan: unrolled along its scan inputs, whose lengths are static.
- Sequences (what torch.jit.script writes for a list appended to in a loop): a `SequenceOf`
  names its tensors at import; SequenceInsert, SequenceAt, ConcatFromSequence, ... pick and
  stack them.

Each copy of a body has its names prefixed with the node's label and the iteration, so that the
flat graph keeps ONNX's one-definition-per-name rule. The functions return the node's outputs
(arrays where known at import, else Values), or None when a body node was refused (the
importer then records that node as the root cause)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx
from onnx import helper

from .. import ops
from ..errors import ModelFormatError
from ..ir import Value
from .onnx_context import NodeContext, UnsupportedForm
from .onnx_load import node_label, subgraphs, tensor_array


@dataclass(frozen=True)
class SequenceOf:
    """An ONNX sequence known at import: the names of its tensors, in order."""
    names: tuple[str, ...]


# The most body nodes a Loop or Scan may unroll into, all iterations together: each copy adds
# its nodes to the graph (and a kernel or more to the compiled model).
MAX_UNROLLED_NODES = 8192


# ---- If -----------------------------------------------------------------------------------------
def if_outputs(importer, node: onnx.NodeProto, label: str) -> list | None:
    """An If's outputs: the branch a known condition picks, or both branches and a Where per
    output for a condition computed at run time (both branches are computed, every time;
    their outputs must agree in shape and dtype)."""
    ctx = NodeContext(importer, node, label)
    if not ctx.is_static(0):
        if node.input[0] in importer.derived:   # past an unsupported node: not a cause itself
            return None
        return _select_branches(importer, ctx)
    condition = ctx.static(0, "cond")
    if condition.size != 1:
        raise ModelFormatError(f"cond must hold one value, found shape {list(condition.shape)}",
                               node=label, op=node.op_type)
    return _branch_outputs(importer, ctx, "then_branch" if bool(condition.reshape(-1)[0])
                           else "else_branch")


def _branch_outputs(importer, ctx: NodeContext, chosen: str) -> list | None:
    branch = _graph(ctx, chosen)
    names = _run_body(importer, branch, ctx.name)
    if names is None:
        return None
    if len(names) != len(ctx.node.output):
        raise ModelFormatError(f"{chosen} has {len(names)} outputs, the If "
                               f"{len(ctx.node.output)}", node=ctx.name, op=ctx.op_type)
    return _results(importer, ctx, names)


def _select_branches(importer, ctx: NodeContext) -> list | None:
    cond = ctx.type(0)
    if cond.dtype != "bool" or int(np.prod(cond.shape)) != 1:
        raise ModelFormatError(f"cond must be one bool, found {cond}", node=ctx.name,
                               op=ctx.op_type)
    branches = [_branch_outputs(importer, ctx, b) for b in ("then_branch", "else_branch")]
    if any(b is None for b in branches):
        return None
    condition = ctx.emit(ops.Reshape(()), [ctx.input(0)], final=False)
    outputs = []
    for k, (then, other) in enumerate(zip(*branches)):
        if isinstance(then, SequenceOf) or isinstance(other, SequenceOf):
            raise UnsupportedForm(f"a sequence (output {k}) chosen at run time")
        then, other = (v if isinstance(v, Value) else ctx.constant(f"{ctx.name}/{b}{k}", v)
                       for v, b in ((then, "then"), (other, "else")))
        if then.type != other.type:
            raise UnsupportedForm(f"branches whose output {k} differs ({then.type} and "
                                  f"{other.type}) on a condition computed at run time")
        outputs.append(ctx.emit(ops.Where(), [condition, then, other], output=k))
    return outputs


# ---- Loop ---------------------------------------------------------------------------------------
def loop_outputs(importer, node: onnx.NodeProto, label: str) -> list | None:
    """A Loop unrolled: its trip count M and condition known at import, and the condition each
    iteration computes known too (so the number of iterations is)."""
    ctx = NodeContext(importer, node, label)
    body = _graph(ctx, "body")
    carried = list(node.input[2:])
    scans = len(body.output) - 1 - len(carried)
    if len(body.input) != len(carried) + 2 or scans < 0 or \
            len(node.output) != len(carried) + scans:
        raise ModelFormatError(f"the body takes {len(body.input)} inputs and gives "
                               f"{len(body.output)} outputs for {len(carried)} loop-carried "
                               f"values and {len(node.output)} outputs", node=label,
                               op=node.op_type)
    trips = _known_scalar(importer, ctx, 0, "trip count M")
    going = _known_scalar(importer, ctx, 1, "cond")
    if trips is False or going is False:   # past an unsupported node
        return None
    trips = None if trips is None else int(trips)
    going = True if going is None else bool(going)
    if trips is None and not ctx.has(1):
        raise ModelFormatError("a Loop needs a trip count M or a condition", node=label,
                               op=node.op_type)
    size = _node_count(body)
    elements: list[list[str]] = [[] for _ in range(scans)]
    step = 0
    while going and (trips is None or step < trips):
        _check_unrolled(size * (step + 1), ctx)
        bound = {body.input[0].name: np.array(step, np.int64),
                 body.input[1].name: np.array(going)}
        bound.update((v.name, name) for v, name in zip(body.input[2:], carried))
        names = _run_body(importer, body, f"{label}/{step}", bound)
        if names is None:
            return None
        condition = importer.static.get(names[0])
        if condition is None:
            condition = importer.computed_constant(names[0])
        if condition is None:
            if names[0] in importer.derived:
                return None
            raise UnsupportedForm("a loop condition computed at run time (an unrolled loop "
                                  "needs its number of iterations at import)")
        going = bool(np.asarray(condition).reshape(-1)[0])
        carried = names[1:1 + len(carried)]
        for k, name in enumerate(names[1 + len(carried):]):
            elements[k].append(name)
        step += 1
    if scans and not step:
        raise UnsupportedForm("scan outputs of a loop that runs no iteration")
    results = _results(importer, ctx, carried)
    return results + [_stack(importer, ctx, names, 0, len(carried) + k)
                      for k, names in enumerate(elements)]


# ---- Scan ---------------------------------------------------------------------------------------
def scan_outputs(importer, node: onnx.NodeProto, label: str) -> list | None:
    """A Scan (opset 9 on) unrolled along its scan inputs."""
    ctx = NodeContext(importer, node, label)
    body = _graph(ctx, "body")
    m = ctx.attr("num_scan_inputs")
    if m is None or not 0 < m <= len(node.input):
        raise ModelFormatError(f"num_scan_inputs {m} for {len(node.input)} inputs", node=label,
                               op=node.op_type)
    n = len(node.input) - m
    k = len(node.output) - n
    if len(body.input) != n + m or len(body.output) != n + k or k < 0:
        raise ModelFormatError(f"the body takes {len(body.input)} inputs and gives "
                               f"{len(body.output)} outputs for {n} state values, {m} scan "
                               f"inputs and {len(node.output)} outputs", node=label,
                               op=node.op_type)
    in_axes = _axes(ctx, "scan_input_axes", m, [len(ctx.type(n + j).shape) for j in range(m)])
    in_reverse = _directions(ctx, "scan_input_directions", m)
    out_reverse = _directions(ctx, "scan_output_directions", k)
    lengths = {ctx.type(n + j).shape[a] for j, a in enumerate(in_axes)}
    if len(lengths) != 1:
        raise ModelFormatError(f"scan inputs of different lengths {sorted(lengths)}",
                               node=label, op=node.op_type)
    length = lengths.pop()
    if not length:
        raise UnsupportedForm("scan inputs of length 0")
    _check_unrolled(_node_count(body) * length, ctx)
    states = list(node.input[:n])
    elements: list[list[str]] = [[] for _ in range(k)]
    for step in range(length):
        bound: dict = dict(zip((v.name for v in body.input[:n]), states))
        for j in range(m):
            index = length - 1 - step if in_reverse[j] else step
            bound[body.input[n + j].name] = _slice(importer, ctx, n + j, in_axes[j], index)
        names = _run_body(importer, body, f"{label}/{step}", bound)
        if names is None:
            return None
        states = names[:n]
        for j, name in enumerate(names[n:]):
            elements[j].append(name)
    ranks = [len(_shape(importer, names[0])) + 1 for names in elements]
    out_axes = _axes(ctx, "scan_output_axes", k, ranks)
    return _results(importer, ctx, states) + [
        _stack(importer, ctx, names[::-1] if out_reverse[j] else names, out_axes[j], n + j)
        for j, names in enumerate(elements)]


# ---- bodies -------------------------------------------------------------------------------------
def _run_body(importer, body: onnx.GraphProto, prefix: str,
              bound: dict | None = None) -> list[str] | None:
    """Convert `body`'s nodes, their labels under `prefix`; the names of its outputs, or None
    when a node was refused. With `bound` (a Loop's or Scan's iteration), a copy of `body`
    whose names take `prefix`, its inputs bound to `bound`'s values (an array, or the name of a
    value the importer holds); an If's branch, which runs once, keeps its names."""
    if bound is not None:
        body = _renamed(body, prefix + "/")
        importer.value_names |= _defined_names(body)
        for name, value in bound.items():
            _bind(importer, prefix + "/" + name, value)
    for tensor in body.initializer:
        importer.static[tensor.name] = tensor_array(tensor, f"initializer '{tensor.name}'",
                                                    importer.budget)
    for index, inner in enumerate(body.node):
        importer.visit(inner, f"{prefix}/{node_label(inner, index)}")
    names = [v.name for v in body.output]
    if any(name in importer.poisoned for name in names):
        return None
    return names


def _bind(importer, name: str, value) -> None:
    """Let `name` stand for `value`: an array, or the name of a value the importer holds."""
    if isinstance(value, np.ndarray):
        importer.static[name] = value
        return
    if isinstance(value, Value):
        importer.values[name] = value
        return
    if value in importer.poisoned:
        importer.poisoned.add(name)
    elif value in importer.sequences:
        importer.sequences[name] = importer.sequences[value]
    elif value in importer.static:
        importer.static[name] = importer.static[value]
    else:
        importer.values[name] = importer.value(value)
    if value in importer.derived:
        importer.derived.add(name)


def _defined_names(graph: onnx.GraphProto) -> set[str]:
    """The names `graph` defines: its inputs, initializers and node outputs, and those of the
    subgraphs inside it."""
    names = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(o for o in node.output if o)
        for sub in subgraphs(node):
            names |= _defined_names(sub)
    return names


def _renamed(body: onnx.GraphProto, prefix: str) -> onnx.GraphProto:
    """A copy of `body` with every name it defines (subgraphs included) prefixed; the names it
    reads from the enclosing graphs are kept."""
    names = _defined_names(body)
    copy = onnx.GraphProto()
    copy.CopyFrom(body)

    def rename(graph: onnx.GraphProto) -> None:
        for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
            if v.name in names:
                v.name = prefix + v.name
        for node in graph.node:
            node.input[:] = [prefix + i if i in names else i for i in node.input]
            node.output[:] = [prefix + o if o in names else o for o in node.output]
            for sub in subgraphs(node):
                rename(sub)
    rename(copy)
    return copy


def _node_count(graph: onnx.GraphProto) -> int:
    return sum(1 + sum(_node_count(sub) for sub in subgraphs(node)) for node in graph.node)


def _check_unrolled(nodes: int, ctx: NodeContext) -> None:
    if nodes > MAX_UNROLLED_NODES:
        raise UnsupportedForm(f"unrolled into more than {MAX_UNROLLED_NODES} nodes (the body's "
                              f"nodes times its iterations)")


def _graph(ctx: NodeContext, name: str) -> onnx.GraphProto:
    graph = next((helper.get_attribute_value(a) for a in ctx.node.attribute if a.name == name),
                 None)
    if graph is None:
        raise ModelFormatError(f"the {ctx.op_type} has no {name}", node=ctx.name, op=ctx.op_type)
    return graph


# ---- values -------------------------------------------------------------------------------------
def _known_scalar(importer, ctx: NodeContext, i: int, what: str):
    """Input i's one value when known at import; None when the input is absent, False when it
    is computed from an unsupported node."""
    if not ctx.has(i):
        return None
    if not ctx.is_static(i) and ctx.node.input[i] in importer.derived:
        return False
    try:
        data = ctx.static(i, what)
    except UnsupportedForm:
        raise UnsupportedForm(f"a {what} computed at run time (an unrolled loop needs its "
                              f"number of iterations at import)") from None
    if data.size != 1:
        raise ModelFormatError(f"{what} must hold one value, found shape {list(data.shape)}",
                               node=ctx.name, op=ctx.op_type)
    return data.reshape(-1)[0]


def _results(importer, ctx: NodeContext, names: Sequence[str]) -> list:
    if any(name in importer.derived for name in names):
        importer.derived.update(ctx.node.output)
    return [importer.sequences[n] if n in importer.sequences else importer.static[n]
            if n in importer.static else importer.value(n) for n in names]


def _shape(importer, name: str) -> tuple[int, ...]:
    return tuple(importer.static[name].shape) if name in importer.static else \
        importer.value(name).shape


def _slice(importer, ctx: NodeContext, i: int, axis: int, index: int):
    """Input i's entry `index` along `axis`, that axis dropped."""
    if ctx.is_static(i):
        return np.take(ctx.static(i, "scan input"), index, axis=axis)
    return ctx.emit(ops.Gather(axis), [ctx.input(i), ctx.constant(f"{ctx.name}/index{index}",
                                                                  np.array(index, np.int64))],
                    final=False)


def _stack(importer, ctx: NodeContext, names: list[str], axis: int, output: int):
    """The values `names` stacked along a new `axis` (a Loop's or Scan's scan output)."""
    if all(n in importer.static for n in names):
        return np.stack([importer.static[n] for n in names], axis=axis)
    values = [importer.value(n) for n in names]
    shapes = {v.shape for v in values}
    if len(shapes) != 1:
        raise UnsupportedForm(f"scan output {output} of shapes {sorted(shapes)}")
    shape = list(values[0].shape)
    shape.insert(axis, 1)
    if len(values) == 1:
        return ctx.emit(ops.Reshape(tuple(shape)), values, output=output)
    parts = [ctx.emit(ops.Reshape(tuple(shape)), [v], final=False) for v in values]
    return ctx.emit(ops.Concat(axis), parts, output=output)


def _axes(ctx: NodeContext, name: str, count: int, ranks: Sequence[int]) -> list[int]:
    axes = ctx.ints(name, [0] * count)
    if len(axes) != count or any(not -r <= a < r for a, r in zip(axes, ranks)):
        raise ModelFormatError(f"{name} {list(axes)} for ranks {list(ranks)}", node=ctx.name,
                               op=ctx.op_type)
    return [a % r for a, r in zip(axes, ranks)]


def _axis(ctx: NodeContext, rank: int) -> int:
    axis = int(ctx.attr("axis", 0))
    if not -rank <= axis < rank:
        raise ModelFormatError(f"axis {axis} for rank {rank}", node=ctx.name, op=ctx.op_type)
    return axis % rank


def _directions(ctx: NodeContext, name: str, count: int) -> list[bool]:
    directions = ctx.ints(name, [0] * count)
    if len(directions) != count or any(d not in (0, 1) for d in directions):
        raise ModelFormatError(f"{name} {list(directions)}: {count} values of 0 or 1",
                               node=ctx.name, op=ctx.op_type)
    return [bool(d) for d in directions]


# ---- sequences ----------------------------------------------------------------------------------
def sequence_outputs(importer, node: onnx.NodeProto, label: str) -> list | None:
    """The output of a sequence op, on sequences known at import."""
    ctx = NodeContext(importer, node, label)
    op = node.op_type
    if op == "SequenceEmpty":
        return [SequenceOf(())]
    if op == "SequenceConstruct":
        return [SequenceOf(tuple(node.input))]
    if op == "SplitToSequence":
        return [_split_to_sequence(importer, ctx)]
    names = _sequence(importer, ctx, 0)
    if op == "SequenceLength":
        return [np.array(len(names), np.int64)]
    if op == "SequenceInsert":
        at = _position(ctx, 2, len(names) + 1, len(names))
        return [SequenceOf(names[:at] + (node.input[1],) + names[at:])]
    if op == "SequenceErase":
        at = _position(ctx, 1, len(names), len(names) - 1)
        return [SequenceOf(names[:at] + names[at + 1:])]
    if op == "SequenceAt":
        return _results(importer, ctx, [names[_position(ctx, 1, len(names), None)]])
    assert op == "ConcatFromSequence", op
    if not names:
        raise ModelFormatError("ConcatFromSequence of an empty sequence", node=label, op=op)
    rank = len(_shape(importer, names[0]))
    new_axis = bool(ctx.attr("new_axis", 0))
    if ctx.attr("axis") is None:
        raise ModelFormatError("ConcatFromSequence needs an axis", node=label, op=op)
    axis = _axis(ctx, rank + new_axis)
    if new_axis:
        return [_stack(importer, ctx, list(names), axis, 0)]
    if all(n in importer.static for n in names):
        return [np.concatenate([importer.static[n] for n in names], axis=axis)]
    values = [importer.value(n) for n in names]
    return [values[0] if len(values) == 1 else ctx.emit(ops.Concat(axis), values)]


SEQUENCE_OPS = ("SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceAt",
                "SequenceErase", "SequenceLength", "ConcatFromSequence", "SplitToSequence")


def _sequence(importer, ctx: NodeContext, i: int) -> tuple[str, ...]:
    name = ctx.node.input[i] if ctx.has(i) else ""
    if name not in importer.sequences:
        raise ModelFormatError(f"input {i} ('{name}') is not a sequence", node=ctx.name,
                               op=ctx.op_type)
    return importer.sequences[name].names


def _position(ctx: NodeContext, i: int, size: int, default: int | None) -> int:
    """Input i as a position in a sequence of `size` (negative counts from the end)."""
    if not ctx.has(i):
        if default is None:
            raise ModelFormatError(f"position (input {i}) missing", node=ctx.name,
                                   op=ctx.op_type)
        return default
    position = int(ctx.static(i, "position").reshape(-1)[0])
    if not -size <= position < size:
        raise ModelFormatError(f"position {position} outside a sequence of {size}",
                               node=ctx.name, op=ctx.op_type)
    return position % size if size else 0


def _split_to_sequence(importer, ctx: NodeContext) -> SequenceOf:
    """SplitToSequence with its split known at import: Slices (or Gathers without keepdims)."""
    shape = ctx.type(0).shape
    axis = _axis(ctx, len(shape))
    if ctx.has(1):
        split = ctx.static(1, "split").astype(np.int64)
        sizes = [int(v) for v in split.reshape(-1)] if split.ndim else \
            [int(split)] * (shape[axis] // int(split)) + \
            ([shape[axis] % int(split)] if shape[axis] % int(split) else [])
        if sum(sizes) != shape[axis] or min(sizes, default=1) < 0:
            raise ModelFormatError(f"split {sizes} of an axis of {shape[axis]}",
                                   node=ctx.name, op=ctx.op_type)
        keep = True
    else:
        sizes, keep = [1] * shape[axis], bool(ctx.attr("keepdims", 1))
    names, start = [], 0
    for k, size in enumerate(sizes):
        name = f"{ctx.name}/{k}"
        if keep:
            piece = ctx.emit(ops.Slice((start,), (start + size,), (axis,), (1,)),
                             [ctx.input(0)], final=False)
        else:
            piece = _slice(importer, ctx, 0, axis, start)
        importer.values[name] = piece
        names.append(name)
        start += size
    return SequenceOf(tuple(names))
