"""`compile_graph`: IR -> Relax -> a TVM executable, wrapped in a `CompiledModel` that runs with
numpy inputs and returns outputs keyed like the interpreter's."""
from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import numpy as np

from ...errors import GraphoptError, LoweringError, ModelFormatError
from ...ir import Graph
from ...runtime import (check_cpu_features, checked_inputs, configure_threads, enter_vm,
                        remember_staged_call, run_inputs, run_output)
from ...signature import Signature
from ...verify import verify
from .lower import to_relax
from .options import CompileOptions
from .schedules.common import VectorShape

if TYPE_CHECKING:
    from ...passes.manager import OptimizeResult

TARGETS = ("cpu", "cuda", "cuda:sm_<NN>")


def resolve_target(target: str, mcpu: str | None = None):
    """A TVM Target and device kind for a graphopt target name."""
    if target in ("cpu", "llvm"):
        from .cpu import host_target
        return host_target(mcpu), "cpu"
    if target.split(":")[0] == "cuda":
        if mcpu is not None:
            raise GraphoptError(f"mcpu is a CPU option; the target is {target!r}")
        from .cuda import cuda_target, parse_cuda_target
        return cuda_target(parse_cuda_target(target)), "cuda"
    raise GraphoptError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")


@dataclass(frozen=True)
class TargetContext:
    """What a target pass needs to know about one compile."""

    device_kind: str
    vector: VectorShape | None      # CPU only
    kernels: str
    constant_weights: bool
    threads: int = 1                # the threads the compiled model is meant to run on


def optimize_for_target(graph: Graph, target: str = "cpu",
                        options: CompileOptions | None = None) -> tuple["OptimizeResult", object]:
    """graphopt's pipeline for `target` as `compile` runs it before lowering: the graph passes
    (the default pipeline, or `options.passes`), then the target's passes unless
    `options.target_passes` is False. Returns (OptimizeResult, TVM target)."""
    from ...passes import DEFAULT_PIPELINE, optimize
    from .passes import resolve_target_pass, target_passes
    options = options or CompileOptions()
    tvm_target, device_kind = resolve_target(target, options.mcpu)
    vector = VectorShape.of(tvm_target) if device_kind == "cpu" else None
    context = TargetContext(device_kind, vector, options.kernels, options.weights == "embedded",
                            options.thread_count)
    chosen = DEFAULT_PIPELINE if options.passes is None else options.passes
    passes = [resolve_target_pass(p, device_kind, context) or p if isinstance(p, str) else p
              for p in chosen]
    if options.target_passes:
        passes += target_passes(device_kind, context)
    return optimize(graph, passes, fixed_point=options.passes is None), tvm_target


