"""The CUDA target: TVM's CUDA pipeline with dlight's default GPU schedules, a record of which
schedule rule each kernel got, and the nvcc build of the kernels into a fatbin for one arch.

Compiling needs no GPU: TVM's codegen keeps the kernels as CUDA source (a "fallback" module when
the CUDA runtime cannot be loaded). `cuda_binary` compiles that source with nvcc for the target's
arch; `export.py` embeds the result so a GPU machine loads it without any compiler.
"""
from __future__ import annotations

import hashlib
import math
import re
import threading
from dataclasses import dataclass, field

from ...errors import GraphoptError, LoweringError

DEFAULT_ARCH = "sm_90"
_ARCH = re.compile(r"^sm_(\d{2,3})[a-z]?$")


def parse_cuda_target(name: str) -> str:
    """The arch of a graphopt CUDA target name: "cuda" -> sm_90, "cuda:sm_80" -> sm_80."""
    kind, colon, arch = name.partition(":")
    arch = arch if colon else DEFAULT_ARCH
    if kind != "cuda" or not _ARCH.match(arch):
        raise GraphoptError(f"bad CUDA target {name!r}; expected 'cuda' or 'cuda:sm_<NN>' "
                            "(e.g. cuda:sm_80, cuda:sm_90)")
    return arch


# Shared memory one thread block may allocate statically, on every arch since sm_20 (more
# needs a dynamic allocation and an opt-in); TVM warns on each compile when the target lacks it.
MAX_SHARED_MEMORY_PER_BLOCK = 48 * 1024


def cuda_target(arch: str = DEFAULT_ARCH):
    from tvm.target import Target
    return Target({"kind": "cuda", "arch": arch,
                   "max_shared_memory_per_block": MAX_SHARED_MEMORY_PER_BLOCK})


def nvcc_arch_flags(arch: str) -> list[str]:
    """Machine code (SASS) for `arch` plus its PTX, which newer GPUs can still JIT."""
    number = _ARCH.match(arch).group(1)
    suffix = arch[3:]
    return ["-gencode", f"arch=compute_{suffix},code=sm_{suffix}",
            "-gencode", f"arch=compute_{number},code=compute_{number}"]


# ---- scheduling with a record of the rule each kernel got ---------------------------------------

@dataclass
class ScheduleReport:
    """Which dlight rule scheduled each kernel (PrimFunc). `Fallback` is dlight's generic
    elementwise schedule: a conv or matmul that lands there runs as a naive GPU loop nest."""
    rules: dict[str, str] = field(default_factory=dict)

    def kernels_with(self, rule: str) -> list[str]:
        return sorted(k for k, r in self.rules.items() if r == rule)

    @property
    def fallback(self) -> list[str]:
        return self.kernels_with("Fallback")

    @property
    def naive_heavy_kernels(self) -> list[str]:
        """Convolutions and matmuls that only got the Fallback rule: correct but naive loops.
        (Pooling and elementwise kernels on Fallback are expected.)"""
        return [k for k in self.fallback if re.search(r"conv|matmul|dense", k)]

    @property
    def convolutions_off_matmul(self) -> list[str]:
        """Convolutions that dlight could not schedule as a tiled GEMM (its Matmul rule): the
        reduction rules they get instead run one small thread block per output row."""
        return sorted(k for k, r in self.rules.items() if "conv" in k and r != "Matmul")

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rule in self.rules.values():
            counts[rule] = counts.get(rule, 0) + 1
        return dict(sorted(counts.items()))

    def __str__(self) -> str:
        lines = ["dlight schedules: " + ", ".join(f"{r} x{n}" for r, n in self.counts().items())]
        if self.naive_heavy_kernels:
            lines.append("conv/matmul kernels on the naive Fallback schedule: "
                         + ", ".join(self.naive_heavy_kernels))
        slow = [k for k in self.convolutions_off_matmul if k not in self.naive_heavy_kernels]
        if slow:
            lines.append("convolutions not scheduled as GEMM: " + ", ".join(
                f"{k} ({self.rules[k]})" for k in slow))
        return "\n".join(lines)


