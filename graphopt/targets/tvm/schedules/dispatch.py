"""The module pass that schedules every PrimFunc of a fused Relax module for the CPU: the first
rule that accepts a function wins (conv2d, Winograd conv2d, dense, separable max pool, then the
generic rule), and constant weights are repacked at the call sites into the layout the chosen
kernel reads."""
from __future__ import annotations

from . import conv2d, dense, generic, pool2d, winograd
from .common import VectorShape

RULES = (conv2d, winograd, dense, pool2d, generic)
SCHEDULE_ATTR = "graphopt.schedule"
TUNED = "meta_schedule"  # the SCHEDULE_ATTR of kernels taken from a tuning database


def apply_cpu_schedules(target):
    """A `tvm.transform.Pass` scheduling every not-yet-scheduled PrimFunc for `target`."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="graphopt.ApplyCpuSchedules")
    def _pass(mod, _ctx):
        return schedule_module(mod, VectorShape.of(target))

    return _pass


def schedule_module(mod, vec: VectorShape):
    """Schedule every unscheduled PrimFunc of `mod` and repack the weights the kernels expect."""
    from tvm import tirx
    packable = constant_params(mod)
    packings = {}
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc):
            continue
        if _is_scheduled(func):  # e.g. swapped in from a tuning database
            if SCHEDULE_ATTR not in func.attrs:
                mod[gv] = func.with_attr(SCHEDULE_ATTR, TUNED)
            continue
        scheduled, rule, packing = schedule_func(func, vec, packable.get(gv.name_hint, set()))
        if scheduled is None:
            continue
        mod[gv] = scheduled.with_attr("tirx.is_scheduled", True).with_attr(SCHEDULE_ATTR, rule)
        if packing:
            packings[gv.name_hint] = packing
    return _repack_call_sites(mod, packings) if packings else mod


def schedule_func(func, vec: VectorShape, packable: set[int]):
    """(scheduled PrimFunc, rule name, weight packings) for the first rule that applies; a rule
    that a schedule primitive refuses part-way is discarded with its schedule and the next rule
    starts afresh; any other error in a rule is a bug and propagates."""
    from tvm import s_tir
    from tvm.s_tir import ScheduleError
    for rule in RULES:
        sch = s_tir.Schedule(func)
        try:
            packing = rule.schedule(sch, vec, packable)
        except ScheduleError:  # a schedule primitive refused this function's structure: next rule
            continue
        if packing is not None:
            return sch.mod["main"], rule.NAME, packing
    return None, None, None


def _is_scheduled(func) -> bool:
    return bool(func.attrs and func.attrs.get("tirx.is_scheduled", False))


def call_tir_sites(mod):
    """(callee name, argument list) of every call_tir in the module's Relax functions."""
    import tvm
    from tvm import relax
    call_tir = tvm.ir.Op.get("relax.call_tir")
    sites = []

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            args = expr.args[1]
            sites.append((expr.args[0].name_hint, list(args.fields) if isinstance(args, relax.Tuple)
                          else [args]))

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return sites


def constant_params(mod) -> dict[str, set[int]]:
    """Per PrimFunc: the parameter positions that receive a constant at every call site."""
    import tvm
    result: dict[str, set[int]] = {}
    for name, args in call_tir_sites(mod):
        constant = {i for i, a in enumerate(args) if isinstance(a, tvm.ir.Constant)}
        result[name] = result[name] & constant if name in result else constant
    return result


def _repack_call_sites(mod, packings):
    """Re-add each repacked PrimFunc under a fresh GlobalVar (its signature changed, and the
    BlockBuilder derives the new callee type) and pass it the weights in the new layout at every
    call site."""
    import tvm
    from tvm import relax
    call_tir = tvm.ir.Op.get("relax.call_tir")
    base = tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv.name_hint not in packings},
                        attrs=mod.attrs, global_infos=mod.global_infos)

    @relax.expr_functor.mutator
    class Repack(relax.PyExprMutator):
        def __init__(self):
            super().__init__(base)
            self.renamed = {name: self.builder_.add_func(mod[name], name) for name in packings}

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not call.op.same_as(call_tir) or call.args[0].name_hint not in packings:
                return call
            name = call.args[0].name_hint
            args = list(call.args[1].fields)
            for p in packings[name]:
                packed = p.pack(args[p.param_index].value.numpy())
                args[p.param_index] = relax.const(packed, str(packed.dtype))  # keeps float64
            return relax.Call(call.op, [self.renamed[name], relax.Tuple(args)] + list(call.args[2:]),
                              call.attrs, call.ty_args)

    repack = Repack()
    for gv, func in base.functions.items():
        if isinstance(func, relax.Function):
            repack.builder_.update_func(gv, repack.visit_expr(func))
    return repack.builder_.get()
