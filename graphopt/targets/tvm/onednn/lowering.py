"""Lowering of convolutions whose algorithm is "onednn" (chosen by the CPU target pass
`select_conv_algorithm`): each becomes one `call_dps_packed` of `conv2d.cc`'s functions with its
bias, residual and activation (from the fused op's epilogue, `ops.epilogue.EPILOGUE`) as arguments.

Then `keep_nhwc` lets a call whose every use is a oneDNN call (as input or residual) produce
NHWC, the layout oneDNN's AVX2 kernels compute in, and its consumers read NHWC: a value a TVM
op or the caller sees stays NCHW (its producer reorders inside the call), so oneDNN reorders
only at the edges of each run of convolutions."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from . import FUNCTION_PREFIX

CONV2D = FUNCTION_PREFIX + "conv2d"
CONV2D_RESIDUAL = FUNCTION_PREFIX + "conv2d_residual"
LAYOUTS = {"NCHW": 0, "NHWC": 1}                                  # conv2d.cc's Layout


def in_layout(nchw: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """An NCHW shape as a tensor of `layout` holds it."""
    n, c, h, w = nchw
    return (n, h, w, c) if layout == "NHWC" else (n, c, h, w)


def to_nchw(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    n, *rest = shape
    return (n, rest[2], rest[0], rest[1]) if layout == "NHWC" else (n, *rest)


@dataclass(frozen=True)
class OneDnnConv:
    """The arguments of one `graphopt.onednn.conv2d*` call."""

    x: object
    weight: object
    bias: np.ndarray
    attrs: tuple[int, ...]        # stride(2), padding(4), dilation(2), groups
    out_shape: tuple[int, ...]    # NCHW, whatever out_layout is
    residual: object = None
    activation: int = 0           # conv2d.cc's Activation code (see ops.epilogue.EPILOGUE)
    alpha: float = 0.0
    beta: float = 0.0
    x_layout: str = "NCHW"        # how the tensors are stored: "NCHW" or "NHWC"
    residual_layout: str = "NCHW"
    out_layout: str = "NCHW"

    def to_relax(self):
        from tvm import relax
        args = [self.x, self.weight, relax.const(self.bias, "float32")]
        if self.residual is not None:
            args.append(self.residual)
        layouts = [LAYOUTS[v] for v in (self.x_layout, self.residual_layout, self.out_layout)]
        args += [relax.ShapeExpr([*self.attrs, self.activation, *layouts]),
                 relax.const(np.array([self.alpha, self.beta], np.float32))]
        name = CONV2D if self.residual is None else CONV2D_RESIDUAL
        out_type = relax.TensorType(in_layout(self.out_shape, self.out_layout), "float32")
        return relax.call_dps_packed(name, relax.Tuple(args), out_ty=out_type)

    @classmethod
    def from_relax(cls, call) -> "OneDnnConv | None":
        """The arguments of a call built by `to_relax`, or None for any other expression."""
        from tvm import relax
        if not (isinstance(call, relax.Call) and call.args
                and isinstance(call.args[0], relax.ExternFunc)
                and call.args[0].global_symbol in (CONV2D, CONV2D_RESIDUAL)):
            return None
        fields = list(call.args[1].fields)
        residual = fields.pop(3) if call.args[0].global_symbol == CONV2D_RESIDUAL else None
        x, weight, bias, attrs, activation_args = fields
        *attrs, activation, x_layout, residual_layout, out_layout = (int(v) for v in attrs.values)
        alpha, beta = (float(v) for v in activation_args.value.numpy())
        layout = {v: k for k, v in LAYOUTS.items()}
        out_shape = to_nchw(tuple(int(d) for d in call.ty_args[0].shape), layout[out_layout])
        return cls(x, weight, bias.value.numpy(), tuple(attrs), out_shape, residual,
                   activation, alpha, beta,
                   layout[x_layout], layout[residual_layout], layout[out_layout])


def use_counts(func) -> Counter:
    """How many times each variable is used in a Relax function."""
    from tvm import relax

    @relax.expr_functor.visitor
    class CountUses(relax.PyExprVisitor):
        def __init__(self):
            super().__init__()
            self.uses = Counter()

        def visit_var_(self, var):
            self.uses[var] += 1

        def visit_dataflow_var_(self, var):
            self.uses[var] += 1

    counter = CountUses()
    counter.visit_expr(func)
    return counter.uses


def onednn_conv2d(conv, x, w, bias=None, residual=None, activation: int = 0,
                  alpha: float = 0.0, beta: float = 0.0):
    """Relax: a oneDNN call computing `activation(conv(x, w) + bias + residual)` (all NCHW
    here; `keep_nhwc` may change the layouts between consecutive calls). `bias`: a numpy array
    or None; `activation`, `alpha`, `beta`: conv2d.cc's code and arguments
    (`ops.epilogue.EPILOGUE`)."""
    from ....ops.base import relax_type
    x_type, w_type = relax_type(x), relax_type(w)
    bias_value = (np.asarray(bias, np.float32) if bias is not None
                  else np.zeros(w_type.shape[0], np.float32))
    attrs = (*conv.stride, *conv.padding, *conv.dilation, conv.groups)
    out_shape = conv.infer(x_type, w_type).shape
    return OneDnnConv(x, w, bias_value, attrs, out_shape, residual, activation, alpha,
                      beta).to_relax()


def plan_layouts(func) -> dict:
    """{oneDNN call: (x_layout, residual_layout, out_layout)} for the calls of `func` that read or
    write NHWC: a call's output is NHWC when every use of it is a oneDNN call's input or
    residual (a graph output, a TVM op or an unfused add keeps it NCHW)."""
    uses = use_counts(func)
    convs = {binding.var: (binding.value, conv) for block in func.body.blocks
             for binding in block.bindings
             if (conv := OneDnnConv.from_relax(binding.value)) is not None}
    operand_uses = Counter(operand for _, conv in convs.values()
                           for operand in (conv.x, conv.residual) if operand is not None)
    nhwc = {var for var in convs if operand_uses[var] == uses[var]}
    layout = lambda expr: "NHWC" if expr in nhwc else "NCHW"
    plan = {call: (layout(conv.x), layout(conv.residual), layout(var))
            for var, (call, conv) in convs.items()}
    return {call: layouts for call, layouts in plan.items() if "NHWC" in layouts}


def keep_nhwc():
    """oneDNN calls pass NHWC to each other (see `plan_layouts`): oneDNN's AVX2 convolutions
    compute in NHWC, so a run of convolutions reorders only where it starts and ends."""
    from tvm import relax

    @relax.expr_functor.mutator
    class KeepNhwc(relax.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.plan = {}

        def visit_function_(self, func):
            self.plan = plan_layouts(func)
            return super().visit_function_(func)

        def visit_call_(self, call):
            layouts = self.plan.get(call)
            call = super().visit_call_(call)
            if layouts is None:
                return call
            x_layout, residual_layout, out_layout = layouts
            return replace(OneDnnConv.from_relax(call), x_layout=x_layout,
                           residual_layout=residual_layout, out_layout=out_layout).to_relax()

    return relax_rewrite_pass(KeepNhwc, "graphopt.KeepNhwcBetweenOneDnnCalls")


def relax_rewrite_pass(mutator_class, name: str):
    """A module pass running a `PyExprMutator` class over every Relax function."""
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod, _ctx):
        mutator = mutator_class(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mutator.builder_.update_func(gv, mutator.visit_expr(func))
        return mutator.builder_.get()

    return _pass