class CompiledModel:
    """A graph compiled by TVM: `run(inputs) -> {output name: array}`."""

    def __init__(self, executable, signature: Signature, target: str, tvm_target, device_kind: str,
                 graph_name: str = "graph", compile_seconds: float = 0.0,
                 kernels: dict[str, str] | None = None, schedule_report=None,
                 weights: list | None = None, offloaded: list[str] | None = None,
                 optimized: "OptimizeResult | None" = None,
                 options: CompileOptions = CompileOptions()):
        self.executable, self.signature = executable, signature
        # Kernel names, and per kernel the CPU schedule rule it got (`schedules`).
        self.schedules = dict(kernels or {})
        self.kernels = list(self.schedules)
        # What graphopt's passes did before lowering (`report` prints it), and the graph built.
        self.optimized = optimized
        self.options = options
        self.threads = options.thread_count
        # CUDA only: the dlight rule each kernel got (a `cuda.ScheduleReport`).
        self.schedule_report = schedule_report
        # With weights="params": [(name, array)], passed after the inputs on every call.
        self.weights = weights
        self._weight_tensors = None
        # With kernels="onednn": the convolutions computed by oneDNN (one line each).
        self.offloaded = offloaded or []
        self.target, self.tvm_target, self.device_kind = target, tvm_target, device_kind
        self.graph_name, self.compile_seconds = graph_name, compile_seconds
        # One VM per calling thread: a VM's registers live in the object (see runtime.LoadedModel).
        self._per_thread = threading.local()
        self._weights_lock = threading.Lock()

    @functools.cached_property
    def device(self):
        import tvm
        return tvm.cpu() if self.device_kind == "cpu" else tvm.cuda()

    @property
    def vm(self):
        """The calling thread's Relax VM. A CPU model compiled for instructions this CPU lacks
        (`mcpu=` of another machine) is a ModelFormatError here, not a SIGILL in a kernel."""
        vm = getattr(self._per_thread, "vm", None)
        if vm is None:
            from tvm import relax
            if self.device_kind == "cpu" and self.tvm_target is not None:
                from .export import cpu_features
                check_cpu_features(cpu_features(self.tvm_target),
                                   f"model '{self.graph_name}' compiled for "
                                   f"{self.tvm_target.attrs.get('mcpu', 'this CPU')}")
            vm = self._per_thread.vm = relax.VirtualMachine(self.executable, self.device)
        return vm

    @property
    def graph(self) -> Graph | None:
        """The graph that was lowered: the input after graphopt's passes for the target."""
        return self.optimized.graph if self.optimized is not None else None

    @property
    def report(self) -> str:
        """The pass table of the compile's graphopt pipeline (as `go.optimize(...).report`)."""
        if self.optimized is None:
            return "no graphopt passes were run"
        return self.optimized.report

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        staged = self._per_thread.__dict__.get("staged_call")
        if staged is not None:
            outputs = staged(inputs, self.threads)
            if outputs is not None:
                return outputs
        arrays = checked_inputs(inputs, self.signature.input_specs)
        on_cpu = self.device_kind == "cpu"
        if on_cpu:
            configure_threads(self.threads)
        args = run_inputs(arrays, self.device, self._per_thread)
        if self.weights is not None:
            with self._weights_lock:
                if self._weight_tensors is None:
                    import tvm
                    self._weight_tensors = [tvm.runtime.tensor(a, self.device)
                                            for _, a in self.weights]
            args += self._weight_tensors
        main = self._main()
        args += self._per_thread.workspace
        result = main(*args)
        names = self.signature.output_name_tuple
        if on_cpu and staged is None:
            remember_staged_call(self._per_thread, self.signature.input_specs, arrays, main,
                                 args[len(arrays):], names)
        if len(names) == 1:
            return {names[0]: run_output(result, on_cpu)}
        return {name: run_output(a, on_cpu) for name, a in zip(names, result)}

    def _main(self):
        """The calling thread's VM entry point, looked up once per thread."""
        main = getattr(self._per_thread, "main", None)
        if main is None:
            vm = self.vm
            main = enter_vm(self._per_thread, vm, vm.module)
        return main

    __call__ = run

    def export(self, path: str) -> str:
        """Write a shared library that `go.load` (or `graphopt.runtime.load`, with only the TVM
        runtime) runs; CUDA exports embed the kernels built by nvcc for the target's arch."""
        from .export import export_model
        return export_model(self, path)

    def kernel_count(self) -> int:
        """Compiled TIR kernels (one per fused op group)."""
        return len(self.kernels)

    def __repr__(self) -> str:
        return (f"CompiledModel('{self.graph_name}', target={self.target!r}, "
                f"{self.kernel_count()} kernels)")


