"""A small functional DSL for writing CNNs:

    with dsl.Builder("tiny", seed=0) as b:
        x = b.input("input", (1, 1, 28, 28))
        x = dsl.relu(dsl.conv2d(x, 8, kernel=3, padding=1))
        graph = b.output(dsl.linear(dsl.flatten(dsl.max_pool2d(x, 2)), 10))

Shapes are checked as each layer is written; a shape error names the node and points at the
user's file and line. Weights are initialised deterministically from the builder's seed (He init
for convolutions and linear layers, non-trivial statistics for batch_norm) unless given as arrays.
Layers are written inside the `with` block, each `name=` given once, and the block ends with
`b.output(...)`: anything else is a GraphoptError, not a silently renamed layer, a changed
finished graph or a graph without outputs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import numbers
import os
import sys
import threading
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np

from .. import ops
from ..errors import GraphoptError, ShapeError
from ..ir import Graph, TensorType, Value
from ..verify import verify

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INTERNAL = tuple(os.path.join(_PACKAGE_DIR, p) for p in ("frontends", "ops", "ir.py"))
_local = threading.local()
T = TypeVar("T")


def _user_location() -> str:
    """file:line of the innermost caller outside graphopt's own DSL/IR/op code."""
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL):
        frame = frame.f_back
    if frame is None:
        return "<unknown>"
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


class Tensor:
    """A value under construction in a Builder; supports + - * / with tensors and numbers."""

    __slots__ = ("value", "builder")

    def __init__(self, value: Value, builder: "Builder"):
        self.value, self.builder = value, builder

    shape = property(lambda self: self.value.shape)
    dtype = property(lambda self: self.value.dtype)
    name = property(lambda self: self.value.name)

    def __add__(self, other): return add(self, other)
    def __radd__(self, other): return add(other, self)
    def __sub__(self, other): return sub(self, other)
    def __rsub__(self, other): return sub(other, self)
    def __mul__(self, other): return mul(self, other)
    def __rmul__(self, other): return mul(other, self)
    def __truediv__(self, other): return div(self, other)
    def __rtruediv__(self, other): return div(other, self)

    def __repr__(self) -> str:
        return f"Tensor({self.value!r})"


