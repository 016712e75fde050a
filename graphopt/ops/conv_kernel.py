"""Lowering of a convolution and its epilogue (bias, residual add, activation) as ONE TVM kernel,
computed the way the node's `Conv2d.algorithm` says: used by `conv2d` and `fused_conv2d`."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import expect
from .epilogue import EPILOGUE, ONEDNN_NO_ACTIVATION

if TYPE_CHECKING:
    from .conv import Conv2d

# TVM's operator-pattern code for a kernel FuseOps must leave alone (kOpaque): graphopt's fusion
# pass decided what this kernel computes, and TVM does not re-fuse around it.
OPAQUE = 8


def lower_conv(bb, conv: "Conv2d", x, w, b=None, residual=None, activation=None):
    """Relax: `activation(conv(x, w) + b + residual)` as one kernel, computed the way
    `conv.algorithm` says (see ops/conv.py's CONV_ALGORITHMS)."""
    if conv.algorithm == "onednn":
        from ..targets.tvm.onednn.lowering import onednn_conv2d
        code, (alpha, beta) = ONEDNN_NO_ACTIVATION, (0.0, 0.0)
        if activation is not None:
            entry = EPILOGUE[activation.name]
            code, (alpha, beta) = entry.onednn, entry.onednn_args(activation)
        bias = constant_array(b, conv) if b is not None else None
        return onednn_conv2d(conv, x, w, bias, residual, code, alpha, beta)
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


def constant_array(expr, conv: "Conv2d"):
    """The numpy value of a Relax constant weight (target algorithms repack it at lowering)."""
    import tvm
    expect(isinstance(expr, tvm.ir.Constant), f"{conv.algorithm} convolution needs a constant "
           f"weight, found a computed one")
    return expr.value.numpy()
