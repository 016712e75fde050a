"""Ops made by fusion passes. Each reuses the definitions of the ops it stands for, so that its
reference kernel computes exactly what the unfused chain computes, in the same order."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .activation import Clip, LeakyRelu, Relu
from .base import Op, expect, register
from .conv import Conv2d


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
    from tvm import topi
    return topi.nn.relu(y)


def _te_leaky_relu(op, y):
    from tvm import topi
    return topi.nn.leaky_relu(y, op.alpha)


def _te_clip(op, y):
    from tvm import topi
    return topi.clip(y, *_clip_bounds(op, str(y.dtype)))


# The one definition of the fused-conv epilogue vocabulary: the fusion pass, the ONNX exporter,
# the TVM lowering and the oneDNN route all read this table.
EPILOGUE = {
    "relu": EpilogueActivation(Relu, "Relu", 1, lambda op: (0.0, 0.0), _te_relu),
    "leaky_relu": EpilogueActivation(LeakyRelu, "LeakyRelu", 2, lambda op: (op.alpha, 0.0),
                                     _te_leaky_relu),
    "clip": EpilogueActivation(Clip, "Clip", 3, lambda op: _clip_bounds(op, "float32"), _te_clip),
}
EPILOGUE_ACTIVATIONS = tuple(e.op for e in EPILOGUE.values())
# conv2d.cc's code for "no activation".
ONEDNN_NO_ACTIVATION = 0


@register
@dataclass(frozen=True)
class FusedConv2d(Op):
    """activation(conv2d(x, w, b) + residual): a convolution with its epilogue in one op.

    Inputs: x, w, then b if `has_bias`, then residual if `has_residual` (same type as the output).
    `conv` holds the convolution's attributes; `activation` is a Relu, Clip (relu6 = Clip(0, 6))
    or LeakyRelu op, or None.

    Lowers to ONE kernel (`lower_conv`) computed by `conv.algorithm`; exports to ONNX as
    Conv (with B when has_bias), then Add(residual), then the activation (`EPILOGUE`).
    """

    name = "fused_conv2d"
    arity = (2, 4)
    conv: Conv2d = Conv2d()
    activation: Relu | Clip | LeakyRelu | None = None
    has_bias: bool = True
    has_residual: bool = False

    def __post_init__(self):
        expect(isinstance(self.conv, Conv2d), f"expected a Conv2d for conv, found {self.conv!r}")
        expect(self.activation is None or isinstance(self.activation, EPILOGUE_ACTIVATIONS),
               f"expected activation {', '.join(EPILOGUE)} or None, found {self.activation!r}")

    def split(self, inputs):
        """(x, w, bias or None, residual or None) from the input list."""
        count = 2 + self.has_bias + self.has_residual
        expect(len(inputs) == count, f"expected {count} inputs (x, w"
               f"{', b' if self.has_bias else ''}{', residual' if self.has_residual else ''}), "
               f"found {len(inputs)}")
        bias = inputs[2] if self.has_bias else None
        residual = inputs[-1] if self.has_residual else None
        return inputs[0], inputs[1], bias, residual

    def infer(self, *inputs):
        x, w, b, residual = self.split(inputs)
        out = self.conv.infer(x, w, b)
        if residual is not None:
            expect(residual == out, f"expected a residual of the output's type {out}, "
                   f"found {residual}")
        if self.activation is not None:
            out = self.activation.infer(out)
        return out

    def reference(self, *arrays):
        x, w, b, residual = self.split(arrays)
        y = self.conv.reference(x, w, b)
        if residual is not None:
            y = y + residual
        return self.activation.reference(y) if self.activation is not None else y

    def lower_tvm(self, bb, *args):
        x, w, b, residual = self.split(args)
        return lower_conv(bb, self.conv, x, w, b, residual, self.activation)

    def macs(self, inputs, outputs):
        return self.conv.macs(inputs, outputs)

    def target_choice(self) -> str:
        return self.conv.target_choice()

    def __str__(self) -> str:
        parts = [str(self.conv)]
        if self.has_residual:
            parts.append("add")
        if self.activation is not None:
            parts.append(str(self.activation))
        return f"{self.name}[{' + '.join(parts)}]"


# ---- lowering: a convolution and its epilogue as one TVM kernel --------------------------------
# TVM's operator-pattern code for a kernel FuseOps must leave alone (kOpaque): graphopt's fusion
# pass decided what this kernel computes, and TVM does not re-fuse around it.
OPAQUE = 8


def lower_conv(bb, conv: Conv2d, x, w, b=None, residual=None, activation=None):
    """Relax: `activation(conv(x, w) + b + residual)` as one kernel, computed the way
    `conv.algorithm` says (see ops/conv.py's CONV_ALGORITHMS)."""
    if conv.algorithm == "onednn":
        from ..targets.tvm.onednn.lowering import onednn_conv2d
        return onednn_conv2d(conv, x, w, b, residual, activation)
    from tvm import relax, te, topi
    if conv.algorithm == "winograd":
        from ..targets.tvm.schedules.winograd import transform_weight, winograd_conv2d
        u = transform_weight(constant_array(w, conv), conv.weight_block)
        weight, compute = relax.const(u, str(u.dtype)), winograd_conv2d
        name = "conv2d_winograd"
    else:
        weight, name = w, "conv2d"
        compute = lambda x, w: topi.nn.conv(x, w, conv.stride, conv.padding, conv.dilation,
                                            conv.groups, "NCHW", "OIHW")
    extras = [e for e in (b, residual) if e is not None]

    def kernel(x, w, *rest):
        y = compute(x, w)
        rest = list(rest)
        if b is not None:
            bias, conv_out = rest.pop(0), y
            y = te.compute(y.shape, lambda n, c, h, w_: conv_out[n, c, h, w_] + bias[c],
                           name="bias_add")
        if residual is not None:
            y = topi.add(y, rest.pop(0))
        return EPILOGUE[activation.name].te(activation, y) if activation is not None else y

    fused = b is not None or residual is not None or activation is not None
    return bb.call_te(kernel, x, weight, *extras,
                      primfunc_name_hint=("fused_" if fused else "") + name,
                      primfunc_attrs={"op_pattern": OPAQUE})


def constant_array(expr, conv: Conv2d):
    """The numpy value of a Relax constant weight (target algorithms repack it at lowering)."""
    import tvm
    from .base import expect
    expect(isinstance(expr, tvm.ir.Constant), f"{conv.algorithm} convolution needs a constant "
           f"weight, found a computed one")
    return expr.value.numpy()