class Builder:
    """Collects a graph; use as a context manager so the layer functions know where to add."""

    def __init__(self, name: str, seed: int = 0):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise GraphoptError(f"expected a non-negative int seed, found {seed!r}")
        self.graph = Graph(name)
        self.rng = np.random.default_rng(seed)
        self._scopes: list[str] = []
        self._finished = False
        self._closed = False
        self._written_at: dict[str, str] = {}    # node name -> the user's file:line

    # ---- context ------------------------------------------------------------------------------
    def __enter__(self) -> "Builder":
        _stack().append(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        _stack().pop()
        self._closed = True
        if exc_type is not None:
            return
        if not self._finished:
            raise GraphoptError(f"graph '{self.graph.name}' has no outputs: call "
                                f"`b.output(...)` inside the `with dsl.Builder(...)` block "
                                f"(at {_user_location()})")
        verify(self.graph)

    def expect_open(self, what: str, op: str | None = None) -> None:
        """Refuse to add `what` once the `with` block has ended: the graph is finished (and
        verified), and a layer added now would silently change it."""
        if self._closed:
            raise GraphoptError(f"{what} after the `with dsl.Builder('{self.graph.name}')` "
                                f"block ended (at {_user_location()}); the graph is finished: "
                                f"write every layer inside the block", op=op)

    def claim(self, name: str, op: str) -> str:
        """`name` as given by the user, refused if a node or value already has it (the graph
        would otherwise rename the second layer silently, e.g. 'c' to 'c_3')."""
        qualified = self.qualified(name)
        if self.graph.has_name(qualified):
            raise GraphoptError(f"the name '{qualified}' (at {_user_location()}) is taken by "
                                f"{self._holder(qualified)}: give each layer its own name",
                                node=qualified, op=op)
        return name

    def _holder(self, name: str) -> str:
        for node in self.graph.nodes:
            if name == node.name or any(name == out.name for out in node.outputs):
                where = self._written_at.get(node.name)
                return f"node '{node.name}' ({node.op_name}" + \
                    (f", written at {where})" if where else ")")
        return f"the {'constant' if name in self.graph.constants else 'graph input'} '{name}'"

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Prefix the names of nodes and weights created inside, e.g. 'layer1.0.conv1'."""
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    def qualified(self, name: str) -> str:
        return ".".join([*self._scopes, name])

    # ---- graph boundary ---------------------------------------------------------------------------
    def input(self, name: str, shape: Sequence[int], dtype: str = "float32") -> Tensor:
        """A graph input; dimensions must be non-negative ints (8.7 or True are refused)."""
        self.expect_open(f"input '{name}' added")
        try:
            type_ = TensorType(shape, dtype)
        except ShapeError as e:
            raise ShapeError(f"input '{name}': {e.detail} (at {_user_location()})") from None
        return Tensor(self.graph.add_input(name, type_), self)

    def constant(self, name: str, data) -> Tensor:
        self.expect_open(f"constant '{name}' added")
        return Tensor(self.graph.add_constant(self.qualified(name), np.asarray(data)), self)

    def output(self, *tensors: Tensor, names: Sequence[str] | None = None) -> Graph:
        """Mark the graph outputs (named 'output', or 'output0', 'output1', ... unless `names`)
        and return the finished graph."""
        self.expect_open("`b.output(...)` called")
        if names is None:
            names = ["output"] if len(tensors) == 1 else [f"output{i}" for i in range(len(tensors))]
        if len(names) != len(tensors):
            raise GraphoptError(f"expected {len(tensors)} output names, found {list(names)}")
        outputs = []
        for t, name in zip(tensors, names):
            value = t.value
            if value.name != name:
                if any(n.name == name for n in self.graph.nodes):
                    raise GraphoptError(f"output name '{name}' is already the name of a node; "
                                        "choose another output name")
                if value.producer is not None and not any(value is o for o in outputs):
                    self.graph.rename_value(value, name)
                else:   # an input, a constant or an output used twice: route through an identity
                    # Nodes and values share one namespace: the node takes a derived name so
                    # that its output can take the requested one.
                    value = self.graph.add_node(ops.Identity(), [value], name=f"{name}.identity",
                                                output_names=[name]).output
            outputs.append(value)
        self.graph.set_outputs(outputs)
        self._finished = True
        return self.graph

    # ---- used by the layer functions -------------------------------------------------------------
    def apply(self, op: ops.Op, inputs: Sequence[Tensor | Value], name: str | None = None) -> Tensor:
        """Add `op` on `inputs` as a node named `name` (a fresh '<op>', '<op>_1', ... if None)."""
        self.expect_open(f"layer {op.name} called", op=op.name)
        node_name = self.qualified(self.claim(name, op.name) if name else op.name)
        for t in inputs:
            if not isinstance(t, (Tensor, Value)):
                raise GraphoptError(f"expected DSL tensors as inputs, found {type(t).__name__} "
                                    f"(at {_user_location()})", node=node_name, op=op.name)
        values = [t.value if isinstance(t, Tensor) else t for t in inputs]
        try:
            node = self.graph.add_node(op, values, name=node_name)
        except ShapeError as e:
            raise ShapeError(f"{e.detail} (at {_user_location()})", node=e.node or node_name,
                             op=op.name) from None
        self._written_at[node.name] = _user_location()
        return Tensor(node.outputs[0], self)

    def weight(self, node: str, what: str, shape: tuple[int, ...], init, given, dtype: str,
               op: str | None = None) -> Value:
        """A named constant: the user's array (shape-checked) or a fresh draw from the seed; a
        DSL tensor given is used as it is (weights shared between layers, e.g. the steps of an
        unrolled decoder)."""
        if isinstance(given, Tensor):
            if given.shape != shape:
                raise ShapeError(f"expected {what} of shape {shape}, found the tensor "
                                 f"'{given.name}' of shape {given.shape} "
                                 f"(at {_user_location()})", node=self.qualified(node), op=op)
            return given.value
        if given is None:
            data = init(shape).astype(dtype)
        else:
            data = np.asarray(given)
            if data.shape != shape:
                raise ShapeError(f"expected {what} of shape {shape}, found {data.shape} "
                                 f"(at {_user_location()})", node=self.qualified(node), op=op)
            data = _checked(self, node, op, lambda: convert(data, dtype, what))
        return self.graph.add_constant(f"{self.qualified(node)}.{what}", data)

    def he_normal(self, fan_in: int):
        return lambda shape: self.rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)

    def uniform(self, bound: float, low: float | None = None):
        lo = -bound if low is None else low
        return lambda shape: self.rng.uniform(lo, bound, shape)


def _stack() -> list[Builder]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def current() -> Builder:
    stack = _stack()
    if not stack:
        raise GraphoptError("DSL layers must be called inside `with dsl.Builder(...)`")
    return stack[-1]


def _builder_of(*xs) -> Builder:
    for x in xs:
        if isinstance(x, Tensor):
            return x.builder
    return current()


def _checked(b: Builder, name: str, op: str | None, setup: Callable[[], T]) -> T:
    """Run a layer's setup (its op's construction, its shape checks before weights are drawn);
    a ShapeError names the node and the user's line, like one raised when the node is added."""
    try:
        return setup()
    except ShapeError as e:
        raise ShapeError(f"{e.detail} (at {_user_location()})", node=e.node or b.qualified(name),
                         op=e.op or op) from None


def _op(b: Builder, name: str | None, op_class: type[ops.Op], *args) -> ops.Op:
    """`op_class(*args)`, its attribute errors named like shape errors (see `_checked`)."""
    return _checked(b, name or op_class.name, op_class.name, lambda: op_class(*args))


def _count(value, what: str) -> int:
    """A positive number of channels or features."""
    value = ops.base.integer(value, what)
    if value < 1:
        raise ShapeError(f"expected a positive {what}, found {value}")
    return value


