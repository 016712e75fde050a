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


def cpu_pipeline(target, database=None):
    """Fold batch norms into convolutions, legalize, fold constants, fuse elementwise epilogues
    into their producers, swap in tuned kernels from `database` (a MetaSchedule database, if
    given), schedule every remaining PrimFunc with graphopt's CPU rules, then lower for the VM."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    from .schedules import apply_cpu_schedules

    tuned = []
    if database is not None:
        from tvm.s_tir import meta_schedule as ms  # noqa: F401  (registers the database pass)
        tuned = [relax.transform.MetaScheduleApplyDatabase(enable_warning=False)]
    passes = ([relax.transform.FoldBatchnormToConv2D(), relax.transform.DecomposeOpsForInference()]
              + cpu_generic.library_dispatch_passes(target) + cpu_generic.legalize_passes(target)
              + tuned + [apply_cpu_schedules(target)]
              + cpu_generic.dataflow_lower_passes(target) + cpu_generic.finalize_passes(target))

    @tvm.transform.module_pass(opt_level=0, name="graphopt.CpuPipeline")
    def _pipeline(mod, _ctx):
        with target:
            if database is not None:
                with database:
                    return tvm.transform.Sequential(passes)(mod)
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