def tvm_error_summary(error: Exception) -> str:
    """The line of a TVM error that says what went wrong: the last one naming an error or a failed
    check, else the last line that is not a comment (TVM often ends with '# Metadata omitted')."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    telling = [ln for ln in lines if "Error" in ln or "Check failed" in ln]
    plain = [ln for ln in lines if not ln.startswith("#")]
    return (telling or plain or lines or [type(error).__name__])[-1][:500]


def kernel_schedules(lowered_module) -> dict[str, str]:
    """{kernel: how it was scheduled} for the TIR PrimFuncs of a lowered Relax module (each
    becomes one compiled kernel): a CPU schedule rule's name, "meta_schedule" for a tuned
    kernel, or "-" (CUDA: see the ScheduleReport)."""
    from tvm import tirx
    from .schedules import SCHEDULE_ATTR
    return {gv.name_hint: str(f.attrs.get(SCHEDULE_ATTR, "-")) if f.attrs else "-"
            for gv, f in sorted(lowered_module.functions.items(), key=lambda i: i[0].name_hint)
            if isinstance(f, tirx.PrimFunc)}


def compile_graph(graph: Graph, target: str = "cpu", options: CompileOptions | None = None,
                  **overrides) -> CompiledModel:
    """Run graphopt's pipeline for `target` on `graph`, lower the result to Relax and compile it:
    "cpu", "cuda" (sm_90) or "cuda:sm_<NN>" (CUDA compiles without a GPU; running it needs
    one). `options` (a `CompileOptions`) and keyword overrides of its fields say how: passes,
    mcpu, threads, tuning, kernels, weights, bounds_check (see `options.py`)."""
    options = CompileOptions.of(options, **overrides)
    import tvm
    verify(graph)
    start = time.perf_counter()
    optimized, tvm_target = optimize_for_target(graph, target, options)
    device_kind = "cuda" if tvm_target.kind.name == "cuda" else "cpu"
    if options.kernels == "onednn":
        if device_kind != "cpu":
            raise GraphoptError(f"kernels='onednn' is for the cpu target, found {target!r}")
        from .onednn import load
        load()   # registers the packed functions the compiled module calls
    lowered_graph = optimized.graph
    weights = None
    if options.weights == "params":
        mod, weights = to_relax(lowered_graph, weights="params")
    else:
        mod = to_relax(lowered_graph)
    offloaded = [f"{n.name}: {n.op}" for n in lowered_graph.nodes
                 if getattr(getattr(n.op, "conv", n.op), "algorithm", None) == "onednn"]
    schedule_report = None
    if device_kind == "cpu":
        from .tir_lowering import cpu_build_config
        config = cpu_build_config(options.bounds_check)
    else:
        config = {"tirx.instrument_bound_checkers": True} if options.bounds_check else {}
    try:
        with tvm.transform.PassContext(config=config):
            if device_kind == "cuda":
                from .cuda import ScheduleReport, cuda_pipeline, nvcc_compile_callback
                schedule_report = ScheduleReport()
                with tvm_target:
                    lowered = cuda_pipeline(tvm_target, schedule_report)(mod)
                with nvcc_compile_callback(tvm_target.arch):
                    executable = tvm.compile(lowered, target=tvm_target, relax_pipeline=None)
            else:
                from .cpu import cpu_pipeline
                from .tuning_database import load_database
                tuning_dir = options.tuning_dir()
                database = load_database(tvm_target, tuning_dir) if tuning_dir else None
                with tvm_target:
                    lowered = cpu_pipeline(tvm_target, database,
                                           onednn=options.kernels == "onednn",
                                           threads=options.build_thread_count)(mod)
                from .parallel_build import build_executable
                from .tir_lowering import cpu_tir_pipeline
                executable = build_executable(lowered, tvm_target, cpu_tir_pipeline(),
                                              options.build_thread_count)
    except Exception as e:  # TVM's own errors carry C++ context; keep the telling line
        raise LoweringError(f"TVM failed to compile graph '{graph.name}' for {target}: "
                            f"{type(e).__name__}: {tvm_error_summary(e)}") from e
    model = CompiledModel(executable, Signature.of(graph), target, tvm_target, device_kind,
                          graph.name, 0.0, kernel_schedules(lowered), schedule_report, weights,
                          offloaded, optimized, options)
    if device_kind == "cpu":
        # The first VM links the compiled code (seconds for big models): done here, so that
        # compile's time is the whole cost and the first run is as fast as the next ones.
        try:
            model.vm
        except ModelFormatError:
            pass    # compiled for another CPU (mcpu=): it runs there, after export
    model.compile_seconds = time.perf_counter() - start
    return model
