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
    """Fold batch norms into convolutions, fold constants (this also folds the transposes of
    linear weights), rewrite max pools and wide 3x3 convs into the forms their schedule rules
    expect (`schedules/pool2d.py`, `schedules/winograd.py`), legalize and fuse elementwise
    epilogues into their producers: the PrimFuncs left are what the schedule rules and
    MetaSchedule work on. With `offload` (a list, filled with what was sent), convolutions with
    constant weights go to oneDNN first."""
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    from .constant_folding import fold_constants_numpy
    from .schedules import pool2d, winograd
    external = []
    if offload is not None:
        from .onednn.offload import offload_convolutions
        external = [offload_convolutions(offload)]
    return ([relax.transform.FoldBatchnormToConv2D(), relax.transform.DecomposeOpsForInference(),
             vector_tanh(), pool2d.rewrite(), fold_constants_numpy()] + external
            + [winograd.rewrite(target)]
            + cpu_generic.library_dispatch_passes(target) + cpu_generic.legalize_passes(target))


def vector_tanh():
    """tanh as TOPI's rational approximation (max relative error 3.5e-7 over [-12, 12], about
    3 ulp) instead of a scalar libm call per element: it vectorizes and fuses into the producing
    kernel. LeNet-5 spent a third of its time in libm's expf. exp/softmax keep the exact call."""
    from tvm import topi
    from .constant_folding import op_rewrite_pass

    def fast(mutator, call):
        if call.args[0].ty.dtype != "float32":
            return None
        return mutator.builder_.call_te(topi.fast_tanh, call.args[0], primfunc_name_hint="tanh")

    return op_rewrite_pass("relax.tanh", fast, "graphopt.VectorTanh")


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
