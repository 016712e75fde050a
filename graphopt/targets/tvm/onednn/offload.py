"""A Relax rewrite sending float32 convolutions with a constant weight to oneDNN.

Runs after batch norms are folded and before legalization. Each rule turns a Relax call into a
`call_dps_packed` of `conv2d.cc`'s functions and the next rules fold the epilogue into it, in
the order FusedConv2d lowers to (see graphopt/ops/fused.py):
    conv2d(x, W)                   -> onednn(x, W, bias=0)
    add(onednn(...), B[1,C,1,1])   -> onednn(..., bias + B)        (bias adds: folded in numpy)
    add(onednn(...), r) / add(r, onednn(...))  -> onednn_residual(..., r)
    relu / leakyrelu / clip(onednn(...))       -> onednn(..., activation)
A call is folded into its consumer only when the consumer is its one use; the unfolded call
left behind is dead and removed. Everything else stays on TVM.

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
ACTIVATIONS = {None: 0, "relu": 1, "leaky_relu": 2, "clip": 3}   # conv2d.cc's Activation
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
    activation: str | None = None
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
        args += [relax.ShapeExpr([*self.attrs, ACTIVATIONS[self.activation], *layouts]),
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
                   {v: k for k, v in ACTIVATIONS.items()}[activation], alpha, beta,
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


def offload_convolutions(report: list | None = None):
    """The rewrite as a module pass (then dead-code elimination); appends a line per offloaded
    convolution to `report`."""
    import tvm
    from tvm import relax
    from ..constant_folding import bound_constant, relax_rewrite_pass

    def op_name(call):
        return call.op.name if isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) \
            else None

    def float32(expr) -> bool:
        ty = expr.ty
        return isinstance(ty, relax.TensorType) and str(ty.dtype) == "float32" and \
            ty.shape is not None and all(isinstance(d, tvm.tirx.IntImm) for d in ty.shape)

    def shape(expr) -> tuple[int, ...]:
        return tuple(int(d) for d in expr.ty.shape)

    @relax.expr_functor.mutator
    class Offload(relax.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.uses = Counter()

        def visit_function_(self, func):
            self.uses = use_counts(func)
            return super().visit_function_(func)

        def producer(self, expr) -> OneDnnConv | None:
            """The oneDNN call bound to `expr`, if the caller is its only use."""
            if not isinstance(expr, relax.Var) or self.uses[expr] != 1:
                return None
            return OneDnnConv.from_relax(self.lookup_binding(expr))

        def visit_call_(self, call):
            call = super().visit_call_(call)
            name = op_name(call)
            if name == "relax.nn.conv2d":
                return self.conv2d(call)
            if name == "relax.add":
                return self.add(call)
            if name in ("relax.nn.relu", "relax.nn.leakyrelu", "relax.clip"):
                return self.activation(call, name)
            return call

        def conv2d(self, call):
            x, w = call.args
            a = call.attrs
            weight = bound_constant(self, w)
            plain = (str(a.data_layout), str(a.kernel_layout), str(a.out_layout)) == \
                ("NCHW", "OIHW", "NCHW") and str(a.out_dtype) in ("None", "", "void", "float32")
            if weight is None or not plain or not (float32(x) and float32(call)):
                return call
            attrs = tuple(int(v) for v in (*a.strides, *a.padding, *a.dilation)) + (int(a.groups),)
            out = shape(call)
            if report is not None:
                report.append(f"conv2d {shape(x)} x {shape(weight)} -> {out}")
            return OneDnnConv(x, w, np.zeros(out[1], np.float32), attrs, out).to_relax()

        def add(self, call):
            lhs, rhs = call.args
            for produced, other in ((lhs, rhs), (rhs, lhs)):
                conv = self.producer(produced)
                if conv is None or conv.residual is not None or conv.activation is not None \
                        or shape(produced) != shape(call):
                    continue
                bias = bound_constant(self, other)
                if bias is not None and float32(bias) and shape(bias) == (1, shape(call)[1], 1, 1):
                    return replace(conv, bias=conv.bias + bias.value.numpy().reshape(-1)).to_relax()
                if float32(other) and shape(other) == shape(call):
                    return replace(conv, residual=other).to_relax()
            return call

        def activation(self, call, name):
            conv = self.producer(call.args[0])
            if conv is None or conv.activation is not None:
                return call
            if name == "relax.nn.relu":
                conv = replace(conv, activation="relu")
            elif name == "relax.nn.leakyrelu":
                conv = replace(conv, activation="leaky_relu", alpha=float(call.attrs.alpha))
            else:
                bounds = [v.value for v in call.args[1:]
                          if isinstance(v, (tvm.tirx.FloatImm, tvm.tirx.IntImm))]
                if len(bounds) != 2:
                    return call
                conv = replace(conv, activation="clip", alpha=float(bounds[0]),
                               beta=float(bounds[1]))
            return conv.to_relax()

    return relax_rewrite_pass(Offload, "graphopt.OffloadConvolutionsToOneDnn",
                              then=tvm.transform.Sequential([relax.transform.DeadCodeElimination(),
                                                             keep_nhwc()]))


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
    from ..constant_folding import relax_rewrite_pass

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