# Thread blocks a GEMM kernel should launch: two per SM of an H100 / H200 (132 SMs).
FILL_BLOCKS = 264
# Outputs per thread (rows, columns) that `grid_filling_matmul` tries, largest first; dlight's
# Matmul takes 4 x 4 on a block of 16 x 8 threads, a 64 x 32 tile. Only square tiles: on an
# H200, models whose kernels took 1 x 2 tiles returned NaNs (VGG-16, AlexNet, ResNet-50,
# Inception-v3). At 1 x 2, dlight's write-back stores the accumulators as pairs, float2 loads
# of a float[4] of which the thread summed elements 0 and 2: element 1 is never written, and
# each pair lands on two output channels, the second also another thread's. At 4 x 4, 2 x 2 and
# 1 x 1 the accumulators are read as they were summed. 2 x 2 against going from 4 x 4 straight
# to 1 x 1, alternated on an H200: int8 ResNet-18 at batch 8 2.89 -> 2.03 ms, style transfer
# 4.08 -> 3.16, VGG-16 4.22 -> 3.46 (its 14x14 and 28x28 convs), ResNet-18 at batch 8 3.60 ->
# 3.03; 8 x 8 tiles for the large GEMMs were slower still on VGG-16's 224x224 convs.
THREAD_TILES = ((4, 4), (2, 2), (1, 1))


def launched_blocks(sch) -> int:
    """The thread blocks a scheduled kernel launches: the product of its blockIdx loops."""
    from tvm.s_tir.dlight.analysis import get_root_block
    for block in sch.get_child_blocks(get_root_block(sch)):
        loops = [sch.get(loop) for loop in sch.get_loops(block)]
        bound = [int(loop.extent) for loop in loops if loop.thread_binding is not None
                 and loop.thread_binding.thread_tag.startswith("blockIdx")]
        if bound:
            return math.prod(bound)
    return 1


def grid_filling_matmul():
    """dlight's Matmul rule, with smaller per-thread tiles (THREAD_TILES) where its own would
    launch fewer than FILL_BLOCKS thread blocks: a batch-1 convolution on a 7x7 or 14x14 plane
    launched 16-28 blocks of 64 x 32 outputs, so that most of the GPU's SMs idled (ResNet-18's
    last stage took half its time on an H200). There, batch 1: ResNet-18 3.19 -> 1.84 ms,
    ResNet-50 4.90 -> 3.05, Inception-v3 8.75 -> 6.43, VGG-16 5.29 -> 3.46 (with its linear
    layers as `dense`). The tensor-core path (float16 GEMMs whose every extent is over 64) is
    dlight's."""
    import dataclasses
    from tvm.s_tir import dlight as dl

    class Matmul(dl.gpu.Matmul):   # named as dlight's in the schedule report
        tile = THREAD_TILES[0]

        def get_configs(self, target):
            config = super().get_configs(target)
            if target.kind.name != "cuda":
                return config
            return dataclasses.replace(config, micro_size_y=self.tile[0],
                                       micro_size_x=self.tile[1])

        def apply(self, func, target, tunable):
            schedules = {}

            def scheduled(tile):
                """(schedule or None, thread blocks it launches) at `tile`, each built once."""
                if tile not in schedules:
                    self.tile = tile
                    sch = super(Matmul, self).apply(func, target, tunable)
                    schedules[tile] = sch, launched_blocks(sch) if sch is not None else 0
                return schedules[tile]

            first, first_blocks = scheduled(THREAD_TILES[0])
            if first is None or first_blocks >= FILL_BLOCKS or \
                    scheduled(THREAD_TILES[-1])[1] == first_blocks:
                return first   # not a matmul, full already, or tiled by dlight's own choice
            for tile in THREAD_TILES:   # the largest tile that fills the GPU, else the smallest
                sch, blocks = scheduled(tile)
                if blocks >= FILL_BLOCKS or tile == THREAD_TILES[-1]:
                    return sch

    return Matmul()


def lowerable_reduction(rule):
    """dlight's reduction rule `rule`, declining (None, so that the next rule, at last Fallback,
    schedules the kernel) where its schedule needs a cross-thread reduction TVM cannot lower:
    one whose combiner TVM does not recognize. Max pools reduce with graphopt's NaN-aware
    maximum (`ops.pool.nan_max`); with an epilogue (a max pool then a relu), GeneralReduction
    bound the window to threads and the whole build failed ("No matched reducer")."""
    from tvm import s_tir
    from tvm.error import InternalError

    class Rule(type(rule)):
        def apply(self, func, target, tunable):
            space = super().apply(func, target, tunable)
            if space is None:
                return None
            sch = space if isinstance(space, s_tir.Schedule) else space[0]
            try:
                s_tir.transform.LowerCrossThreadReduction()(sch.mod)
            except (ValueError, InternalError):
                return None
            return space

    Rule.__name__ = Rule.__qualname__ = type(rule).__name__   # named as dlight's in the report
    return Rule()


