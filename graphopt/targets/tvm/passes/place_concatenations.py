"""place_concatenations (CPU): mark `in_place` each concatenation whose inputs can be computed
straight into their slices of its output, so that no kernel copies them.

A concatenation along an axis with only size-1 axes before it (channels of a batch-1 NCHW
tensor: SqueezeNet's fire modules, GoogLeNet's and Inception's branches) holds each input in one
contiguous slice. It qualifies where its output and every input are tensors some node computes
(not a model input, a reshape of one, a constant or a model output), each input appears once
and in no other in-place concatenation (the later concatenation takes a tensor two of them
read), and every slice starts at a multiple of ALIGNMENT_BYTES, the alignment compiled kernels
assume of their buffers. Lowering then gives it a kernel TVM does not fuse, and the CPU pipeline
(`targets/tvm/concat_in_place.py`) computes the inputs into the output and drops the copy.
Whole models, builds interleaved, in place / copied, one / two threads (an AVX-512 Xeon, two
runs): SqueezeNet 1.1 0.85-0.95 / 0.89-0.90, GoogLeNet 0.99-1.01 / 0.88-0.95, DenseNet-121
(the last concatenation of each block) 0.94-0.97 / 0.96-0.97, Inception-v3 1.00-1.03 /
0.95-0.99."""
from __future__ import annotations

import dataclasses
import math

from ....ops.shape import normalize_axis
from .annotate import annotate

# The alignment (bytes) of every buffer a compiled kernel is given: TVM allocates at 64.
ALIGNMENT_BYTES = 64
# Ops that TVM lowers to views of their input's memory.
VIEW_OPS = ("reshape", "flatten")
# Whether the pass marks concatenations (False: TVM fuses or copies every one, e.g. to time
# the copies).
IN_PLACE = True


def place_concatenations(context):
    """The pass for one compile (`context`: with oneDNN kernels nothing is placed, as the
    in-place rewrite places only what graphopt's own kernels write)."""

    def place_concatenations(graph):
        placed = in_place_concatenations(graph) \
            if IN_PLACE and context.kernels != "onednn" else set()
        return annotate(graph, lambda node: dataclasses.replace(node.op, in_place=True)
                        if node.name in placed else None)

    return place_concatenations


def in_place_concatenations(graph) -> set[str]:
    """The names of `graph`'s concatenations that qualify (see the module docstring)."""
    outputs = {id(v) for v in graph.outputs}
    taken: set[int] = set()
    placed = set()
    for node in reversed(graph.topological_order()):
        if node.op_name != "concat" or id(node.outputs[0]) in outputs:
            continue
        out = node.outputs[0]
        axis = normalize_axis(node.op.axis, len(out.shape))
        if math.prod(out.shape[:axis]) != 1:
            continue
        ids = [id(v) for v in node.inputs]
        offsets = [0]
        for value in node.inputs[:-1]:
            offsets.append(offsets[-1] + value.type.nbytes)
        if len(set(ids)) != len(ids) or any(i in taken or i in outputs for i in ids) or \
                not all(_computed(v) for v in node.inputs) or \
                any(offset % ALIGNMENT_BYTES for offset in offsets):
            continue
        taken.update(ids)
        placed.add(node.name)
    return placed


def _computed(value) -> bool:
    """Whether `value` is memory a kernel of the model writes: computed by a node, seen
    through the reshapes that lower to views of their input (a reshape of the model's input is
    the caller's memory)."""
    while value.producer is not None and value.producer.op_name in VIEW_OPS:
        value = value.producer.inputs[0]
    return value.producer is not None and not value.is_constant
