"""The module pass that schedules every PrimFunc of a fused Relax module for the CPU: the first
rule that accepts a function wins (int8 dot-product conv2d, bfloat16 vdpbf16ps conv2d, conv2d,
Winograd conv2d, pointwise conv2d, depthwise conv2d, narrow conv2d, bfloat16 vdpbf16ps dense,
dense, separable pools,
the AMX convs' epilogue, byte table lookups on vpermi2b, then the generic rule). Weights arrive
in the layouts the target passes chose and lowering packed; the dot-product convs' input copy
is `interleave.py`'s."""
from __future__ import annotations

import warnings

from ....errors import ScheduleFallbackWarning
from ....worker_threads import map_in_threads
from . import (conv2d, conv2d_bf16, conv2d_int8, dense, dense_bf16, depthwise, generic, lookup,
               narrow, pointwise, pool2d, tile_epilogue, winograd)
from .common import VectorShape

RULES = (conv2d_int8, conv2d_bf16, conv2d, winograd, pointwise, depthwise, narrow, dense_bf16,
         dense, pool2d, tile_epilogue, lookup, generic)
SCHEDULE_ATTR = "graphopt.schedule"
TUNED = "meta_schedule"  # the SCHEDULE_ATTR of kernels taken from a tuning database


def apply_cpu_schedules(target, threads: int = 1):
    """A `tvm.transform.Pass` scheduling every not-yet-scheduled PrimFunc for `target`, in
    `threads` threads."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="graphopt.ApplyCpuSchedules")
    def _pass(mod, _ctx):
        return schedule_module(mod, VectorShape.of(target), threads)

    return _pass


def schedule_module(mod, vec: VectorShape, threads: int = 1):
    """Schedule every unscheduled PrimFunc of `mod` (weights arrive in the layouts the target
    passes chose; no rule changes a call site), the functions shared among `threads` threads.
    The rules drive TVM's schedule primitives, which run without Python's lock: DenseNet-121's
    functions took 3.5-4.3 s in one thread and 2.5-2.7 s in two (two Zen 4 cores). Each thread
    takes the next function not yet taken (a pool's map); a function's schedule does not
    depend on which thread made it, and the first rule's error is raised here."""
    from tvm import tirx
    pending = []
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc):
            continue
        if _is_scheduled(func):  # e.g. swapped in from a tuning database
            if SCHEDULE_ATTR not in func.attrs:
                mod[gv] = func.with_attr(SCHEDULE_ATTR, TUNED)
            continue
        pending.append((gv, func))
    results = map_in_threads(lambda item: schedule_func(item[1], vec, item[0].name_hint),
                             pending, threads, "graphopt-schedule")
    for (gv, _), (scheduled, rule) in zip(pending, results):
        if scheduled is not None:
            mod[gv] = scheduled.with_attr("tirx.is_scheduled", True).with_attr(SCHEDULE_ATTR, rule)
    return mod


def schedule_func(func, vec: VectorShape, name: str = "the kernel"):
    """(scheduled PrimFunc, rule name) for the first rule that applies, or (None, None); a rule
    that a schedule primitive refuses part-way is discarded with its schedule and the next rule
    starts afresh, with a `ScheduleFallbackWarning` naming the kernel (`name`) and the refusal
    where a later rule takes it (not for a kernel of empty tensors): none of the zoo's kernels
    takes that path, and the rule left behind is usually the one that makes the kernel fast
    (an int8 conv on the generic rule ran 15x slower). A function no rule takes (one written
    as loops without blocks, as TVM legalizes scatter ops) stays as lowered. Any other error in
    a rule is a bug and propagates. A rule with a `finish(func, vec)` rewrites the function it
    scheduled (the pointwise rule's `likely` predicates)."""
    from tvm import s_tir
    from tvm.s_tir import ScheduleError
    refused = []
    for rule in RULES:
        sch = s_tir.Schedule(func)
        try:
            applied = rule.schedule(sch, vec)
        except ScheduleError as error:  # a primitive refused this function's structure
            refused.append((rule.NAME, error))
            continue
        if applied:
            if refused and not _empty(func):
                rules = ", ".join(f"the {refusing} rule ({_refusal(error)})"
                                  for refusing, error in refused)
                warnings.warn(f"{name}: {rules} failed part-way; the {rule.NAME} rule scheduled it "
                              f"instead, which can be many times slower", ScheduleFallbackWarning)
            finish = getattr(rule, "finish", None)
            scheduled = sch.mod["main"]
            return (finish(scheduled, vec) if finish else scheduled), rule.NAME
    return None, None


def _empty(func) -> bool:
    """Whether a loop of `func` runs no iterations (a kernel of zero-size tensors)."""
    import tvm_ffi
    from tvm import tirx
    loops = []
    tvm_ffi.structural_walk(func.body, (tirx.For, loops.append))
    return any(isinstance(loop.extent, tirx.IntImm) and int(loop.extent) == 0 for loop in loops)


def _refusal(error) -> str:
    """The telling line of a ScheduleError: its 'Error message:' line, else its first."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    told = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Error message:")]
    return (told or lines or [type(error).__name__])[0][:200]


def _is_scheduled(func) -> bool:
    return bool(func.attrs and func.attrs.get("tirx.is_scheduled", False))
