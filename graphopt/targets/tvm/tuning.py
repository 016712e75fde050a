"""MetaSchedule tuning on top of the deterministic CPU schedules.

`tune(graph, trials)` tunes the fused kernels of `graph` (the same PrimFuncs the CPU pipeline
schedules) and keeps, per kernel, the tuned record only when it measured faster than graphopt's
own schedule of that kernel. Records live in a JSON database per target under the user cache
directory (`$GRAPHOPT_TUNING_DIR`, else `$XDG_CACHE_HOME/graphopt/tuning`, else
`~/.cache/graphopt/tuning`); `compile(..., tuning="user")` (or a folder) applies matching
records. Nothing needs tuning: without records every kernel keeps its rule-based schedule."""
from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ...errors import GraphoptError
from ...files import atomic_output, temporary_directory
from ...ir import Graph
from ...signature import probe_inputs

from .tuning_database import (RECORDS, WORKLOADS, cache_root, database_dir, load_database,
                              read_database)
from .user_cache import warn_corrupt


@dataclass
class KernelResult:
    name: str
    scheduled_ms: float
    tuned_ms: float | None

    @property
    def kept(self) -> bool:
        return self.tuned_ms is not None and self.tuned_ms < self.scheduled_ms


@dataclass
class TuneReport:
    graph: str
    database: Path
    trials: int
    seconds: float
    kernels: list[KernelResult] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"tuned '{self.graph}': {self.trials} trials in {self.seconds:.0f} s -> {self.database}",
                 f"{'kernel':48} {'scheduled ms':>12} {'tuned ms':>9}  kept"]
        for k in self.kernels:
            tuned = f"{k.tuned_ms:9.3f}" if k.tuned_ms is not None else f"{'-':>9}"
            lines.append(f"{k.name:48} {k.scheduled_ms:12.3f} {tuned}  {'yes' if k.kept else 'no'}")
        return "\n".join(lines)


def fused_module(graph: Graph, options=None):
    """`graph` optimized, lowered, legalized and fused exactly as `compile` does before
    scheduling: (the module, its TVM target)."""
    import tvm
    from .compile import optimize_for_target
    from .cpu import pre_schedule_passes
    from .lower import to_relax
    optimized, target = optimize_for_target(graph, "cpu", options)
    with target:
        return tvm.transform.Sequential(pre_schedule_passes(target))(to_relax(optimized.graph)), \
            target


# Kernels worth tuning: the GEMM-like ones. Pooling/elementwise kernels are memory-bound and
# each extra task costs minutes of builder/runner start-up.
TUNED_KERNELS = ("conv2d", "matmul")


def require_tune_extra(cost_model: str = "xgb") -> None:
    """A MissingExtraError saying `pip install graphopt[tune]` unless what MetaSchedule needs
    is installed: cloudpickle (its process pool) and, for the "xgb" cost model, xgboost."""
    from ...report.extras import require
    require("cloudpickle", "tune", "tuning (MetaSchedule's process pool)")
    if cost_model == "xgb":
        require("xgboost", "tune", "tuning with the XGBoost cost model")


