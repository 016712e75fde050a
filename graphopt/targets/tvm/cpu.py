"""The CPU (LLVM) target: the host's real CPU model and the Relax pipeline used for it."""
from __future__ import annotations

import os


def host_target():
    """An LLVM target for this machine's CPU (its real `mcpu`, so AVX-512 is used where present)
    with `num-cores`, which MetaSchedule needs."""
    from tvm.target import Target
    config = dict(Target.from_device("cpu").export())
    keep = {k: config[k] for k in ("kind", "mtriple", "mcpu") if config.get(k)}
    keep["num-cores"] = physical_cores()
    return Target(keep)


def physical_cores() -> int:
    try:
        import psutil
        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def pre_schedule_passes(target, offload: list | None = None) -> list:
    """Fold batch norms into convolutions, legalize, fold constants (this also folds the
    transposes of linear weights) and fuse elementwise epilogues into their producers: the
    PrimFuncs left are what the schedule rules and MetaSchedule work on. With `offload` (a
    list, filled with what was sent), convolutions with constant weights go to oneDNN first."""
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    from .constant_folding import fold_constants_numpy
    external = []
    if offload is not None:
        from .onednn.offload import offload_convolutions
        external = [offload_convolutions(offload)]
    return ([relax.transform.FoldBatchnormToConv2D(), relax.transform.DecomposeOpsForInference(),
             vector_tanh(), separable_max_pool(), fold_constants_numpy()] + external
            + [winograd_convolutions(target)]
            + cpu_generic.library_dispatch_passes(target) + cpu_generic.legalize_passes(target))


def vector_tanh():
    """tanh as TOPI's rational approximation (max relative error 3.5e-7 over [-12, 12], about
    3 ulp) instead of a scalar libm call per element: it vectorizes and fuses into the producing
    kernel. LeNet-5 spent a third of its time in libm's expf. exp/softmax keep the exact call."""
    import tvm
    from tvm import relax, topi
    from .constant_folding import relax_rewrite_pass

    @relax.expr_functor.mutator
    class VectorTanh(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.tanh" \
                    and call.args[0].ty.dtype == "float32":
                return self.builder_.call_te(topi.fast_tanh, call.args[0], primfunc_name_hint="tanh")
            return call

    return relax_rewrite_pass(VectorTanh, "graphopt.VectorTanh")


def separable_max_pool():
    """NCHW max pools as a row pass then a column pass (`schedules/pool2d.py`): contiguous vector
    reads instead of a padded strided gather per window element."""
    import tvm
    from tvm import relax
    from .constant_folding import relax_rewrite_pass
    from .schedules.pool2d import separable_max_pool2d

    @relax.expr_functor.mutator
    class SeparableMaxPool(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.max_pool2d"):
                return call
            a = call.attrs
            if a.layout != "NCHW" or a.out_layout != "NCHW" or call.ty.dtype not in ("float32",
                                                                                     "float16"):
                return call
            pair = lambda v: tuple(int(i) for i in v)
            top, left = (int(p) for p in a.padding[:2])
            out_h, out_w = (int(call.ty.shape[i]) for i in (2, 3))
            return self.builder_.call_te(
                separable_max_pool2d, call.args[0], pair(a.pool_size), pair(a.strides),
                pair(a.dilation), top, left, out_h, out_w, primfunc_name_hint="max_pool2d")

    return relax_rewrite_pass(SeparableMaxPool, "graphopt.SeparableMaxPool")


def winograd_convolutions(target):
    """3x3 stride-1 convolutions with many channels on small planes as Winograd F(2x2, 3x3)
    (`schedules/winograd.py`); their constant weights are transformed here, with numpy."""
    import tvm
    from tvm import relax
    from .constant_folding import relax_rewrite_pass
    from .schedules import winograd
    from .schedules.common import VectorShape
    vec = VectorShape.of(target)

    @relax.expr_functor.mutator
    class Winograd(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
                return call
            a, (x, weight) = call.attrs, call.args
            if isinstance(weight, relax.Var):
                weight = self.lookup_binding(weight)
            if (not isinstance(weight, tvm.ir.Constant) or (a.data_layout, a.kernel_layout,
                    a.out_layout) != ("NCHW", "OIHW", "NCHW")
                    or call.ty.dtype != "float32" or x.ty.dtype != "float32"):
                return call
            w = weight.value.numpy()
            out_h, out_w = (int(call.ty.shape[i]) for i in (2, 3))
            ints = lambda v: tuple(int(i) for i in v)
            if not winograd.applies(w.shape[1], w.shape[0], out_h, out_w, w.shape[2:],
                                    ints(a.strides), ints(a.dilation), int(a.groups),
                                    ints(a.padding), vec):
                return call
            u = winograd.transform_weight(w, winograd.channel_block(vec))
            return self.builder_.call_te(winograd.winograd_conv2d, x, relax.const(u, str(u.dtype)),
                                         primfunc_name_hint="conv2d_winograd")

    return relax_rewrite_pass(Winograd, "graphopt.WinogradConvolutions")


def cpu_pipeline(target, database="auto", offload: list | None = None):
    """The whole CPU pipeline: `pre_schedule_passes` (with `offload`: see there), then tuned
    kernels from a MetaSchedule `database` ("auto": the target's database from `graphopt tune`,
    if any; None: no tuning records), then graphopt's schedule rules for every remaining
    PrimFunc, then VM lowering."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    from .schedules import apply_cpu_schedules

    if database == "auto":
        from .tuning_database import load_database
        database = load_database(target)
    tuned = []
    if database is not None:
        tuned = [relax.transform.MetaScheduleApplyDatabase(enable_warning=False)]
    passes = (pre_schedule_passes(target, offload) + tuned + [apply_cpu_schedules(target)]
              + cpu_generic.dataflow_lower_passes(target) + cpu_generic.finalize_passes(target))

    @tvm.transform.module_pass(opt_level=0, name="graphopt.CpuPipeline")
    def _pipeline(mod, _ctx):
        with target:
            if database is None:
                return tvm.transform.Sequential(passes)(mod)
            with database:
                return tvm.transform.Sequential(passes)(mod)

    return _pipeline
