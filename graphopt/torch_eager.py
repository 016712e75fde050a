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
from .ops.recurrent import NumpyMath


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
    if padding is None and kind == "max":   # padded with the lowest value: never the maximum
        top, left, bottom, right = op.padding
        import torch
        lowest = float("-inf") if x.is_floating_point() else torch.iinfo(x.dtype).min
        x, padding = F.pad(x, (left, right, top, bottom), value=lowest), 0
    if padding is None:
        raise UnsupportedOpError("asymmetric average pooling padding has no torch form")
    if kind == "max":
        return F.max_pool2d(x, op.kernel, op.stride, padding, op.dilation, op.ceil_mode)
    if tuple(op.dilation) != (1, 1):
        raise UnsupportedOpError("dilated average pooling has no torch form")
    return F.avg_pool2d(x, op.kernel, op.stride, padding, op.ceil_mode, op.count_include_pad)


def _pad(torch, F, op, x):
    """ONNX Pad. Constant padding is F.pad's on any axes; F.pad's reflect / replicate /
    circular modes pad only the last few axes of a batch and circular at most one period, so
    the other modes gather each padded axis's source indices (numpy's definitions)."""
    if op.mode == "constant":
        flat = [p for before, after in reversed(op.pads) for p in (before, after)]
        return F.pad(x, flat, value=op.value)
    for axis, (before, after) in enumerate(op.pads):
        if before == after == 0:
            continue
        size = x.shape[axis]
        k = torch.arange(-before, size + after, device=x.device)
        if op.mode == "edge":
            index = k.clamp(0, size - 1)
        elif op.mode == "wrap":
            index = k.remainder(size)
        else:   # reflect: mirrored about the edges without repeating them (period 2 * size - 2)
            period = max(2 * size - 2, 1)
            k = k.remainder(period)
            index = torch.where(k < size, k, period - k)
        x = x.index_select(axis, index)
    return x


def _max_pool_indices(torch, F, op, x):
    """ONNX MaxPool's Indices: torch's return_indices (within each plane) made flat indices
    into the whole input, row-major or (storage_order 1) with H and W swapped."""
    padding = _symmetric(op.padding)
    if padding is None:
        raise UnsupportedOpError("asymmetric padding has no torch max_pool2d(return_indices) form")
    _, where = F.max_pool2d(x, op.kernel, op.stride, padding, op.dilation, op.ceil_mode,
                            return_indices=True)
    n, c, h, w = x.shape
    plane = torch.arange(n * c, device=x.device).reshape(n, c, 1, 1)
    if op.storage_order == 0:
        return plane * (h * w) + where
    return (plane * w + where % w) * h + where // w


def _max_unpool(op, x, indices):
    """ONNX MaxUnpool: zeros, each value written at its flat index into the whole output."""
    n, c = x.shape[:2]
    out_h, out_w = op.out_hw(*x.shape[2:])
    out = x.new_zeros(n * c * out_h * out_w)
    return out.index_put((indices.reshape(-1),), x.reshape(-1)).reshape(n, c, out_h, out_w)


def _source_coordinates(torch, out_size: int, in_size: int, mode: str, device):
    """Where each output pixel samples the input (ONNX Resize's coordinate_transformation_mode)."""
    x = torch.arange(out_size, dtype=torch.float64, device=device)
    if mode == "align_corners":
        return x * (in_size - 1) / (out_size - 1) if out_size > 1 else x * 0
    if mode == "asymmetric":
        return x * in_size / out_size
    if mode == "pytorch_half_pixel" and out_size == 1:
        return x * 0
    return (x + 0.5) * in_size / out_size - 0.5


