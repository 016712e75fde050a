"""Ops made by fusion passes. Each reuses the definitions of the ops it stands for, so that its
reference kernel computes exactly what the unfused chain computes, in the same order (in half
precision it stays in float32 until its result, which it rounds once, as the fused kernel does)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Op, accumulator, expect, flag, register
from .activation import Clip, HardSigmoid, HardSwish, LeakyRelu, Relu, Sigmoid
from .conv import Conv2d
from .conv_kernel import lower_conv
from .epilogue import EPILOGUE, EPILOGUE_ACTIVATIONS, Silu


@register
@dataclass(frozen=True)
class FusedConv2d(Op):
    """activation(conv2d(x, w, b) + residual): a convolution with its epilogue in one op.

    Inputs: x, w, then b if `has_bias`, then residual if `has_residual` (same type as the output).
    `conv` holds the convolution's attributes; `activation` is a Relu, Clip (relu6 = Clip(0, 6)),
    LeakyRelu, Sigmoid, HardSigmoid, HardSwish or Silu (x * sigmoid(x)) op, or None
    (`ops.epilogue.EPILOGUE`).

    Lowers to ONE kernel (`lower_conv`) computed by `conv.algorithm`; exports to ONNX as
    Conv (with B when has_bias), then Add(residual), then the activation (`EPILOGUE`).
    `optional_residual` is a target decision (`share_residual_kernels`): the kernel takes a
    residual operand and a run-time switch for it, with or without a residual (then x stands in
    for it, unread), so that convs differing only in their residual share one kernel.
    """

    name = "fused_conv2d"
    arity = (2, 4)
    conv: Conv2d = Conv2d()
    activation: Relu | Clip | LeakyRelu | Sigmoid | HardSigmoid | HardSwish | Silu | None = None
    has_bias: bool = True
    has_residual: bool = False
    optional_residual: bool = False

    def __post_init__(self):
        expect(isinstance(self.conv, Conv2d), f"expected a Conv2d for conv, found {self.conv!r}")
        expect(self.activation is None or isinstance(self.activation, EPILOGUE_ACTIVATIONS),
               f"expected activation {', '.join(EPILOGUE)} or None, found {self.activation!r}")
        for field in ("has_bias", "has_residual", "optional_residual"):
            object.__setattr__(self, field, flag(getattr(self, field), field))
        expect(not (self.optional_residual and self.conv.algorithm == "onednn"),
               "expected no optional residual with the onednn algorithm (a decision for "
               "graphopt's own conv kernels)")

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
        elif self.optional_residual:
            expect(x == out, f"expected an input of the output's type {out} to stand in for "
                   f"the optional residual, found {x}")
        if self.activation is not None:
            out = self.activation.infer(out)
        return out

    def reference(self, *arrays):
        acc = accumulator(arrays[0].dtype)
        x, w, b, residual = self.split([a.astype(acc, copy=False) for a in arrays])
        y = self.conv.reference(x, w, b)
        if residual is not None:
            y = y + residual
        y = self.activation.reference(y) if self.activation is not None else y
        return y.astype(arrays[0].dtype, copy=False)

    def lower_tvm(self, bb, *args):
        x, w, b, residual = self.split(args)
        return lower_conv(bb, self.conv, x, w, b, residual, self.activation,
                          optional_residual=self.optional_residual)

    def macs(self, inputs, outputs):
        return self.conv.macs(inputs, outputs)

    def target_choice(self) -> str:
        shared = ", residual switched at run time" if self.optional_residual else ""
        return self.conv.target_choice() + shared

    def __str__(self) -> str:
        parts = [str(self.conv)]
        if self.has_residual:
            parts.append("add")
        if self.activation is not None:
            parts.append(str(self.activation))
        return f"{self.name}[{' + '.join(parts)}]"
