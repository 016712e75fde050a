"""A small functional DSL for writing CNNs:

    with dsl.Builder("tiny", seed=0) as b:
        x = b.input("input", (1, 1, 28, 28))
        x = dsl.relu(dsl.conv2d(x, 8, kernel=3, padding=1))
        graph = b.output(dsl.linear(dsl.flatten(dsl.max_pool2d(x, 2)), 10))

Shapes are checked as each layer is written; a shape error names the node and points at the
user's file and line. Weights are initialised deterministically from the builder's seed (He init
for convolutions and linear layers, non-trivial statistics for batch_norm) unless given as arrays.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Iterator, Sequence

import numpy as np

from .. import ops
from ..errors import GraphoptError, ShapeError
from ..ir import Graph, TensorType, Value
from ..verify import verify

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INTERNAL = tuple(os.path.join(_PACKAGE_DIR, p) for p in ("frontends", "ops", "ir.py"))
_local = threading.local()


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
        self.graph = Graph(name)
        self.rng = np.random.default_rng(seed)
        self._scopes: list[str] = []
        self._finished = False

    # ---- context ------------------------------------------------------------------------------
    def __enter__(self) -> "Builder":
        _stack().append(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        _stack().pop()
        if exc_type is None and self._finished:
            verify(self.graph)

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
        return Tensor(self.graph.add_input(name, TensorType(tuple(shape), dtype)), self)

    def constant(self, name: str, data) -> Tensor:
        return Tensor(self.graph.add_constant(self.qualified(name), np.asarray(data)), self)

    def output(self, *tensors: Tensor, names: Sequence[str] | None = None) -> Graph:
        """Mark the graph outputs (named 'output', or 'output0', 'output1', ... unless `names`)
        and return the finished graph."""
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
        values = [t.value if isinstance(t, Tensor) else t for t in inputs]
        node_name = self.qualified(name or op.name)
        try:
            node = self.graph.add_node(op, values, name=node_name)
        except ShapeError as e:
            raise ShapeError(f"{e.detail} (at {_user_location()})", node=e.node or node_name,
                             op=op.name) from None
        return Tensor(node.outputs[0], self)

    def weight(self, node: str, what: str, shape: tuple[int, ...], init, given, dtype: str,
               op: str | None = None) -> Value:
        """A named constant: the user's array (shape-checked) or a fresh draw from the seed."""
        if given is None:
            data = init(shape)
        else:
            data = np.asarray(given)
            if data.shape != shape:
                raise ShapeError(f"expected {what} of shape {shape}, found {data.shape} "
                                 f"(at {_user_location()})", node=self.qualified(node), op=op)
        return self.graph.add_constant(f"{self.qualified(node)}.{what}", data.astype(dtype))

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


def _name(name: str | None, default: str) -> str:
    return name if name is not None else current().graph.fresh_name(current().qualified(default)) \
        .split(".")[-1]


def _as_tensor(x, like: Tensor, b: Builder) -> Tensor:
    if isinstance(x, Tensor):
        return x
    return b.constant("const", np.asarray(x, dtype=like.dtype))