def _resize(torch, F, op, x):
    """ONNX Resize of H and W: F.interpolate where its sampling is ONNX's (bilinear with
    half_pixel or align_corners, nearest with asymmetric floor), else the source rows and
    columns computed by ONNX's formulas and gathered (nearest) or blended (bilinear)."""
    (out_h, out_w), (in_h, in_w) = op.size, x.shape[2:]
    mode = op.coordinate_transformation_mode
    if op.mode == "bilinear" and mode in ("half_pixel", "align_corners"):
        return F.interpolate(x, size=op.size, mode="bilinear",
                             align_corners=mode == "align_corners")
    if op.mode == "nearest" and mode == "asymmetric" and op.nearest_mode == "floor":
        return F.interpolate(x, size=op.size, mode="nearest")
    rows = _source_coordinates(torch, out_h, in_h, mode, x.device)
    cols = _source_coordinates(torch, out_w, in_w, mode, x.device)
    if op.mode == "nearest":
        rounding = {"floor": torch.floor, "ceil": torch.ceil,
                    "round_prefer_ceil": lambda c: torch.floor(c + 0.5),
                    "round_prefer_floor": lambda c: torch.ceil(c - 0.5)}[op.nearest_mode]
        row_index = rounding(rows).clamp(0, in_h - 1).long()
        col_index = rounding(cols).clamp(0, in_w - 1).long()
        return x.index_select(2, row_index).index_select(3, col_index)

    def neighbours(coordinates, size):
        coordinates = coordinates.clamp(0, size - 1)
        low = coordinates.floor().long()
        return low, (low + 1).clamp(max=size - 1), (coordinates - low).to(x.dtype)
    top, bottom, fy = neighbours(rows, in_h)
    left, right, fx = neighbours(cols, in_w)
    blended = x.index_select(2, top) * (1 - fy)[:, None] + x.index_select(2, bottom) * fy[:, None]
    return blended.index_select(3, left) * (1 - fx) + blended.index_select(3, right) * fx


def _slice(torch, op, x):
    """ONNX Slice (static bounds, any step sign): each sliced axis's indices, gathered."""
    from .ir import TensorType
    for axis, (start, step, count) in enumerate(op.ranges(TensorType(tuple(x.shape), "float32"))):
        if (start, step, count) != (0, 1, x.shape[axis]):
            index = torch.arange(count, device=x.device) * step + start
            x = x.index_select(axis, index)
    return x


def _gather(torch, op, data, indices):
    """ONNX Gather (numpy's take; negative indices count from the end)."""
    axis = op.axis % data.ndim
    size = data.shape[axis]
    index = indices.long()
    index = torch.where(index < 0, index + size, index)
    picked = data.index_select(axis, index.reshape(-1))
    return picked.reshape(data.shape[:axis] + indices.shape + data.shape[axis + 1:])


def _arg_reduce(torch, op, x):
    """ONNX ArgMax / ArgMin: the first index of the extreme (the last with
    select_last_index, found as the first one in the flipped axis)."""
    pick = torch.argmax if op.largest else torch.argmin
    axis = op.axis % x.ndim
    if op.select_last_index:
        index = x.shape[axis] - 1 - pick(x.flip(axis), axis, keepdim=op.keepdims)
    else:
        index = pick(x, axis, keepdim=op.keepdims)
    return index.long()


class _TorchMath(NumpyMath):
    """The recurrent cells' arithmetic (graphopt.ops.recurrent's backend protocol) in torch:
    the same steps as the interpreter's NumpyMath, on the device, differentiable. The
    operators torch spells as numpy does (+, @, slicing) are NumpyMath's."""

    def __init__(self, torch, like):
        self.torch, self.torch_dtype, self.device = torch, like.dtype, like.device
        self.dtype = str(like.dtype).removeprefix("torch.")   # numpy's name, as NumpyMath's

    def constant(self, array):
        array = np.asarray(array)
        dtype = self.torch.bool if array.dtype == bool else self.torch_dtype
        return self.torch.as_tensor(np.ascontiguousarray(array)).to(self.device, dtype)

    def full(self, value, like): return float(value)
    def scale(self, x, factor): return x * factor
    def abs(self, x): return x.abs()
    def exp(self, x): return x.exp()
    def log(self, x): return x.log()
    def minimum(self, x, bound): return x.clamp(max=bound)
    def relu(self, x): return x.clamp(min=0)
    def at_least(self, x, bound): return x >= bound
    def greater(self, x, bound): return x > bound
    def where(self, condition, a, b): return self.torch.where(condition, a, b)
    def clip(self, x, bound): return x.clamp(-bound, bound)
    def stack(self, xs, axis): return self.torch.stack(xs, axis)
    def transpose(self, x, perm): return x.permute(perm)
    def sigmoid(self, x): return self.torch.sigmoid(x)
    def tanh(self, x): return self.torch.tanh(x)
    def hard_sigmoid(self, x, alpha, beta): return (x * alpha + beta).clamp(0, 1)