_FALLBACK_PATCH = threading.Lock()


def bounded_fallback():
    """dlight's Fallback, whose inlining stops where graphopt's CPU rules stop
    (`schedules.common.within_inline_limits`). dlight inlines every block it can: six clips
    and relus alternating became one block of selects nested nine deep, which took TVM's
    simplifiers 39 s (0.8 s bounded), and a SiLU then two reflection pads more than 5 minutes.
    dlight's `try_inline` is written again here (it takes no limit), and the Fallback rule
    made to call it while it schedules."""
    from tvm.s_tir import dlight as dl
    from tvm.s_tir.dlight.gpu import fallback
    from tvm.s_tir.schedule import ScheduleError
    from tvm.error import InternalError
    from .schedules.common import within_inline_limits

    def try_inline(sch, blocks):
        """dlight's: compute_inline any block, else reverse_compute_inline any, to a fixed
        point; the blocks left. Only moves within the limits are tried."""
        def trial(reverse: bool):
            for i, info in enumerate(blocks):
                if not within_inline_limits(sch, info.block_rv, reverse):
                    continue
                try:
                    (sch.reverse_compute_inline if reverse else sch.compute_inline)(
                        info.block_rv)
                except (ScheduleError, InternalError):
                    continue
                return i
            return None

        while True:
            i = trial(False)
            if i is None:
                i = trial(True)
            if i is None:
                return blocks
            blocks.pop(i)

    class Fallback(dl.gpu.Fallback):   # named as dlight's in the schedule report
        def apply(self, func, target, tunable):
            with _FALLBACK_PATCH:   # one schedule at a time sees the module's name replaced
                unbounded, fallback.try_inline = fallback.try_inline, try_inline
                try:
                    return super().apply(func, target, tunable)
                finally:
                    fallback.try_inline = unbounded

    return Fallback()


def default_rules():
    """dlight's GPU rules in the order TVM's CUDA pipeline tries them, its Matmul filling the
    GPU (`grid_filling_matmul`), its reductions declining what TVM cannot lower
    (`lowerable_reduction`), its Fallback inlining within limits (`bounded_fallback`)."""
    from tvm.s_tir import dlight as dl
    return [grid_filling_matmul(), dl.gpu.GEMV(), lowerable_reduction(dl.gpu.Reduction()),
            lowerable_reduction(dl.gpu.GeneralReduction()), bounded_fallback()]