def _same_padding(kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    total = [d * (k - 1) for k, d in zip(kernel, dilation)]
    return (total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2)


# ---- layers with weights -------------------------------------------------------------------------
def conv2d(x: Tensor, out_channels: int, kernel, stride=1, padding=0, dilation=1, groups: int = 1,
           bias: bool = True, weight=None, bias_value=None, name: str | None = None) -> Tensor:
    """Convolution with a [out_channels, in/groups, kh, kw] weight; padding may be an int, (h, w),
    (top, left, bottom, right) or "same"."""
    b = _builder_of(x)
    kernel, dilation = ops.base.pair(kernel), ops.base.pair(dilation)
    if padding == "same":
        padding = _same_padding(kernel, dilation)
    name = _name(name, "conv")
    in_channels = x.shape[1] if len(x.shape) == 4 else -1
    if in_channels % groups or out_channels % groups:
        raise ShapeError(f"expected channels ({in_channels} in, {out_channels} out) divisible by "
                         f"groups {groups}, found {x.value.type} (at {_user_location()})",
                         node=b.qualified(name), op="conv2d")
    fan_in = in_channels // groups * kernel[0] * kernel[1]
    shape = (out_channels, in_channels // groups, *kernel)
    inputs = [x, b.weight(name, "weight", shape, b.he_normal(fan_in), weight, x.dtype,
                          op="conv2d")]
    if bias or bias_value is not None:
        inputs.append(b.weight(name, "bias", (out_channels,), b.uniform(1 / np.sqrt(fan_in)),
                               bias_value, x.dtype, op="conv2d"))
    return b.apply(ops.Conv2d(stride, padding, dilation, groups), inputs, name)


def conv_transpose2d(x: Tensor, out_channels: int, kernel, stride=1, padding=0, output_padding=0,
                     dilation=1, groups: int = 1, bias: bool = True, weight=None, bias_value=None,
                     name: str | None = None) -> Tensor:
    """Transposed convolution with a [in, out_channels/groups, kh, kw] weight."""
    b = _builder_of(x)
    kernel = ops.base.pair(kernel)
    name = _name(name, "deconv")
    in_channels = x.shape[1] if len(x.shape) == 4 else -1
    if in_channels % groups or out_channels % groups:
        raise ShapeError(f"expected channels ({in_channels} in, {out_channels} out) divisible by "
                         f"groups {groups} (at {_user_location()})", node=b.qualified(name),
                         op="conv_transpose2d")
    fan_in = out_channels // groups * kernel[0] * kernel[1]
    shape = (in_channels, out_channels // groups, *kernel)
    inputs = [x, b.weight(name, "weight", shape, b.he_normal(fan_in), weight, x.dtype,
                          op="conv_transpose2d")]
    if bias or bias_value is not None:
        inputs.append(b.weight(name, "bias", (out_channels,), b.uniform(1 / np.sqrt(fan_in)),
                               bias_value, x.dtype, op="conv_transpose2d"))
    return b.apply(ops.ConvTranspose2d(stride, padding, output_padding, dilation, groups),
                   inputs, name)


def batch_norm(x: Tensor, epsilon: float = 1e-5, scale=None, bias=None, mean=None, var=None,
               name: str | None = None) -> Tensor:
    """Inference batch norm. Random statistics are deliberately non-trivial (mean != 0,
    var != 1, scale != 1) so that folding it into a convolution is really exercised."""
    b = _builder_of(x)
    name = _name(name, "bn")
    c = (x.shape[1],) if len(x.shape) >= 2 else (0,)

    def stat(what, init, given):
        return b.weight(name, what, c, init, given, x.dtype, op="batch_norm")
    inputs = [x,
              stat("weight", b.uniform(1.5, 0.5), scale),
              stat("bias", lambda s: b.rng.normal(0.0, 0.1, s), bias),
              stat("running_mean", lambda s: b.rng.normal(0.0, 0.1, s), mean),
              stat("running_var", b.uniform(1.5, 0.5), var)]
    return b.apply(ops.BatchNorm(epsilon), inputs, name)


def linear(x: Tensor, out_features: int, bias: bool = True, weight=None, bias_value=None,
           name: str | None = None) -> Tensor:
    """Fully connected layer with a [out_features, in_features] weight (torch's layout)."""
    b = _builder_of(x)
    name = _name(name, "fc")
    in_features = x.shape[-1] if x.shape else 0
    inputs = [x, b.weight(name, "weight", (out_features, in_features), b.he_normal(in_features),
                          weight, x.dtype, op="linear")]
    if bias or bias_value is not None:
        inputs.append(b.weight(name, "bias", (out_features,), b.uniform(1 / np.sqrt(in_features)),
                               bias_value, x.dtype, op="linear"))
    return b.apply(ops.Linear(), inputs, name)


# ---- weightless layers ---------------------------------------------------------------------------
def _unary(op: ops.Op, x: Tensor, name: str | None) -> Tensor:
    return _builder_of(x).apply(op, [x], name)


def identity(x, name=None): return _unary(ops.Identity(), x, name)
def relu(x, name=None): return _unary(ops.Relu(), x, name)
def relu6(x, name=None): return _unary(ops.Clip(0.0, 6.0), x, name or "relu6")
def clip(x, min=None, max=None, name=None): return _unary(ops.Clip(min, max), x, name)
def leaky_relu(x, alpha=0.01, name=None): return _unary(ops.LeakyRelu(alpha), x, name)
def sigmoid(x, name=None): return _unary(ops.Sigmoid(), x, name)
def tanh(x, name=None): return _unary(ops.Tanh(), x, name)
def softmax(x, axis=-1, name=None): return _unary(ops.Softmax(axis), x, name)
def dropout(x, ratio=0.5, name=None): return _unary(ops.Dropout(ratio), x, name)
def global_avg_pool2d(x, name=None): return _unary(ops.GlobalAvgPool2d(), x, name)
def global_max_pool2d(x, name=None): return _unary(ops.GlobalMaxPool2d(), x, name)
def flatten(x, axis=1, name=None): return _unary(ops.Flatten(axis), x, name)
def reshape(x, shape, name=None): return _unary(ops.Reshape(tuple(shape)), x, name)
def transpose(x, perm, name=None): return _unary(ops.Transpose(tuple(perm)), x, name)


def lrn(x, size=5, alpha=1e-4, beta=0.75, bias=1.0, name=None):
    return _unary(ops.Lrn(size, alpha, beta, bias), x, name)


def max_pool2d(x, kernel, stride=None, padding=0, dilation=1, ceil_mode=False, name=None):
    return _unary(ops.MaxPool2d(kernel, stride, padding, dilation, ceil_mode), x, name)


def avg_pool2d(x, kernel, stride=None, padding=0, ceil_mode=False, count_include_pad=False,
               name=None):
    return _unary(ops.AvgPool2d(kernel, stride, padding, 1, ceil_mode, count_include_pad), x, name)


def pad(x, pads, value=0.0, name=None):
    """`pads`: one (before, after) pair per axis, or (top, left, bottom, right) for NCHW H and W."""
    pads = tuple(pads)
    if len(pads) == 4 and all(isinstance(p, (int, np.integer)) for p in pads) and len(x.shape) == 4:
        t, l, bt, r = pads
        pads = ((0, 0), (0, 0), (t, bt), (l, r))
    return _unary(ops.Pad(pads, value), x, name)


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
        scales = (scale, scale) if isinstance(scale, (int, float)) else tuple(scale)
        if len(scales) != 2 or not all(isinstance(s, (int, float)) and s > 0 for s in scales):
            raise ShapeError(f"expected a positive scale or (h, w) pair of scales, found {scale!r} "
                             f"(at {_user_location()})", op="resize")
        size = tuple(int(np.floor(d * s)) for d, s in zip(x.shape[2:4], scales))
    if mode == "nearest":
        op = ops.Resize(size, "nearest", "asymmetric", "floor")
    else:
        op = ops.Resize(size, "bilinear", "align_corners" if align_corners else "half_pixel")
    return _unary(op, x, name)


def _binary(op: ops.Op, a, b_, name) -> Tensor:
    b = _builder_of(a, b_)
    like = a if isinstance(a, Tensor) else b_
    return b.apply(op, [_as_tensor(a, like, b), _as_tensor(b_, like, b)], name)


def add(a, b, name=None): return _binary(ops.Add(), a, b, name)
def sub(a, b, name=None): return _binary(ops.Sub(), a, b, name)
def mul(a, b, name=None): return _binary(ops.Mul(), a, b, name)
def div(a, b, name=None): return _binary(ops.Div(), a, b, name)
def matmul(a, b, name=None): return _binary(ops.Matmul(), a, b, name)


def concat(xs: Sequence[Tensor], axis: int = 1, name=None) -> Tensor:
    return _builder_of(*xs).apply(ops.Concat(axis), list(xs), name)


__all__ = ["Builder", "Tensor", "current", "conv2d", "conv_transpose2d", "batch_norm", "linear",
           "identity", "relu", "relu6", "clip", "leaky_relu", "sigmoid", "tanh", "softmax",
           "dropout", "max_pool2d", "avg_pool2d", "global_avg_pool2d", "global_max_pool2d", "lrn",
           "flatten", "reshape", "transpose", "pad", "resize", "add", "sub", "mul", "div",
           "matmul", "concat"]