def _recurrent(torch, op, *tensors):
    """ONNX LSTM / GRU: the op's own step sequence (`Recurrent.compute`) on torch tensors."""
    x, w, r, b, initial, extra = op.split_inputs(tensors)
    m = _TorchMath(torch, x)
    if op.layout == 1:
        x = x.permute(1, 0, 2)
    steps, batch, hidden = x.shape[0], x.shape[1], r.shape[2]
    initial = [x.new_zeros((op.num_directions, batch, hidden)) if s is None else
               (s.permute(1, 0, 2) if op.layout == 1 else s) for s in initial]
    return tuple(op.to_layout(m, op.compute(m, x, w, r, b, initial, extra,
                                            (steps, batch, hidden))))


def _table(torch, F):
    """op name -> f(op, *input tensors) -> tensor, or a tuple for ops with several outputs."""
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
        "exp": lambda op, x: torch.exp(x),
        "instance_norm": lambda op, x, scale, bias: F.instance_norm(
            x, weight=scale, bias=bias, eps=op.epsilon),
        "pad": lambda op, x: _pad(torch, F, op, x),
        "resize": lambda op, x: _resize(torch, F, op, x),
        "slice": lambda op, x: _slice(torch, op, x),
        "gather": lambda op, data, indices: _gather(torch, op, data, indices),
        "expand": lambda op, x: torch.broadcast_to(
            x, torch.broadcast_shapes(x.shape, tuple(op.shape))),
        "argmax": lambda op, x: _arg_reduce(torch, op, x),
        "argmin": lambda op, x: _arg_reduce(torch, op, x),
        "max_pool2d_indices": lambda op, x: _max_pool_indices(torch, F, op, x),
        "max_unpool2d": lambda op, x, indices: _max_unpool(op, x, indices),
        "lstm": lambda op, *a: _recurrent(torch, op, *a),
        "gru": lambda op, *a: _recurrent(torch, op, *a),
    }
    table["fused_conv2d"] = lambda op, *a: _fused_conv2d(F, table, op, *a)
    return table


def _contiguous(array: np.ndarray) -> np.ndarray:
    """`array` C-contiguous, its shape kept (np.ascontiguousarray makes a 0-d array 1-d)."""
    return np.ascontiguousarray(array).reshape(np.shape(array))


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
                        torch.from_numpy(_contiguous(c.data)).to(self.device)
                        for c in graph.constants.values()}

    def forward(self, inputs: Mapping[str, object]) -> list:
        """One forward on torch tensors already on the device, recording autograd as the
        caller's mode says; returns the output tensors."""
        env = dict(self.weights)
        env.update({id(v): inputs[v.name] for v in self.graph.inputs})
        for node in self.order:
            result = self.table[node.op_name](node.op, *(env[id(v)] for v in node.inputs))
            for value, tensor in zip(node.outputs, result if isinstance(result, tuple)
                                     else (result,)):
                env[id(value)] = tensor
        return [env[id(v)] for v in self.graph.outputs]

    def run_tensors(self, inputs: Mapping[str, object]) -> list:
        """One inference forward on torch tensors already on the device; returns the output
        tensors."""
        with self.torch.inference_mode():
            return self.forward(inputs)

    def to_device(self, inputs: Mapping[str, np.ndarray]) -> dict:
        return {k: self.torch.from_numpy(_contiguous(a)).to(self.device)
                for k, a in inputs.items()}

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.run_tensors(self.to_device(inputs))
        return {v.name: t.cpu().numpy() for v, t in zip(self.graph.outputs, results)}
