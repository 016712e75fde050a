"""Run a Graph eagerly with PyTorch, one `torch.nn.functional` call per node: the baseline the
runtime bundle times compiled models against on the same device ("torch eager").

    forward = TorchEager(graph, device="cuda")
    outputs = forward({"input": x})          # {output name: numpy array}

Covers the ops of the zoo's networks and the fused convolutions passes create; any other op
raises UnsupportedOpError naming the node. `forward` runs under the caller's autograd mode with
weights the caller may replace (trainable parameters: `graphopt.compression.finetune`). torch is
imported only here.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from .errors import GraphoptError, UnsupportedOpError
from .ir import Graph
from .ops.activation import HARD_SWISH_ALPHA, HARD_SWISH_BETA


def _symmetric(padding) -> tuple[int, int] | None:
    top, left, bottom, right = padding
    return (top, left) if (top, left) == (bottom, right) else None


def _conv2d(F, op, x, w, b=None):
    padding = _symmetric(op.padding)
    if padding is None:   # (top, left, bottom, right) -> F.pad's (left, right, top, bottom)
        top, left, bottom, right = op.padding
        x, padding = F.pad(x, (left, right, top, bottom)), 0
    return F.conv2d(x, w, b, op.stride, padding, op.dilation, op.groups)


def _conv_transpose2d(F, op, x, w, b=None):
    padding = _symmetric(op.padding)
    if padding is None:
        raise UnsupportedOpError("asymmetric padding has no torch conv_transpose2d form")
    return F.conv_transpose2d(x, w, b, op.stride, padding, op.output_padding, op.groups,
                              op.dilation)


def _fused_conv2d(F, table, op, *inputs):
    """activation(conv2d(x, w, b) + residual), the activation by its own table entry."""
    x, w, b, residual = op.split(inputs)
    y = _conv2d(F, op.conv, x, w, b)
    if residual is not None:
        y = y + residual
    return y if op.activation is None else table[op.activation.name](op.activation, y)


def _pool(F, op, x, kind):
    padding = _symmetric(op.padding)
    if padding is None:
        raise UnsupportedOpError("asymmetric pooling padding has no torch form")
    if kind == "max":
        return F.max_pool2d(x, op.kernel, op.stride, padding, op.dilation, op.ceil_mode)
    if tuple(op.dilation) != (1, 1):
        raise UnsupportedOpError("dilated average pooling has no torch form")
    return F.avg_pool2d(x, op.kernel, op.stride, padding, op.ceil_mode, op.count_include_pad)


def _table(torch, F):
    """op name -> f(op, *input tensors) -> tensor."""
    table = {
        "conv2d": lambda op, *a: _conv2d(F, op, *a),
        "conv_transpose2d": lambda op, *a: _conv_transpose2d(F, op, *a),
        "batch_norm": lambda op, x, scale, bias, mean, var: F.batch_norm(
            x, mean, var, scale, bias, training=False, eps=op.epsilon),
        "linear": lambda op, x, w, b=None: F.linear(x, w, b),
        "matmul": lambda op, a, b: torch.matmul(a, b),
        "relu": lambda op, x: F.relu(x),
        "clip": lambda op, x: torch.clamp(x, op.min, op.max),
        "leaky_relu": lambda op, x: F.leaky_relu(x, op.alpha),
        "sigmoid": lambda op, x: torch.sigmoid(x),
        # hard_sigmoid / hard_swish with ONNX's coefficients (torch's Hardswish divides by 6);
        # silu only as a fused conv's activation (a graph holds it as sigmoid and mul)
        "hard_sigmoid": lambda op, x: torch.clamp(x * op.alpha + op.beta, 0, 1),
        "hard_swish": lambda op, x: x * torch.clamp(x * HARD_SWISH_ALPHA + HARD_SWISH_BETA, 0, 1),
        "silu": lambda op, x: x * torch.sigmoid(x),
        "tanh": lambda op, x: torch.tanh(x),
        "softmax": lambda op, x: F.softmax(x, op.axis),
        "identity": lambda op, x: x,
        "dropout": lambda op, x: x,                      # inference
        "max_pool2d": lambda op, x: _pool(F, op, x, "max"),
        "avg_pool2d": lambda op, x: _pool(F, op, x, "avg"),
        "global_avg_pool2d": lambda op, x: F.adaptive_avg_pool2d(x, 1),
        "global_max_pool2d": lambda op, x: F.adaptive_max_pool2d(x, 1),
        "lrn": lambda op, x: F.local_response_norm(x, op.size, op.alpha, op.beta, op.bias),
        "add": lambda op, a, b: a + b,
        "sub": lambda op, a, b: a - b,
        "mul": lambda op, a, b: a * b,
        "div": lambda op, a, b: a / b,
        "concat": lambda op, *xs: torch.cat(xs, op.axis),
        "flatten": lambda op, x: torch.flatten(x, op.axis) if op.axis == 1 else
        x.reshape(int(np.prod(x.shape[:op.axis])), -1),
        "reshape": lambda op, x: x.reshape(op.shape),
        "transpose": lambda op, x: x.permute(op.perm),
    }
    table["fused_conv2d"] = lambda op, *a: _fused_conv2d(F, table, op, *a)
    return table


class TorchEager:
    """`graph` as a sequence of torch calls on `device`, weights copied there once.

    `weights` (constant name -> tensor on the device) stand for those constants instead of
    copies of their data: trainable parameters, or float32 copies of half-precision weights."""

    def __init__(self, graph: Graph, device: str = "cpu", *,
                 weights: Mapping[str, object] | None = None):
        import torch
        import torch.nn.functional as F
        self.torch, self.graph, self.device = torch, graph, torch.device(device)
        self.table = _table(torch, F)
        for node in graph.nodes:
            if node.op_name not in self.table:
                raise UnsupportedOpError("no torch eager form", node=node.name, op=node.op_name)
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(graph.constants))
        if unknown:
            raise GraphoptError(f"weights for {unknown}, which are not constants of graph "
                                f"'{graph.name}'")
        self.order = graph.topological_order()
        self.weights = {id(c): weights[c.name] if c.name in weights else
                        torch.from_numpy(np.ascontiguousarray(c.data)).to(self.device)
                        for c in graph.constants.values()}

    def forward(self, inputs: Mapping[str, object]) -> list:
        """One forward on torch tensors already on the device, recording autograd as the
        caller's mode says; returns the output tensors."""
        env = dict(self.weights)
        env.update({id(v): inputs[v.name] for v in self.graph.inputs})
        for node in self.order:
            env[id(node.outputs[0])] = self.table[node.op_name](
                node.op, *(env[id(v)] for v in node.inputs))
        return [env[id(v)] for v in self.graph.outputs]

    def run_tensors(self, inputs: Mapping[str, object]) -> list:
        """One inference forward on torch tensors already on the device; returns the output
        tensors."""
        with self.torch.inference_mode():
            return self.forward(inputs)

    def to_device(self, inputs: Mapping[str, np.ndarray]) -> dict:
        return {k: self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
                for k, a in inputs.items()}

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.run_tensors(self.to_device(inputs))
        return {v.name: t.cpu().numpy() for v, t in zip(self.graph.outputs, results)}
