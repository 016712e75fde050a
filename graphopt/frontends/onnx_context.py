"""What a converter in the ONNX conversion table works with: `NodeContext` (one ONNX node's
attributes and inputs, and `emit` to add graphopt nodes), `UnsupportedForm`, attribute decoding."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import helper

from .. import ops
from ..errors import ModelFormatError
from ..ir import TensorType, Value


class UnsupportedForm(Exception):
    """Raised by a converter for an attribute/input form it cannot express (collected, then
    reported inside one UnsupportedOpError)."""


class NodeContext:
    """What a converter sees of one ONNX node: attributes, inputs as Values or constants, and
    `emit` to add graphopt nodes (the last one takes the ONNX node's name and output name)."""

    def __init__(self, importer, node: onnx.NodeProto, label: str):
        self.importer, self.node, self.name = importer, node, label
        self.graph = importer.graph
        self.attrs = {a.name: decode(helper.get_attribute_value(a)) for a in node.attribute}

    @property
    def op_type(self) -> str:
        return self.node.op_type

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    def ints(self, name: str, default: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(v) for v in self.attrs.get(name, default))

    def has(self, i: int) -> bool:
        return i < len(self.node.input) and self.node.input[i] != ""

    def is_static(self, i: int) -> bool:
        return self.has(i) and self.node.input[i] in self.importer.static

    def type(self, i: int) -> TensorType:
        return self.importer.type_of(self.node.input[i])

    def input(self, i: int) -> Value:
        return self.importer.value(self.node.input[i])

    def static(self, i: int, what: str) -> np.ndarray:
        """Input i's array, known at import: a constant, or computed by one node from graph
        constants (a QDQ model's dequantized pad value)."""
        if self.is_static(i):
            return self.importer.static[self.node.input[i]]
        data = self.importer.computed_constant(self.node.input[i]) if self.has(i) else None
        if data is None:
            raise UnsupportedForm(f"{what} (input {i}) must be a constant")
        return data

    def static_ints(self, i: int, what: str) -> list[int]:
        """A constant input that ONNX defines as integers (a shape, pads, axes), flattened."""
        data = self.static(i, what)
        if data.dtype.kind not in "iu":
            raise ModelFormatError(f"{what} (input {i}) must hold integers, found {data.dtype}",
                                   node=self.name, op=self.op_type)
        return [int(v) for v in data.reshape(-1)]

    def constant(self, name: str, data: np.ndarray) -> Value:
        return self.graph.add_constant(name, np.asarray(data))

    def input_as(self, i: int, shape: Sequence[int]) -> Value:
        """Input i reshaped (a reshaped constant when it is known, else a reshape node)."""
        if self.is_static(i):
            return self.constant(self.node.input[i], self.static(i, "").reshape(shape))
        return self.emit(ops.Reshape(tuple(shape)), [self.input(i)], final=False)

    def emit(self, op: ops.Op, inputs: Sequence[Value], final: bool = True,
             output: int = 0) -> Value:
        """Add a node of `op`; a `final` one computes the ONNX node's output number `output`
        under its name (the node takes the ONNX node's name, `<name>/output<k>` past the
        first output)."""
        if final:
            name = self.importer.node_name(self)
            return self.graph.add_node(op, inputs, name=name if output == 0 else
                                       f"{name}/output{output}",
                                       output_names=[self.node.output[output]]).output
        return self.graph.add_node(op, inputs, name=f"{self.name}/{op.name}").output

    def outputs_used(self) -> int:
        return sum(1 for o in self.node.output if o)

    def single_output(self, extra: str) -> None:
        if self.outputs_used() > 1:
            raise UnsupportedForm(f"output {extra}")


def decode(value):
    """Attribute values as Python values: str for bytes, floats at their float32 precision
    (1e-05, not 9.999999747378752e-06) so that exported graphs import back unchanged."""
    if isinstance(value, float):
        return as_float32(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def as_float32(value) -> float:
    """The shortest decimal that round-trips through float32."""
    return float(str(np.float32(value)))


def onnx_dtype(elem_type: int) -> str:
    try:
        return str(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)))
    except Exception:
        return onnx.TensorProto.DataType.Name(elem_type) if elem_type in \
            onnx.TensorProto.DataType.values() else f"unknown({elem_type})"
