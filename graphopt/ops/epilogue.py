"""The fused-conv epilogue vocabulary, defined once: the activations a `fused_conv2d` may end
with, and what the fusion pass, the ONNX exporter, the TVM lowering and the oneDNN route each
need to know about them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .activation import (HARD_SWISH_ALPHA, HARD_SWISH_BETA, Clip, HardSigmoid, HardSwish,
                         LeakyRelu, Relu, Sigmoid, Tanh, Unary, clamp, te_hard_sigmoid,
                         te_sigmoid, te_tanh)
from .base import Op


@dataclass(frozen=True)
class Silu(Unary):
    """x * sigmoid(x) (SiLU, Swish-1) as a fused convolution's activation: the pass fuses the
    sigmoid and mul nodes reading one conv output (the DSL's `silu`, ONNX Swish's import).
    Not a graph op of its own (the graph keeps the two nodes); its reference is theirs."""

    name = "silu"

    def reference(self, x):
        return x * Sigmoid().reference(x)


@dataclass(frozen=True)
class EpilogueActivation:
    """An activation a fused convolution may end with, and what every consumer of the fused
    op needs to know about it: its op class, its ONNX form (an op type and the opset it needs;
    `gated`: exported as Mul(y, op_type(y)), as SiLU is), its code and (alpha, beta) arguments
    in oneDNN's post-op (`onednn/conv2d.cc`'s `Activation`; None: oneDNN does not fuse it),
    and its TE form."""

    op: type[Op]
    onnx: str
    onednn: int | None
    onednn_args: Callable[[Op], tuple[float, float]]
    te: Callable  # (op, te.Tensor) -> te.Tensor
    onnx_opset: int = 13
    gated: bool = False


def _clip_bounds(op, dtype: str) -> tuple[float, float]:
    import numpy as np
    info = np.finfo(dtype) if dtype.startswith("float") else np.iinfo(dtype)
    return (float(info.min) if op.min is None else op.min,
            float(info.max) if op.max is None else op.max)


def _te_relu(op, y):
    return clamp(y, 0, None)


def _te_leaky_relu(op, y):
    from tvm import topi
    return topi.nn.leaky_relu(y, op.alpha)


def _te_clip(op, y):
    return clamp(y, op.min, op.max)


def _te_sigmoid(op, y):
    return te_sigmoid(y)


def _te_silu(op, y):
    from tvm import te
    gate = te_sigmoid(y)
    return te.compute(y.shape, lambda *i: y(*i) * gate(*i), name="silu")


def _te_hard_sigmoid(op, y):
    from tvm import te
    return te.compute(y.shape, lambda *i: te_hard_sigmoid(y(*i), str(y.dtype), op.alpha,
                                                          op.beta), name="hard_sigmoid")


def _te_hard_swish(op, y):
    from tvm import te
    return te.compute(y.shape, lambda *i: y(*i) * te_hard_sigmoid(
        y(*i), str(y.dtype), HARD_SWISH_ALPHA, HARD_SWISH_BETA), name="hard_swish")


def _te_tanh(op, y):
    return te_tanh(y)


def _no_onednn(op):
    return (0.0, 0.0)


EPILOGUE = {
    "relu": EpilogueActivation(Relu, "Relu", 1, lambda op: (0.0, 0.0), _te_relu),
    "leaky_relu": EpilogueActivation(LeakyRelu, "LeakyRelu", 2, lambda op: (op.alpha, 0.0),
                                     _te_leaky_relu),
    "clip": EpilogueActivation(Clip, "Clip", 3, lambda op: _clip_bounds(op, "float32"),
                               _te_clip),
    "sigmoid": EpilogueActivation(Sigmoid, "Sigmoid", None, _no_onednn, _te_sigmoid),
    "tanh": EpilogueActivation(Tanh, "Tanh", 4, _no_onednn, _te_tanh),
    "hard_sigmoid": EpilogueActivation(HardSigmoid, "HardSigmoid", None, _no_onednn,
                                       _te_hard_sigmoid),
    "hard_swish": EpilogueActivation(HardSwish, "HardSwish", None, _no_onednn,
                                     _te_hard_swish, onnx_opset=14),
    "silu": EpilogueActivation(Silu, "Sigmoid", None, _no_onednn, _te_silu, gated=True),
}
EPILOGUE_ACTIVATIONS = tuple(e.op for e in EPILOGUE.values())
# The activations a quantized convolution's requantize epilogue applies (`qlinear_conv2d`): clamps
# of the real value, exact on the rounded integers; leaky_relu is not one.
QUANTIZED_EPILOGUE = ("relu", "clip")
# conv2d.cc's code for "no activation".
ONEDNN_NO_ACTIVATION = 0