@contextmanager
def meta_schedule_console_quiet() -> Iterator[None]:
    """MetaSchedule's console handler takes its logger's level when a search starts (DEBUG when
    unset) and prints every task scheduler step, which broke graphopt's progress line: with the
    level CRITICAL meanwhile, its log goes only to the files in its work folder. The level is
    restored after."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def trials_counter(progress: Callable[[int, int], object], total: int):
    """A MetaSchedule measure callback calling `progress(trials measured, total)`."""
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.ir.utils import derived_object

    @derived_object
    class TrialsCounter(PyMeasureCallback):
        def __init__(self) -> None:
            self.measured = 0

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results) -> None:
            self.measured += len(measure_candidates)
            progress(min(self.measured, total), total)
    return TrialsCounter()


def tune(graph: Graph, trials: int = 64, cache_dir=None, max_trials_per_task: int | None = None,
         cost_model: str = "xgb", kernels: tuple[str, ...] = TUNED_KERNELS,
         timeout_s: float = 120.0,
         progress: Callable[[int, int], object] | None = None) -> TuneReport:
    """Run MetaSchedule on `graph`'s kernels whose names contain one of `kernels` and store the
    records that beat graphopt's own schedules in the target's database (added to what is
    there). `max_trials_per_task` defaults to an even share of `trials`. `timeout_s` bounds each
    candidate's build and run (generous: a loaded machine). `progress(measured, trials)` hears
    each batch of trials measured. Needs the `tune` extra (checked first)."""
    if trials < 1:
        raise GraphoptError(f"tune: expected trials >= 1, found {trials}")
    require_tune_extra(cost_model)
    from tvm.s_tir import meta_schedule as ms
    start = time.perf_counter()
    mod, target = fused_module(graph)
    if max_trials_per_task is None:
        # Spread the budget: left unset, MetaSchedule gave all of it to the first task.
        tasks = sum(1 for gv in mod.functions if any(k in gv.name_hint for k in kernels))
        max_trials_per_task = max(1, -(-trials // max(1, tasks)))
    directory = database_dir(target, cache_dir)
    report = TuneReport(graph.name, directory, trials, 0.0)
    callbacks = list(ms.MeasureCallback.create("default"))
    if progress is not None:
        callbacks.append(trials_counter(progress, trials))
    with temporary_directory("graphopt-tune-") as work_dir, meta_schedule_console_quiet():
        work_db = ms.relax_integration.tune_relax(
            mod, params={}, target=target, work_dir=work_dir, max_trials_global=trials,
            max_trials_per_task=max_trials_per_task, op_names=list(kernels), cost_model=cost_model,
            builder=ms.builder.LocalBuilder(max_workers=1, timeout_sec=timeout_s),
            runner=ms.runner.LocalRunner(timeout_sec=timeout_s), measure_callbacks=callbacks)
        winners = []
        for result, record, workload_mod in _compare_with_rules(mod, work_db, target, kernels):
            report.kernels.append(result)
            if result.kept:
                winners.append((record, workload_mod))
        if winners:
            save_records(directory, winners)
    report.seconds = time.perf_counter() - start
    return report


def save_records(directory: Path, records) -> None:
    """Add `records` ((TuningRecord, workload module) pairs) to the database in `directory`.
    TVM appends to its files in place, so the new database is built in a hidden folder and
    each file renamed into place, the workloads first: a reader never finds a record whose
    workload is missing, a crash never leaves half a line. A damaged database is replaced."""
    from tvm.s_tir import meta_schedule as ms
    directory.mkdir(parents=True, exist_ok=True)
    _, problem = read_database(directory)
    if problem is not None:
        warn_corrupt(*problem, "replacing it with the new records")
    with temporary_directory(".graphopt-staging-", dir=directory) as staging:
        if problem is None:
            for name in (WORKLOADS, RECORDS):
                if (directory / name).is_file():
                    shutil.copyfile(directory / name, os.path.join(staging, name))
        database = ms.database.JSONDatabase(work_dir=staging)
        for record, workload_mod in records:
            workload = database.commit_workload(workload_mod)
            database.commit_tuning_record(ms.database.TuningRecord(
                record.trace, workload, record.run_secs, record.target, record.args_info))
        for name in (WORKLOADS, RECORDS):
            if (directory / name).is_dir():   # a damaged entry: a folder where the file goes
                shutil.rmtree(directory / name)
            with atomic_output(directory / name) as partial:
                os.replace(os.path.join(staging, name), partial)


def _compare_with_rules(mod, work_db, target, kernels):
    """Per fused kernel: (times of graphopt's schedule and of the best tuned record, the record,
    the kernel's workload module)."""
    import tvm
    from tvm import tirx
    from .schedules import VectorShape
    from .schedules.dispatch import schedule_func
    vec = VectorShape.of(target)
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or not any(k in gv.name_hint for k in kernels):
            continue
        workload_mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
        scheduled, _ = schedule_func(func, vec)
        ours = time_primfunc(scheduled, target) if scheduled is not None else float("inf")
        record = None
        if work_db.has_workload(workload_mod):
            top = work_db.get_top_k(work_db.commit_workload(workload_mod), 1)
            record = top[0] if top else None
        tuned = float(np.mean([float(s) for s in record.run_secs])) * 1e3 if record else None
        yield KernelResult(gv.name_hint, ours, tuned), record, workload_mod


def time_primfunc(func, target, repeat: int = 5) -> float:
    """Best-of-`repeat` milliseconds of one PrimFunc on random inputs (its parameters' shapes)."""
    import tvm
    from .tir_lowering import cpu_build_config, cpu_tir_pipeline
    with tvm.transform.PassContext(config=cpu_build_config()):   # built as `compile` builds it
        lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                          target=target, tir_pipeline=cpu_tir_pipeline())
    dev = tvm.cpu()
    feeds = probe_inputs([(str(i), [int(d) for d in p.shape], p.dtype)
                          for i, p in enumerate(func.params)])
    args = [tvm.runtime.tensor(a, dev) for a in feeds.values()]
    timer = lib.mod.time_evaluator("main", dev, number=3, repeat=repeat, min_repeat_ms=20)
    return float(min(timer(*args).results)) * 1e3


def has_records(cache_dir=None) -> bool:
    """Whether a tuning database exists for this machine's target."""
    from .cpu import host_target
    return load_database(host_target(), cache_root(cache_dir)) is not None


def compile_tuned(graph: Graph, cache_dir=None, **options):
    """`compile(graph, "cpu")` with the tuning database of `cache_dir` (default: the user's)."""
    from .compile import compile_graph
    return compile_graph(graph, "cpu", tuning=str(cache_root(cache_dir)), **options)
