"""Fold constant weight arithmetic with numpy before legalization.

Folding batch norms into convolutions and transposing linear weights leaves a few hundred small
constant expressions (scale = gamma / sqrt(var + eps), w * scale, ...). Relax's FoldConstant
compiles each distinct one with LLVM: 32 s of ResNet-18's 42 s pipeline. The same IEEE fp32
operations in numpy take milliseconds; FoldConstant then finds nothing left to build.

Also the small pieces every Relax rewrite of the CPU pipeline uses: `relax_rewrite_pass`,
`op_rewrite_pass` (one operator's calls) and `bound_constant`."""
from __future__ import annotations

import numpy as np

_ELEMENTWISE = {"relax.add": np.add, "relax.subtract": np.subtract,
                "relax.multiply": np.multiply, "relax.divide": np.divide, "relax.sqrt": np.sqrt}


def _evaluate(call, args):
    name = call.op.name
    if name in _ELEMENTWISE:
        return _ELEMENTWISE[name](*args)
    if name == "relax.reshape":
        return np.reshape(args[0], args[1])
    if name == "relax.permute_dims":
        axes = call.attrs.axes
        return np.transpose(args[0], None if axes is None else [int(a) for a in axes])
    return None


def fold_constants_numpy():
    """A pass replacing every call above whose arguments are all constants by its value."""
    import tvm
    from tvm import relax

    def as_numpy(mutator, arg):
        if isinstance(arg, relax.Var):
            arg = mutator.lookup_binding(arg)
        if isinstance(arg, relax.ShapeExpr):
            return tuple(int(v) for v in arg.values)
        if not isinstance(arg, tvm.ir.Constant):
            return None
        value = arg.value  # a tensor, or a scalar such as batch norm's epsilon
        if hasattr(value, "numpy"):
            return value.numpy()
        if isinstance(value, (tvm.tirx.FloatImm, tvm.tirx.IntImm)):
            return value.value
        return value if isinstance(value, (int, float)) else None

    @relax.expr_functor.mutator
    class NumpyFolder(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not isinstance(call.op, tvm.ir.Op) or not isinstance(call.ty, relax.TensorType):
                return call
            args = [as_numpy(self, a) for a in call.args]
            if any(a is None for a in args):
                return call
            value = _evaluate(call, args)
            if value is None:
                return call
            dtype = str(call.ty.dtype)  # explicit: relax.const narrows float64 to float32
            return relax.const(np.ascontiguousarray(value, dtype=dtype), dtype)

    return relax_rewrite_pass(NumpyFolder, "graphopt.FoldConstantsNumpy",
                              then=relax.transform.DeadCodeElimination())


def relax_rewrite_pass(mutator_class, name: str, then=None):
    """A module pass running a `PyExprMutator` class over every Relax function (and `then`, a
    follow-up pass, on the result)."""
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod, _ctx):
        mutator = mutator_class(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mutator.builder_.update_func(gv, mutator.visit_expr(func))
        result = mutator.builder_.get()
        return then(result) if then is not None else result

    return _pass


def bound_constant(mutator, expr):
    """The Relax constant `expr` is, or is bound to in the function `mutator` visits; else None."""
    import tvm
    from tvm import relax
    if isinstance(expr, relax.Var):
        expr = mutator.lookup_binding(expr)
    return expr if isinstance(expr, tvm.ir.Constant) else None


def op_rewrite_pass(op_name: str, rewrite, name: str):
    """A module pass calling `rewrite(mutator, call)` on every call of the Relax operator
    `op_name` (e.g. "relax.nn.max_pool2d"), its arguments already rewritten; `rewrite` returns
    the replacement (built with `mutator.builder_`) or None to keep the call."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class OpRewriter(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if isinstance(call.op, tvm.ir.Op) and call.op.name == op_name:
                replacement = rewrite(self, call)
                if replacement is not None:
                    return replacement
            return call

    return relax_rewrite_pass(OpRewriter, name)
