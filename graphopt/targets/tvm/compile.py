"""`compile_graph`: IR -> Relax -> a TVM executable, wrapped in a `CompiledModel` that runs with
numpy inputs and returns outputs keyed like the interpreter's."""
from __future__ import annotations

import time
from typing import Mapping

import numpy as np

from ...errors import GraphoptError, LoweringError
from ...ir import Graph
from ...signature import Signature
from ...verify import verify
from .lower import to_relax

TARGETS = ("cpu", "cuda", "cuda:sm_<NN>")
# Who computes the convolutions: graphopt's TVM schedules, or oneDNN called from the module.
KERNELS = ("tvm", "onednn")


def resolve_target(target: str):
    """A TVM Target and device kind for a graphopt target name."""
    if target in ("cpu", "llvm"):
        from .cpu import host_target
        return host_target(), "cpu"
    if target.split(":")[0] == "cuda":
        from .cuda import cuda_target, parse_cuda_target
        return cuda_target(parse_cuda_target(target)), "cuda"
    raise GraphoptError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")


class CompiledModel:
    """A graph compiled by TVM: `run(inputs) -> {output name: array}`."""

    def __init__(self, executable, signature: Signature, target: str, tvm_target, device_kind: str,
                 graph_name: str = "graph", compile_seconds: float = 0.0,
                 kernels: list[str] | None = None, schedule_report=None,
                 weights: list | None = None, offloaded: list[str] | None = None):
        self.executable, self.signature = executable, signature
        self.kernels = kernels or []
        # CUDA only: the dlight rule each kernel got (a `cuda.ScheduleReport`).
        self.schedule_report = schedule_report
        # With weights="params": [(name, array)], passed after the inputs on every call.
        self.weights = weights
        self._weight_tensors = None
        # With kernels="onednn": the convolutions sent to oneDNN (one line each).
        self.offloaded = offloaded or []
        self.target, self.tvm_target, self.device_kind = target, tvm_target, device_kind
        self.graph_name, self.compile_seconds = graph_name, compile_seconds
        self._vm = None

    @property
    def device(self):
        import tvm
        return tvm.cpu() if self.device_kind == "cpu" else tvm.cuda()

    @property
    def vm(self):
        if self._vm is None:
            from tvm import relax
            self._vm = relax.VirtualMachine(self.executable, self.device)
        return self._vm

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tvm
        feeds = self.signature.check(inputs)
        args = [tvm.runtime.tensor(feeds[name], self.device) for name in self.signature.input_names]
        if self.weights is not None:
            if self._weight_tensors is None:
                self._weight_tensors = [tvm.runtime.tensor(a, self.device) for _, a in self.weights]
            args += self._weight_tensors
        result = self.vm["main"](*args)
        arrays = [result] if len(self.signature.outputs) == 1 else list(result)
        return {name: a.numpy() for name, a in zip(self.signature.output_names, arrays)}

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


def kernel_names(lowered_module) -> list[str]:
    """The TIR PrimFuncs of a lowered Relax module: each becomes one compiled kernel."""
    from tvm import tirx
    return sorted(gv.name_hint for gv, f in lowered_module.functions.items()
                  if isinstance(f, tirx.PrimFunc))


def compile_graph(graph: Graph, target: str = "cpu", *,
                  weights: str = "embedded", kernels: str = "tvm") -> CompiledModel:
    """Lower `graph` to Relax and compile it for `target`: "cpu", "cuda" (sm_90) or
    "cuda:sm_<NN>" (CUDA compiles without a GPU; running it needs one). `weights="params"`
    keeps the weights out of the compiled code as parameters (see `weights.py`).
    `kernels="onednn"` (CPU) runs float32 convolutions with constant weights, with their bias,
    residual and activation, through oneDNN (see `onednn/`); the rest stays on TVM."""
    if weights not in ("embedded", "params"):
        raise GraphoptError(f"weights must be 'embedded' or 'params', found {weights!r}")
    if kernels not in KERNELS:
        raise GraphoptError(f"kernels must be one of {', '.join(map(repr, KERNELS))}, "
                            f"found {kernels!r}")
    tvm_target, device_kind = resolve_target(target)
    offloaded = None
    if kernels == "onednn":
        if device_kind != "cpu":
            raise GraphoptError(f"kernels='onednn' is for the cpu target, found {target!r}")
        from .onednn import load
        load()   # registers the packed functions the compiled module calls
        offloaded = []
    import tvm
    verify(graph)
    start = time.perf_counter()
    mod = to_relax(graph)
    lifted = None
    if weights == "params":
        from .weights import lift_weights
        mod, lifted = lift_weights(mod, graph)
    schedule_report = None
    try:
        if device_kind == "cuda":
            from .cuda import ScheduleReport, cuda_pipeline, nvcc_compile_callback
            schedule_report = ScheduleReport()
            with tvm_target:
                lowered = cuda_pipeline(tvm_target, schedule_report)(mod)
            with nvcc_compile_callback(tvm_target.arch):
                executable = tvm.compile(lowered, target=tvm_target, relax_pipeline=None)
        else:
            from .cpu import cpu_pipeline
            with tvm_target:
                lowered = cpu_pipeline(tvm_target, offload=offloaded)(mod)
            executable = tvm.compile(lowered, target=tvm_target, relax_pipeline=None)
    except Exception as e:  # TVM's own errors carry C++ context; keep the telling line
        raise LoweringError(f"TVM failed to compile graph '{graph.name}' for {target}: "
                            f"{type(e).__name__}: {tvm_error_summary(e)}") from e
    return CompiledModel(executable, Signature.of(graph), target, tvm_target, device_kind,
                         graph.name, time.perf_counter() - start, kernel_names(lowered),
                         schedule_report, lifted, offloaded)