def recording_schedule_pass(report: ScheduleReport, rules=None):
    """dlight's ApplyDefaultSchedule, re-done here (it does not say which rule won) so that
    `report` learns the rule applied to each PrimFunc."""
    import tvm
    from tvm import s_tir, tirx
    from tvm.s_tir.schedule import ScheduleError

    rules = default_rules() if rules is None else rules

    @tvm.transform.module_pass(opt_level=0, name="graphopt.RecordingDefaultSchedule")
    def schedule(mod, _ctx):
        target = tvm.target.Target.current(allow_none=False)
        for gvar, func in list(mod.functions_items()):
            if not isinstance(func, tirx.PrimFunc) or func.attrs and \
                    "tirx.is_scheduled" in func.attrs and func.attrs["tirx.is_scheduled"] == 1:
                continue
            for rule in rules:
                try:
                    space = rule.apply(func, target, False)
                except (AssertionError, ScheduleError):
                    # dlight's rules assert where they cannot finish: Matmul on a conv whose
                    # fused consumer broadcasts its output (a squeeze-excite's scale of the
                    # map), which it cannot inline. The next rule schedules the kernel.
                    space = None
                if space is None:
                    continue
                sch = space if isinstance(space, s_tir.Schedule) else space[0]
                mod[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                report.rules[gvar.name_hint] = type(rule).__name__
                break
            else:
                report.rules[gvar.name_hint] = "none"
        return mod

    return schedule


def cuda_pipeline(target, report: ScheduleReport):
    """TVM's default CUDA pipeline with the dlight step replaced by the recording one.
    graphopt's passes already folded batch norms and fused the conv epilogues (one opaque
    kernel per `fused_conv2d`); TVM fuses the elementwise chains they left alone."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cuda import pipeline as cuda

    def replaced(p) -> bool:
        # dlight: by the recording pass; FoldConstant: graphopt's passes and lowering leave no
        # constant arithmetic (TVM would build each constant expression with LLVM).
        return p.info.name in ("ApplyDefaultSchedule", "FoldConstant")

    passes = ([relax.transform.DecomposeOpsForInference()]
              + cuda.library_dispatch_passes(target)
              + [p for p in cuda.legalize_passes(target) if not replaced(p)]
              + [recording_schedule_pass(report)]
              + cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target))
    return tvm.transform.Sequential(passes, name="graphopt.cuda_pipeline")


# ---- the GPU binary --------------------------------------------------------------------------

def cuda_module(executable):
    """The kind-"cuda" module in a compiled executable's import tree."""
    pending = [executable.mod]
    while pending:
        module = pending.pop()
        if module.kind == "cuda":
            return module
        pending.extend(module.imports)
    raise LoweringError("the CUDA build holds no GPU kernels (no 'cuda' module): every kernel "
                        "fell to host code, which happens when a PrimFunc got no GPU schedule")


def cuda_source(executable) -> str:
    module = cuda_module(executable)
    return module.inspect_source("cuda") or module.inspect_source("")


def source_digest(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


_binaries: dict[tuple[str, str], bytes] = {}

# TVM builds with --use_fast_math, whose division, square root and flush of denormals to zero
# are approximate. These flags, given after it, restore IEEE division and square root and keep
# denormals (the fast exp/log/sin intrinsics stay): a quantized model's requantize multiplier,
# (x_scale * w_scale) / y_scale, is computed in the kernel when its scales are parameters, and
# an approximate quotient moves values near rounding boundaries by one step (int8 ResNet-18,
# batch 1, on an H200: an output one step off the interpreter's; with IEEE division, equal).
EXACT_MATH_FLAGS = ["--prec-div=true", "--prec-sqrt=true", "--ftz=false"]


def compile_cuda_source(source: str, arch: str) -> bytes:
    """The fatbin nvcc builds from TVM's CUDA source for `arch` (cached per source and arch)."""
    key = (source_digest(source), arch)
    if key not in _binaries:
        from tvm.support import nvcc
        try:
            with cuda_target(arch):
                binary = nvcc.compile_cuda(source, target_format="fatbin",
                                           arch=nvcc_arch_flags(arch), compiler="nvcc",
                                           options=list(EXACT_MATH_FLAGS))
        except (RuntimeError, OSError) as e:
            raise LoweringError(f"nvcc failed to build the CUDA kernels for {arch}: "
                                f"{nvcc_message(str(e))}") from e
        _binaries[key] = bytes(binary)
    return _binaries[key]


def nvcc_message(text: str) -> str:
    """nvcc's own diagnostics from TVM's error, which is the source, then "Compilation error:",
    then nvcc's output: its error lines (temporary folders dropped), else all it said."""
    _, marker, output = text.partition("Compilation error:")
    output = output if marker else text
    errors = [re.sub(r"^\S*/", "", line.strip()) for line in output.splitlines()
              if "error" in line.lower() and line.strip()]
    said = "; ".join(errors[:3]) or " ".join(output.split()) or "nvcc gave no message"
    return said[:600]


def nvcc_compile_callback(arch: str):
    """Where the CUDA runtime is present (a GPU machine), TVM compiles kernels while building
    through `tvm_callback_cuda_compile` (NVRTC by default): route that to nvcc for `arch`."""
    from ...runtime import cuda_compile_callback
    return cuda_compile_callback(lambda source: compile_cuda_source(source, arch))


def fatbin_archs(fatbin: bytes) -> list[str]:
    """The SASS archs in a fatbin, read from the ELF images it holds (e_machine EM_CUDA = 190;
    the arch is the low byte of e_flags in the cubin ABI versions nvcc 12-13 emit)."""
    archs = []
    start = 0
    while (at := fatbin.find(b"\x7fELF", start)) >= 0:
        start = at + 4
        header = fatbin[at:at + 64]
        if len(header) < 52 or int.from_bytes(header[18:20], "little") != 190:
            continue
        flags = int.from_bytes(header[48:52], "little")
        # ABI v1 (CUDA <= 12.8) keeps sm in bits 0-7; ABI v2 (CUDA 12.9+) in bits 8-15.
        abi_v2 = header[8] >= 8 or (flags & 0xFF) == 0
        archs.append(f"sm_{(flags >> 8) & 0xFF if abi_v2 else flags & 0xFF}")
    return archs
