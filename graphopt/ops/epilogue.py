"""The fused-conv epilogue vocabulary, defined once: the activations a `fused_conv2d` may end
with, and what the fusion pass, the ONNX exporter, the TVM lowering and the oneDNN route each
need to know about them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .activation import Clip, LeakyRelu, Relu, clamp
from .base import Op


@dataclass(frozen=True)
class EpilogueActivation:
    """An activation a fused convolution may end with, and what every consumer of the fused
    op needs to know about it: its op class, its ONNX op type, its code and (alpha, beta)
    arguments in oneDNN's post-op (`onednn/conv2d.cc`'s `Activation`), and its TE form."""

    op: type[Op]
    onnx: str
    onednn: int
    onednn_args: Callable[[Op], tuple[float, float]]
    te: Callable  # (op, te.Tensor) -> te.Tensor


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


EPILOGUE = {
    "relu": EpilogueActivation(Relu, "Relu", 1, lambda op: (0.0, 0.0), _te_relu),
    "leaky_relu": EpilogueActivation(LeakyRelu, "LeakyRelu", 2, lambda op: (op.alpha, 0.0),
                                     _te_leaky_relu),
    "clip": EpilogueActivation(Clip, "Clip", 3, lambda op: _clip_bounds(op, "float32"), _te_clip),
}
EPILOGUE_ACTIVATIONS = tuple(e.op for e in EPILOGUE.values())
# The activations a quantized convolution's requantize epilogue applies (`qlinear_conv2d`): clamps
# of the real value, exact on the rounded integers; leaky_relu is not one.
QUANTIZED_EPILOGUE = ("relu", "clip")
# conv2d.cc's code for "no activation".
ONEDNN_NO_ACTIVATION = 0
