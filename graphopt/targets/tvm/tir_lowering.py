"""How graphopt lowers its scheduled CPU kernels to machine code: TVM's default TIR pipeline with
four changes, all for code the schedule rules make, and without TVM's argument checks.

- LoopPartition splits loops on `likely` conditions also where their extents are constants
  (`partition_const_loop`): the pointwise rule marks a partial plane's last-vector predicates
  `likely` (`schedules/pointwise.finish`), and the loop of whole vectors is split from the last
  one. No other kernel has a `likely` condition, and their code is unchanged by it.
- Buffers a kernel allocates, where their size is a constant within STACK_BYTES, go on the stack
  instead of through `TVMBackendAllocWorkspace`, which TVM's LowerTVMBuiltin otherwise calls
  for every buffer over 1 KiB: a buffer allocated inside a parallel loop (a depthwise conv's
  per-channel input copy) was allocated and freed once per channel, 21,800 calls per
  MobileNetV2 run. A function's stack buffers stay within STACK_BYTES together (the calling
  thread runs a share of every parallel loop on its own stack). Measured, graphopt / ORT
  (medians of 40 runs in one process, AMD Zen 4), workspace calls -> stack: one thread
  MobileNetV2 1.13 -> 0.96, EfficientNet-B0 1.09 -> 1.02, MobileNetV3-Large 1.10 -> 0.94; two
  threads 1.28 -> 1.14, 1.05 -> 0.85, 1.16 -> 0.94.
- Before lowering, loops the conv2d rule annotates prefetch the next input-channel block of
  their weights (`weight_prefetch.py`).
- `isnan` is vectorizable (`vectorizable_isnan`).

TVM checks every argument of every kernel on entry (its type, device, dtype, each dimension,
strides, offset), an assert and an error message each: in DenseNet-121's batch norm over 21
concatenated inputs, 3,600 instructions of checks before 1,800 of work, and about a third of
its build time. The kernels are called only by the VM, with the buffers it planned for the
shapes they were compiled for, and the VM checks the model's inputs itself (each parameter of
`main` against its shape and dtype, before any kernel runs), so a build leaves the checks out
(`tirx.disable_assert`): DenseNet-121's kernels built in 8.5-9.0 s instead of 13.1-14.2 (two
Zen 4 cores). A bounds-checked build (the test mode) keeps every assert."""
from __future__ import annotations

from .schedules.common import buffer_bytes, registers_with_tvm
from .weight_prefetch import weight_prefetch_pass

# A kernel's stack buffers together, bytes: far inside the 8 MiB stacks of Linux threads.
STACK_BYTES = 256 * 1024
# The name the TIR pipeline is registered under (`tvm.compile(..., tir_pipeline=...)`).
CPU_TIR_PIPELINE = "graphopt_cpu"
# TVM's annotation keeping an allocation out of LowerTVMBuiltin (kDisableLowerTVMBuiltin).
ON_STACK = "disable_lower_builtin"


def cpu_build_config(bounds_check: bool = False) -> dict:
    """The PassContext settings of a CPU build; `bounds_check`: TVM's buffer bounds checks in
    every kernel, and its argument checks kept."""
    checks = {"tirx.instrument_bound_checkers": True} if bounds_check else \
        {"tirx.disable_assert": True}
    return {"s_tir.LoopPartition": {"partition_const_loop": True}, **checks}


@registers_with_tvm
def cpu_tir_pipeline() -> str:
    """The name of graphopt's CPU TIR pipeline, registered with TVM on first use."""
    from tvm.tirx import compilation_pipeline
    # once per process, before any build: the parts of a build run this pipeline in threads
    # of their own (`parallel_build.py`), and TVM refuses a second registration
    vectorizable_isnan()
    if CPU_TIR_PIPELINE not in compilation_pipeline.PIPELINE_MAP:
        compilation_pipeline.register_tir_pipeline(CPU_TIR_PIPELINE, _pipeline)
    return CPU_TIR_PIPELINE


def _pipeline():
    """TVM's default TIR pipeline, with the weight prefetches before it and `stack_buffers` before
    the host code's LowerTVMBuiltin; `isnan` vectorizable."""
    import tvm
    from tvm.s_tir.pipeline import default_s_tir_pipeline
    lower, finalize_host, finalize_device = default_s_tir_pipeline()

    def host_passes():
        return tvm.ir.transform.Sequential([_stack_buffers_pass(), finalize_host()])

    return tvm.ir.transform.Sequential([weight_prefetch_pass(), lower]), host_passes, \
        finalize_device


@registers_with_tvm
def vectorizable_isnan() -> None:
    """Mark TVM's `isnan` vectorizable, as TVM marks exp, fabs and its other elementwise
    intrinsics (LLVM compiles it for vectors as an unordered compare). Unmarked, TVM's
    vectorizer runs a loop that calls it a lane at a time: every NaN-propagating max pool (16
    ch 28x28, 2x2 stride 2, on Zen 4: 7.4 us, 1.1 as vector code). `x != x`, which is a vector
    compare, TVM's simplifier folds to false."""
    import tvm
    if tvm.ir.Op.get("tirx.isnan").get_attr("TVectorizable") is None:
        tvm.ir.register_op_attr("tirx.isnan", "TVectorizable", True)


def _stack_buffers_pass():
    from tvm.tirx.transform import prim_func_pass
    return prim_func_pass(lambda func, _mod, _ctx: on_stack(func), opt_level=0,
                          name="graphopt.StackBuffers")


def on_stack(func, budget: int | None = None):
    """`func` with its constant-size buffer allocations marked to stay on the stack, in program
    order while they fit in `budget` bytes together (default STACK_BYTES). TVM's Python API has
    no TIR mutator: tvm_ffi's structural_map rewrites the allocation statements."""
    import tvm_ffi
    from tvm import tirx
    left = STACK_BYTES if budget is None else budget

    def mark(alloc):
        nonlocal left
        size = buffer_bytes(alloc.buffer)
        # an empty buffer (a zero-size batch) has no stack form in TVM's LLVM codegen
        if not size or size > left or ON_STACK in alloc.annotations:
            return alloc
        left -= -(-size // 64) * 64    # each stack buffer is 64-byte aligned
        return tirx.AllocBuffer(alloc.buffer, {**alloc.annotations,
                                               ON_STACK: tirx.IntImm("bool", 1)}, alloc.span)

    return tvm_ffi.structural_map(func, (tirx.AllocBuffer, mark), order="pre")