def convert(data, dtype: str, what: str) -> np.ndarray:
    """`data` in `dtype`, refusing what the conversion would change silently: values that are
    not numbers (None, strings: NaN or an error otherwise), fractions or out-of-range values for
    an integer dtype, finite values that overflow a float dtype."""
    try:
        data = np.asarray(data)
    except ValueError as e:   # ragged nested lists
        raise ShapeError(f"expected {what} as numbers, found {e}") from None
    if data.dtype.kind not in "biuf" or (data.dtype.kind == "b") != (dtype == "bool"):
        raise ShapeError(f"expected {what} as {dtype} numbers, found {data.dtype} "
                         f"{data.tolist() if data.size <= 8 else ''}".rstrip())
    target = np.dtype(dtype)
    if target.kind in "iu" and data.dtype.kind == "f":
        exact = np.isfinite(data).all() and (np.floor(data) == data).all()
        if not exact:
            raise ShapeError(f"expected integer values for {what} ({dtype}), found {data.dtype}")
    if target.kind in "iu" and data.size:
        info = np.iinfo(target)
        if data.min() < info.min or data.max() > info.max:
            raise ShapeError(f"expected {what} within the {dtype} range "
                             f"[{info.min}, {info.max}], found [{data.min()}, {data.max()}]")
    with np.errstate(over="ignore"):
        converted = data.astype(dtype)
    if target.kind == "f" and (np.isfinite(data) & ~np.isfinite(converted)).any():
        raise ShapeError(f"expected {what} within the {dtype} range, found values that "
                         f"overflow it (largest magnitude {np.abs(data).max():g})")
    return converted


def _name(b: Builder, name: str | None, default: str, op: str) -> str:
    """A layer's name before its weights are added: the user's (refused if taken), or a fresh
    one made from `default`."""
    b.expect_open(f"layer {op} called", op=op)
    if name is not None:
        return b.claim(name, op)
    return b.graph.fresh_name(b.qualified(default)).split(".")[-1]


def _as_tensor(x, like: Tensor, b: Builder, name: str | None, op: str) -> Tensor:
    """A tensor operand, or a number (or array) made a constant of `like`'s dtype."""
    if isinstance(x, Tensor):
        return x
    if not isinstance(x, (numbers.Number, np.ndarray, list, tuple)) or isinstance(x, complex):
        raise ShapeError(f"expected a tensor or a number as operand, found {x!r} "
                         f"(at {_user_location()})", node=b.qualified(name or op), op=op)
    data = _checked(b, name or op, op, lambda: convert(x, like.dtype, "the operand"))
    return b.constant("const", data)


