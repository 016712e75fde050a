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


def pre_schedule_passes(target) -> list:
    """Fold batch norms into convolutions, legalize, fold constants (this also folds the
    transposes of linear weights) and fuse elementwise epilogues into their producers: the
    PrimFuncs left are what the schedule rules and MetaSchedule work on."""
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    return ([relax.transform.FoldBatchnormToConv2D(), relax.transform.DecomposeOpsForInference()]
            + cpu_generic.library_dispatch_passes(target) + cpu_generic.legalize_passes(target))


def cpu_pipeline(target, database="auto"):
    """The whole CPU pipeline: `pre_schedule_passes`, then tuned kernels from a MetaSchedule
    `database` ("auto": the target's database from `graphopt tune`, if any; None: no tuning
    records), then graphopt's schedule rules for every remaining PrimFunc, then VM lowering."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    from .schedules import apply_cpu_schedules

    if database == "auto":
        from .tuning import load_database
        database = load_database(target)
    tuned = []
    if database is not None:
        tuned = [relax.transform.MetaScheduleApplyDatabase(enable_warning=False)]
    passes = (pre_schedule_passes(target) + tuned + [apply_cpu_schedules(target)]
              + cpu_generic.dataflow_lower_passes(target) + cpu_generic.finalize_passes(target))

    @tvm.transform.module_pass(opt_level=0, name="graphopt.CpuPipeline")
    def _pipeline(mod, _ctx):
        with target:
            if database is None:
                return tvm.transform.Sequential(passes)(mod)
            with database:
                return tvm.transform.Sequential(passes)(mod)

    return _pipeline
