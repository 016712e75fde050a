"""The CPU (LLVM) target: the host's real CPU model and the Relax pipeline used for it."""
from __future__ import annotations

import os


def host_target(mcpu: str | None = None):
    """An LLVM target for this machine's CPU (its real `mcpu`, so AVX-512 is used where present),
    or for the LLVM CPU `mcpu` ("haswell", "skylake-avx512", ...), with `num-cores`, which
    MetaSchedule needs. The host's own target also carries, as `mattr`, the features this CPU
    has and its LLVM CPU model lacks, or lacks and the model has (`host_feature_difference`)."""
    from tvm.target import Target
    from tvm.target.codegen import llvm_get_cpu_archlist
    config = dict(Target.from_device("cpu").export())
    keep = {k: config[k] for k in ("kind", "mtriple", "mcpu") if config.get(k)}
    if mcpu is not None:
        # LLVM would only warn and compile for a generic x86-64 CPU.
        known = llvm_get_cpu_archlist(Target({"kind": "llvm", "mtriple": keep.get("mtriple", "")}))
        if mcpu not in known:
            from ...errors import GraphoptError
            raise GraphoptError(f"unknown LLVM CPU mcpu={mcpu!r}; expected one of "
                                f"{', '.join(sorted(known))}")
        keep["mcpu"] = mcpu
    elif keep.get("mcpu"):
        mattr = host_feature_difference(keep)
        if mattr:
            keep["mattr"] = mattr
    keep["num-cores"] = physical_cores()
    return Target(keep)


def host_feature_difference(config: dict) -> list[str]:
    """LLVM `mattr` entries that make the CPU model in `config` this CPU: "+f" for each feature
    the CPU reports (CPUID, as LLVM reads it) that the model lacks, "-f" for each the model has
    and the CPU does not. LLVM names the model from CPUID's family and model numbers, which a
    virtual machine may not match to its features: an AMX Xeon guest seen as model 167 is
    "rocketlake", a CPU without AMX, AVX512-BF16 or AVX512-FP16. This is what clang's
    `-march=native` does (host CPU name plus host features)."""
    import tvm_ffi
    from tvm.target import Target
    host = dict(tvm_ffi.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")())
    model = set(dict(tvm_ffi.get_global_func("target.llvm_get_cpu_features")(Target(config))))
    return sorted(f"+{f}" for f, on in host.items() if on and f not in model) + \
        sorted(f"-{f}" for f, on in host.items() if not on and f in model)


def physical_cores() -> int:
    try:
        import psutil
        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def pre_schedule_passes(target, onednn: bool = False) -> list:
    """Legalize and fuse: what is left are the PrimFuncs the schedule rules and MetaSchedule
    work on. graphopt's passes already folded batch norms and constants and fused the conv
    epilogues (a `fused_conv2d` is one opaque kernel that TVM does not re-fuse); TVM's FuseOps
    still merges the elementwise chains graphopt left alone. With `onednn`, the oneDNN calls
    pass NHWC to each other (`onednn.lowering.keep_nhwc`)."""
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    from .output_views import output_reshapes_as_views
    from .small_producers import keep_small_producers_apart
    layouts = []
    if onednn:
        from .onednn.lowering import keep_nhwc
        layouts = [keep_nhwc()]
    return ([relax.transform.DecomposeOpsForInference(),
             # views a lowering left unused (a pointwise conv reading another's flat output)
             relax.transform.DeadCodeElimination()] + layouts
            + cpu_generic.library_dispatch_passes(target)
            + [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
               keep_small_producers_apart(),
               relax.transform.FuseOps(), relax.transform.FuseTIR(),
               # reshapes become views of their input before any rule schedules them as
               # copies (the pointwise conv's flattened planes), the model's outputs too; the
               # copy kernels they leave uncalled are dropped, not scheduled and built
               relax.transform.RewriteDataflowReshape(), output_reshapes_as_views(),
               relax.transform.DeadCodeElimination()])


def cpu_pipeline(target, database=None, onednn: bool = False, threads: int = 1):
    """The whole CPU pipeline: `pre_schedule_passes`, then tuned kernels from a MetaSchedule
    `database` (None: no tuning records), then graphopt's schedule rules for every remaining
    PrimFunc (in `threads` threads), then VM lowering, the intermediates made once per VM rather
    than on every run (`workspace.py`)."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    from .concat_in_place import concatenate_in_place
    from .schedules import apply_cpu_schedules
    from .workspace import lift_workspace

    tuned = []
    if database is not None:
        tuned = [relax.transform.MetaScheduleApplyDatabase(enable_warning=False)]
    passes = (pre_schedule_passes(target, onednn) + tuned + [apply_cpu_schedules(target, threads)]
              + cpu_generic.dataflow_lower_passes(target) + [concatenate_in_place()]
              + cpu_generic.finalize_passes(target) + [lift_workspace()])

    @tvm.transform.module_pass(opt_level=0, name="graphopt.CpuPipeline")
    def _pipeline(mod, _ctx):
        with target:
            if database is None:
                return tvm.transform.Sequential(passes)(mod)
            with database:
                return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def cpu_assembly(executable) -> str:
    """The x86 assembly of a CPU build's kernels (its LLVM modules, `parallel_build.py`), e.g. to
    check which instructions a schedule emits."""
    return "".join(module.inspect_source("asm") for module in llvm_modules(executable))


def llvm_modules(executable) -> list:
    """The LLVM modules holding a CPU build's kernels, the one the VM links first."""
    found, pending = [], [executable.mod]
    while pending:
        module = pending.pop(0)
        if module.kind == "llvm":
            found.append(module)
        pending.extend(module.imports)
    return found