def _padding_named(padding: str, sizes, kernel, stride, dilation) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) for padding "valid" (none) or "same". "same" at stride 1 is
    torch's: output size = input size, d * (k - 1) pads in all, the odd one at the bottom/right.
    At a larger stride (which torch refuses) it is ONNX's SAME_UPPER and TensorFlow's "SAME":
    output size = ceil(input / stride), the odd pad at the bottom/right again."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding != "same":
        raise ShapeError(f"expected padding as an int, (h, w), (top, left, bottom, right), "
                         f"'same' or 'valid', found {padding!r}")
    totals = [max(0, (-(-n // s) - 1) * s + d * (k - 1) + 1 - n)
              for n, k, s, d in zip(sizes, kernel, stride, dilation)]
    return (totals[0] // 2, totals[1] // 2, totals[0] - totals[0] // 2, totals[1] - totals[1] // 2)


# ---- layers with weights -------------------------------------------------------------------------
def conv2d(x: Tensor, out_channels: int, kernel, stride=1, padding=0, dilation=1, groups: int = 1,
           bias: bool = True, weight=None, bias_value=None, name: str | None = None) -> Tensor:
    """Convolution with a [out_channels, in/groups, kh, kw] weight; padding may be an int, (h, w),
    (top, left, bottom, right), "valid" (0) or "same" (torch's at stride 1, see
    `_padding_named`)."""
    b = _builder_of(x)
    name = _name(b, name, "conv", "conv2d")

    def plan():
        kernel_hw = ops.base.pair(kernel, "kernel")
        op = ops.Conv2d(stride, 0 if isinstance(padding, str) else padding, dilation, groups)
        shape = _grouped_weight(x, _count(out_channels, "out_channels"), op.groups, kernel_hw)
        if isinstance(padding, str):
            ops.base.expect_rank(x.value.type, 4, "input x")
            op = dataclasses.replace(op, padding=_padding_named(
                padding, x.shape[2:], kernel_hw, op.stride, op.dilation))
        op.infer(x.value.type, TensorType(shape, x.dtype))   # before any weight is drawn
        return op, shape

    op, shape = _checked(b, name, "conv2d", plan)
    fan_in = shape[1] * shape[2] * shape[3]
    inputs = [x, b.weight(name, "weight", shape, b.he_normal(fan_in), weight, x.dtype,
                          op="conv2d")]
    if bias or bias_value is not None:
        inputs.append(b.weight(name, "bias", (out_channels,), b.uniform(1 / np.sqrt(fan_in)),
                               bias_value, x.dtype, op="conv2d"))
    return b.apply(op, inputs, name)


def _grouped_weight(x, out_channels: int, groups: int, kernel) -> tuple[int, ...]:
    """[out_channels, in_channels / groups, kh, kw], once the channels divide by `groups`."""
    _expect_tensor(x)
    in_channels = x.shape[1] if len(x.shape) == 4 else 0
    if in_channels % groups or out_channels % groups:
        raise ShapeError(f"expected channels ({in_channels} in, {out_channels} out) divisible by "
                         f"groups {groups}, found {x.value.type}")
    return (out_channels, in_channels // groups, *kernel)


def _expect_tensor(x) -> None:
    if not isinstance(x, Tensor):
        raise ShapeError(f"expected a DSL tensor as input, found {type(x).__name__}")


def conv_transpose2d(x: Tensor, out_channels: int, kernel, stride=1, padding=0, output_padding=0,
                     dilation=1, groups: int = 1, bias: bool = True, weight=None, bias_value=None,
                     name: str | None = None) -> Tensor:
    """Transposed convolution with a [in, out_channels/groups, kh, kw] weight."""
    b = _builder_of(x)
    name = _name(b, name, "deconv", "conv_transpose2d")

    def plan():
        op = ops.ConvTranspose2d(stride, padding, output_padding, dilation, groups)
        out_c, in_per_group, *kernel_hw = _grouped_weight(
            x, _count(out_channels, "out_channels"), op.groups, ops.base.pair(kernel, "kernel"))
        shape = (in_per_group * op.groups, out_c // op.groups, *kernel_hw)
        op.infer(x.value.type, TensorType(shape, x.dtype))   # before any weight is drawn
        return op, shape

    op, shape = _checked(b, name, "conv_transpose2d", plan)
    fan_in = shape[1] * shape[2] * shape[3]
    inputs = [x, b.weight(name, "weight", shape, b.he_normal(fan_in), weight, x.dtype,
                          op="conv_transpose2d")]
    if bias or bias_value is not None:
        inputs.append(b.weight(name, "bias", (out_channels,), b.uniform(1 / np.sqrt(fan_in)),
                               bias_value, x.dtype, op="conv_transpose2d"))
    return b.apply(op, inputs, name)


def batch_norm(x: Tensor, epsilon: float = 1e-5, scale=None, bias=None, mean=None, var=None,
               name: str | None = None) -> Tensor:
    """Inference batch norm. Random statistics are deliberately non-trivial (mean != 0,
    var != 1, scale != 1) so that folding it into a convolution is really exercised."""
    b = _builder_of(x)
    name = _name(b, name, "bn", "batch_norm")
    op = _op(b, name, ops.BatchNorm, epsilon)
    _checked(b, name, op.name, lambda: _expect_tensor(x))
    c = (x.shape[1],) if len(x.shape) >= 2 else (0,)

    def stat(what, init, given):
        return b.weight(name, what, c, init, given, x.dtype, op="batch_norm")
    inputs = [x,
              stat("weight", b.uniform(1.5, 0.5), scale),
              stat("bias", lambda s: b.rng.normal(0.0, 0.1, s), bias),
              stat("running_mean", lambda s: b.rng.normal(0.0, 0.1, s), mean),
              stat("running_var", b.uniform(1.5, 0.5), var)]
    return b.apply(op, inputs, name)


def instance_norm(x: Tensor, epsilon: float = 1e-5, scale=None, bias=None,
                  name: str | None = None) -> Tensor:
    """Instance normalization with a per-channel scale and bias (torch's InstanceNorm2d with
    affine=True): each sample's channel normalized over its spatial axes."""
    b = _builder_of(x)
    name = _name(b, name, "in", "instance_norm")
    op = _op(b, name, ops.InstanceNorm, epsilon)
    _checked(b, name, op.name, lambda: _expect_tensor(x))
    c = (x.shape[1],) if len(x.shape) >= 2 else (0,)
    inputs = [x, b.weight(name, "weight", c, b.uniform(1.5, 0.5), scale, x.dtype,
                          op="instance_norm"),
              b.weight(name, "bias", c, lambda s: b.rng.normal(0.0, 0.1, s), bias, x.dtype,
                       op="instance_norm")]
    return b.apply(op, inputs, name)


def prelu(x: Tensor, num_parameters: int = 1, init: float = 0.25, slope=None,
          name: str | None = None) -> Tensor:
    """x for x >= 0, slope * x below, with learned slopes as torch's nn.PReLU has them: one for
    the whole tensor, or `num_parameters` = the channels (axis 1) for one per channel; each
    `init` unless `slope` gives them."""
    b = _builder_of(x)
    name = _name(b, name, "prelu", "prelu")

    def plan():
        _expect_tensor(x)
        channels = x.shape[1] if len(x.shape) >= 2 else 1
        count = _count(num_parameters, "num_parameters")
        if count not in (1, channels):
            raise ShapeError(f"expected num_parameters 1 or the {channels} channels of "
                             f"'{x.name}', found {count}")
        return (1,) if count == 1 else (channels,) + (1,) * (len(x.shape) - 2)

    shape = _checked(b, name, "prelu", plan)
    inputs = [x, b.weight(name, "slope", shape, lambda s: np.full(s, init), slope, x.dtype,
                          op="prelu")]
    return b.apply(_op(b, name, ops.PRelu), inputs, name)


def linear(x: Tensor, out_features: int, bias: bool = True, weight=None, bias_value=None,
           name: str | None = None) -> Tensor:
    """Fully connected layer with a [out_features, in_features] weight (torch's layout)."""
    b = _builder_of(x)
    name = _name(b, name, "fc", "linear")
    op = ops.Linear()

    def plan():
        _expect_tensor(x)
        shape = (_count(out_features, "out_features"), x.shape[-1] if x.shape else 0)
        op.infer(x.value.type, TensorType(shape, x.dtype))   # before any weight is drawn
        return shape

    out_features, in_features = _checked(b, name, op.name, plan)
    inputs = [x, b.weight(name, "weight", (out_features, in_features), b.he_normal(in_features),
                          weight, x.dtype, op="linear")]
    if bias or bias_value is not None:
        inputs.append(b.weight(name, "bias", (out_features,), b.uniform(1 / np.sqrt(in_features)),
                               bias_value, x.dtype, op="linear"))
    return b.apply(op, inputs, name)


# ---- weightless layers ---------------------------------------------------------------------------
def _unary(x: Tensor, name: str | None, op_class: type[ops.Op], *args) -> Tensor:
    b = _builder_of(x)
    return b.apply(_op(b, name, op_class, *args), [x], name)


def identity(x, name=None): return _unary(x, name, ops.Identity)
def relu(x, name=None): return _unary(x, name, ops.Relu)
def clip(x, min=None, max=None, name=None): return _unary(x, name, ops.Clip, min, max)
def leaky_relu(x, alpha=0.01, name=None): return _unary(x, name, ops.LeakyRelu, alpha)
def sigmoid(x, name=None): return _unary(x, name, ops.Sigmoid)
def tanh(x, name=None): return _unary(x, name, ops.Tanh)
def hard_sigmoid(x, alpha=0.2, beta=0.5, name=None):
    return _unary(x, name, ops.HardSigmoid, alpha, beta)
def hard_swish(x, name=None): return _unary(x, name, ops.HardSwish)
def gelu(x, approximate="none", name=None): return _unary(x, name, ops.Gelu, approximate)
def exp(x, name=None): return _unary(x, name, ops.Exp)
def elu(x, alpha=1.0, name=None): return _unary(x, name, ops.Elu, alpha)
def selu(x, name=None): return _unary(x, name, ops.Selu)
def softplus(x, name=None): return _unary(x, name, ops.Softplus)
def softsign(x, name=None): return _unary(x, name, ops.Softsign)
def mish(x, name=None): return _unary(x, name, ops.Mish)
def thresholded_relu(x, alpha=1.0, name=None): return _unary(x, name, ops.ThresholdedRelu, alpha)
def abs(x, name=None): return _unary(x, name, ops.Abs)   # noqa: A001 (ONNX's Abs)
def neg(x, name=None): return _unary(x, name, ops.Neg)
def reciprocal(x, name=None): return _unary(x, name, ops.Reciprocal)
def softmax(x, axis=-1, name=None): return _unary(x, name, ops.Softmax, axis)
def log_softmax(x, axis=-1, name=None): return _unary(x, name, ops.LogSoftmax, axis)
def celu(x, alpha=1.0, name=None): return _unary(x, name, ops.Celu, alpha)
def sign(x, name=None): return _unary(x, name, ops.Sign)
def floor(x, name=None): return _unary(x, name, ops.Floor)
def ceil(x, name=None): return _unary(x, name, ops.Ceil)
def round(x, name=None): return _unary(x, name, ops.Round)   # noqa: A001 (ONNX's Round)
def dropout(x, ratio=0.5, name=None): return _unary(x, name, ops.Dropout, ratio)
def global_avg_pool2d(x, name=None): return _unary(x, name, ops.GlobalAvgPool2d)
def global_max_pool2d(x, name=None): return _unary(x, name, ops.GlobalMaxPool2d)
def flatten(x, axis=1, name=None): return _unary(x, name, ops.Flatten, axis)
def reshape(x, shape, name=None): return _unary(x, name, ops.Reshape, shape)
def transpose(x, perm, name=None): return _unary(x, name, ops.Transpose, perm)


def relu6(x, name=None):
    """clip(x, 0, 6), its node named 'relu6' (then 'relu6_1', ...) unless `name`."""
    return _unary(x, _name(_builder_of(x), name, "relu6", "clip"), ops.Clip, 0.0, 6.0)


def silu(x, name=None):
    """x * sigmoid(x) (SiLU, Swish-1): a sigmoid node '<name>.sigmoid' and a mul node '<name>'
    (default 'silu', 'silu_1', ...), the form ONNX Swish imports to."""
    name = _name(_builder_of(x), name, "silu", "mul")
    return mul(x, sigmoid(x, name=f"{name}.sigmoid"), name=name)


def split(x, sizes, axis=1, name=None) -> list[Tensor]:
    """Consecutive parts of `x` along `axis` with the given sizes (torch.split with a list; a
    chunk into two halves is `split(x, [c // 2, c // 2])`), one slice node each, named
    '<name>.0', '<name>.1', ... when `name` is given."""
    b = _builder_of(x)

    def plan():
        _expect_tensor(x)
        dim = x.shape[ops.shape.normalize_axis(ops.base.integer(axis, "axis"), len(x.shape))]
        if not isinstance(sizes, (list, tuple)):
            raise ShapeError(f"expected a list of sizes, found {sizes!r}")
        counts = [ops.base.integer(size, "size") for size in sizes]
        if sum(counts) != dim or min(counts, default=0) < 0:
            raise ShapeError(f"expected non-negative sizes summing to {dim} (axis {axis} of "
                             f"{x.value.type}), found {list(sizes)}")
        return counts

    parts, start = [], 0
    for i, size in enumerate(_checked(b, name or "split", "slice", plan)):
        part = None if name is None else f"{name}.{i}"
        parts.append(_unary(x, part, ops.Slice, (start,), (start + size,), (axis,), (1,)))
        start += size
    return parts


def lrn(x, size=5, alpha=1e-4, beta=0.75, bias=1.0, name=None):
    return _unary(x, name, ops.Lrn, size, alpha, beta, bias)


def max_pool2d(x, kernel, stride=None, padding=0, dilation=1, ceil_mode=False, name=None,
               return_indices=False):
    """Max pooling; with `return_indices`, (values, indices): the indices (int64, node
    '<name>.indices') say where each maximum is as a flat index into the whole input (ONNX
    MaxPool's; torch's count within each channel's plane), for `max_unpool2d`; without `name`
    the indices node is 'max_pool2d_indices'."""
    values = _unary(x, name, ops.MaxPool2d, kernel, stride, padding, dilation, ceil_mode)
    if not return_indices:
        return values
    indices = _unary(x, None if name is None else f"{name}.indices", ops.MaxPool2dIndices,
                     kernel, stride, padding, dilation, ceil_mode)
    return values, indices


def max_unpool2d(x, indices, kernel, stride=None, padding=0, output_size=None, name=None):
    """The inverse of a max pool: zeros of the pooled input's size (by default the size the
    geometry gives, (in - 1) * stride + kernel - padding; `output_size` (h, w) for a pool that
    dropped rows or columns) with each value of `x` at its index from
    `max_pool2d(..., return_indices=True)`."""
    b = _builder_of(x, indices)
    op = _op(b, name, ops.MaxUnpool2d, kernel, stride, padding, output_size)
    if isinstance(x, Tensor) and isinstance(indices, Tensor) and len(x.shape) == 4 and \
            op.indices_from_pool(indices.value, (*x.shape[:2], *op.out_hw(*x.shape[2:]))):
        op = dataclasses.replace(op, window_indices=True)
    return b.apply(op, [x, indices], name)


def avg_pool2d(x, kernel, stride=None, padding=0, ceil_mode=False, count_include_pad=False,
               name=None):
    return _unary(x, name, ops.AvgPool2d, kernel, stride, padding, 1, ceil_mode,
                  count_include_pad)


def pad(x, pads, value=0.0, name=None, mode="constant"):
    """`pads`: one (before, after) pair per axis, or (top, left, bottom, right) for NCHW H and W;
    `mode` "constant" (filled with `value`), "reflect" or "edge"."""
    if isinstance(pads, (tuple, list)) and len(pads) == 4 and isinstance(x, Tensor) \
            and len(x.shape) == 4 and all(isinstance(p, (int, np.integer)) for p in pads):
        t, l, bt, r = pads
        pads = ((0, 0), (0, 0), (t, bt), (l, r))
    return _unary(x, name, ops.Pad, pads, value, mode)


def resize(x, size=None, scale=None, mode="nearest", align_corners=False, name=None):
    """Resize H and W to `size`, or by `scale` (output = floor(input * scale), as PyTorch's
    scale_factor); bilinear uses half_pixel coordinates (PyTorch's align_corners=False) or
    align_corners; nearest matches PyTorch's 'nearest'."""
    if mode not in ("nearest", "bilinear"):
        raise GraphoptError(f"expected mode 'nearest' or 'bilinear', found {mode!r} "
                            f"(at {_user_location()})", op="resize")
    if size is None:
        if scale is None:
            raise GraphoptError(f"resize needs a size or a scale (at {_user_location()})",
                                op="resize")
        scales = (scale, scale) if isinstance(scale, numbers.Real) else scale
        if not isinstance(scales, (tuple, list)) or len(scales) != 2 or not all(
                isinstance(s, numbers.Real) and not isinstance(s, bool) and 0 < s < float("inf")
                for s in scales):
            raise ShapeError(f"expected a positive finite scale or (h, w) pair of scales, found "
                             f"{scale!r} (at {_user_location()})",
                             node=_builder_of(x).qualified(name or "resize"), op="resize")
        _checked(_builder_of(x), name or "resize", "resize", lambda: (
            _expect_tensor(x), ops.base.expect_rank(x.value.type, 4, "input x")))
        size = tuple(int(np.floor(d * s)) for d, s in zip(x.shape[2:4], scales))
    if mode == "nearest":
        return _unary(x, name, ops.Resize, size, "nearest", "asymmetric", "floor")
    return _unary(x, name, ops.Resize, size, "bilinear",
                  "align_corners" if align_corners else "half_pixel")


def _binary(op: ops.Op, a, b_, name) -> Tensor:
    b = _builder_of(a, b_)
    b.expect_open(f"layer {op.name} called", op=op.name)    # before a number becomes a constant
    if not isinstance(a, Tensor) and not isinstance(b_, Tensor):
        raise GraphoptError(f"expected a DSL tensor among the operands, found "
                            f"{type(a).__name__} and {type(b_).__name__} (at {_user_location()})",
                            node=b.qualified(name or op.name), op=op.name)
    like = a if isinstance(a, Tensor) else b_
    return b.apply(op, [_as_tensor(a, like, b, name, op.name),
                        _as_tensor(b_, like, b, name, op.name)], name)


def add(a, b, name=None): return _binary(ops.Add(), a, b, name)
def sub(a, b, name=None): return _binary(ops.Sub(), a, b, name)
def mul(a, b, name=None): return _binary(ops.Mul(), a, b, name)
def div(a, b, name=None): return _binary(ops.Div(), a, b, name)
def maximum(a, b, name=None): return _binary(ops.Maximum(), a, b, name)
def minimum(a, b, name=None): return _binary(ops.Minimum(), a, b, name)
def matmul(a, b, name=None): return _binary(ops.Matmul(), a, b, name)


def concat(xs: Sequence[Tensor], axis: int = 1, name=None) -> Tensor:
    if not isinstance(xs, (list, tuple)):
        raise GraphoptError(f"expected a list of tensors to concat, found {type(xs).__name__} "
                            f"(at {_user_location()})", op="concat")
    b = _builder_of(*xs)
    return b.apply(_op(b, name, ops.Concat, axis), list(xs), name)


# ---- indexing and recurrent layers -----------------------------------------------------------------
def parameter(name: str, shape: Sequence[int], std: float = 1.0, value=None,
              dtype: str = "float32") -> Tensor:
    """A learned constant named `name` (scoped): `value` (shape-checked), or N(0, std^2) drawn
    from the seed (a table of embeddings, a weight several layers share)."""
    b = current()
    b.expect_open(f"parameter '{name}' added")
    b.claim(name, "parameter")

    def plan():
        dims = ops.base.int_tuple(shape, "shape")
        data = b.rng.normal(0.0, std, dims) if value is None else np.asarray(value)
        if data.shape != dims:
            raise ShapeError(f"expected {name} of shape {dims}, found {data.shape}")
        return convert(data, dtype, name)

    return Tensor(b.graph.add_constant(b.qualified(name), _checked(b, name, None, plan)), b)


def inputs_of(t: Tensor) -> list[Tensor]:
    """The inputs of the layer that computed `t` (its weights, to share them with another)."""
    producer = t.value.producer
    if producer is None:
        raise GraphoptError(f"'{t.name}' is a graph input or constant, not a layer's output")
    return [Tensor(v, t.builder) for v in producer.inputs]


def slice(x, starts, ends, axes=None, steps=None, name=None):   # noqa: A001 (ONNX's name)
    """x[starts:ends:steps] along `axes` (by default the first len(starts) axes), ONNX Slice's
    clamping of out-of-range bounds."""
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    return _unary(x, name, ops.Slice, starts, ends, axes, steps)


def expand(x, shape, name=None):
    """`x` broadcast to `shape` (ONNX Expand)."""
    return _unary(x, name, ops.Expand, shape)


def gather(x, indices, axis: int = 0, name=None) -> Tensor:
    """Entries of `x` along `axis` at the int32/int64 `indices` (ONNX Gather, numpy's take)."""
    b = _builder_of(x, indices)
    return b.apply(_op(b, name, ops.Gather, axis), [x, indices], name)


REDUCTIONS = ("mean", "sum", "max", "min", "prod", "l1", "l2", "sum_square", "log_sum_exp")


def reduce(x, kind: str, axes=None, keepdims: bool = True, name=None) -> Tensor:
    """The reduction `kind` (one of REDUCTIONS: ONNX's ReduceMean, ... ReduceLogSumExp) over
    `axes` (all when None), keeping them as size 1 with `keepdims`."""
    if kind not in REDUCTIONS:
        raise GraphoptError(f"expected a reduction among {', '.join(REDUCTIONS)}, found "
                            f"{kind!r} (at {_user_location()})", op="reduce")
    return _unary(x, name, ops.get_op(f"reduce_{kind}"), axes, keepdims)


def argmax(x, axis: int = -1, keepdims: bool = False, name=None) -> Tensor:
    """The int64 index of the largest entry along `axis`, the first on ties (torch's argmax)."""
    return _unary(x, name, ops.ArgMax, axis, keepdims)


def cumsum(x, axis: int, exclusive: bool = False, reverse: bool = False, name=None) -> Tensor:
    """The running sum along `axis` (torch's cumsum); `exclusive` leaves each entry out of its
    own sum, `reverse` sums from the end (ONNX CumSum's attributes)."""
    return _unary(x, name, ops.CumSum, axis, exclusive, reverse)


def embedding(indices, num_embeddings: int | None = None, embedding_dim: int | None = None,
              weight=None, name: str | None = None) -> Tensor:
    """Rows of a [num_embeddings, embedding_dim] table at int `indices` (torch's nn.Embedding,
    its table '<name>.weight' drawn N(0, 1)); `weight` may be an array or a tensor (a table
    another layer uses too), the sizes then coming from it."""
    b = _builder_of(indices)
    name = _name(b, name, "embedding", "gather")
    if isinstance(weight, Tensor) and num_embeddings is None and embedding_dim is None:
        num_embeddings, embedding_dim = weight.shape
    shape = _checked(b, name, "gather", lambda: (_count(num_embeddings, "num_embeddings"),
                                                 _count(embedding_dim, "embedding_dim")))
    table = b.weight(name, "weight", shape, lambda s: b.rng.normal(0.0, 1.0, s), weight,
                     "float32", op="gather")
    return b.apply(_op(b, name, ops.Gather, 0), [table, indices], name)


def _recurrent(op_class, x, hidden_size, direction, initial, bias, layout, sequence_lens,
               weight, recurrence_weight, bias_value, name, extra) -> list[Tensor]:
    """lstm / gru: weights '<name>.W' [D, G*H, I], '.R' [D, G*H, H] and '.B' [D, 2*G*H] in
    ONNX's layout and gate order, drawn U(-1/sqrt(H), 1/sqrt(H)) as torch initializes them; a
    given initial state without the other (LSTM) starts that one at zeros; bias=False with
    initial states adds a B of zeros (ONNX's inputs are positional; it counts as parameters)."""
    b = _builder_of(x)
    name = _name(b, name, op_class.name, op_class.name)

    def plan():
        _expect_tensor(x)
        op = op_class(direction, extra.pop("activations"), extra.pop("clip"), layout,
                      sequence_lens, **extra)
        hidden = _count(hidden_size, "hidden_size")
        ops.base.expect_rank(x.value.type, 3, "X")
        return op, hidden

    op, hidden = _checked(b, name, op_class.name, plan)
    d, g, size = op.num_directions, op.gates * hidden, x.shape[2]
    init = b.uniform(1 / np.sqrt(hidden))
    inputs = [x, b.weight(name, "W", (d, g, size), init, weight, x.dtype, op=op.name),
              b.weight(name, "R", (d, g, hidden), init, recurrence_weight, x.dtype, op=op.name)]
    states = [s for s in initial if s is not None]
    if bias or bias_value is not None or states:
        inputs.append(b.weight(name, "B", (d, 2 * g), init if bias or bias_value is not None
                               else np.zeros, bias_value, x.dtype, op=op.name))
    if states:
        batch = x.shape[1 - layout]
        shape = (d, batch, hidden) if layout == 0 else (batch, d, hidden)
        for i, s in enumerate(initial):
            inputs.append(s if s is not None else
                          b.constant(f"{name}.initial_{'hc'[i]}", np.zeros(shape, x.dtype)))
    y = b.apply(op, inputs, name)
    return [Tensor(v, b) for v in y.value.producer.outputs]


def lstm(x: Tensor, hidden_size: int, direction: str = "forward", initial_h=None,
         initial_c=None, bias: bool = True, layout: int = 0, sequence_lens=None,
         activations=(), clip=None, weight=None, recurrence_weight=None, bias_value=None,
         name: str | None = None) -> list[Tensor]:
    """An LSTM layer with ONNX LSTM's semantics (x [T, batch, I], or [batch, T, I] with
    layout 1); returns [Y, Y_h, Y_c]. `activations`: (name, alpha, beta) per function and
    direction (`ops.recurrent.ACTIVATIONS`), () for Sigmoid, Tanh, Tanh. Weights may be arrays
    or tensors of another lstm (shared)."""
    return _recurrent(ops.Lstm, x, hidden_size, direction, (initial_h, initial_c), bias, layout,
                      sequence_lens, weight, recurrence_weight, bias_value, name,
                      {"activations": activations, "clip": clip})


def gru(x: Tensor, hidden_size: int, direction: str = "forward", initial_h=None,
        bias: bool = True, layout: int = 0, sequence_lens=None, linear_before_reset=True,
        activations=(), clip=None, weight=None, recurrence_weight=None, bias_value=None,
        name: str | None = None) -> list[Tensor]:
    """A GRU layer with ONNX GRU's semantics, by default linear_before_reset (torch's nn.GRU);
    returns [Y, Y_h]."""
    return _recurrent(ops.Gru, x, hidden_size, direction, (initial_h,), bias, layout,
                      sequence_lens, weight, recurrence_weight, bias_value, name,
                      {"linear_before_reset": linear_before_reset, "activations": activations,
                       "clip": clip})


__all__ = ["Builder", "Tensor", "current", "conv2d", "conv_transpose2d", "batch_norm", "linear",
           "identity", "relu", "relu6", "clip", "leaky_relu", "sigmoid", "tanh", "hard_sigmoid",
           "hard_swish", "gelu", "silu", "exp", "softmax", "split",
           "dropout", "max_pool2d", "max_unpool2d", "avg_pool2d", "global_avg_pool2d",
           "global_max_pool2d", "lrn", "reduce",
           "flatten", "reshape", "transpose", "pad", "resize", "instance_norm", "add", "sub", "mul",
           "div", "matmul", "concat", "parameter", "inputs_of", "expand", "gather", "argmax",
           "cumsum",
           "embedding", "lstm", "gru", "elu", "selu", "softplus", "softsign", "mish",
           "thresholded_relu", "neg", "reciprocal", "maximum", "minimum", "prelu",
           "log_softmax", "celu", "sign", "floor", "ceil"]
# (dsl.slice, dsl.abs and dsl.round stay out: they would shadow the builtins)
