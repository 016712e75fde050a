"""Where a compiled model spends its time, kernel by kernel, and where ONNX Runtime spends it on
graphopt's ONNX export of the same graph, node by node.

Kernels are timed through the Relax VM's instrument hook: each kernel call of one run of the
model is repeated right after it returns, on the same arguments, and its median time kept (the
hook sees the kernel's function and arguments; TVM's VM profiler is not built into the wheel).
A kernel is lined up with the graphopt node it computes by order and shapes: the lowering emits
one kernel per node with MACs, in topological order, reading the node's input and writing its
output."""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np

from ..analysis import node_macs
from ..errors import GraphoptError
from ..ir import Graph, Node
from ..timing import median_ms


# Where ONNX Runtime's own exception types live (Fail, NotImplemented, InvalidGraph, ...; each
# derives from Exception directly).
ORT_ERRORS = "onnxruntime.capi.onnxruntime_pybind11_state"


@dataclass(frozen=True)
class KernelTime:
    """One kernel call of a run of the compiled model."""

    kernel: str              # the compiled function's name
    rule: str                # the schedule rule it got ("-" if none recorded)
    ms: float                # median time of the call
    node: str | None         # the graphopt node with MACs it computes, if any
    op: str | None
    macs: int

    @property
    def gflops(self) -> float | None:
        """Achieved GFLOP/s (2 flops per multiply-accumulate), for kernels with MACs."""
        return 2 * self.macs / (self.ms * 1e6) if self.macs and self.ms > 0 else None

    def to_dict(self) -> dict:
        return {**asdict(self), "gflops": self.gflops}


@dataclass(frozen=True)
class NodeTime:
    """One node of ONNX Runtime's profile: its mean time over the profiled runs."""

    node: str
    op: str
    ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def kernel_times(model, inputs: Mapping[str, np.ndarray], repeat: int = 20) -> list[KernelTime]:
    """Every kernel call of one run of the CPU `model` (a CompiledModel), in call order."""
    model.run(inputs)        # warm: the VM is made and the kernels' code is paged in
    calls: list[tuple[str, float, list[tuple[int, ...]]]] = []

    def instrument(func, symbol, before_run, result, *args):
        if not before_run and symbol in model.schedules:
            shapes = [tuple(a.shape) for a in args if hasattr(a, "shape")]
            calls.append((symbol, median_ms(lambda: func(*args), repeat), shapes))
        return 0             # VMInstrumentReturnKind.NO_OP: carry on

    vm = model.vm
    vm.set_instrument(instrument)
    try:
        model.run(inputs)
    finally:
        vm.set_instrument(None)
    nodes = [n for n in model.graph.topological_order() if node_macs(n)] if model.graph else []
    timed = []
    for symbol, ms, shapes in calls:
        node = claim(nodes, shapes)
        timed.append(KernelTime(symbol, model.schedules.get(symbol, "-"), ms,
                                node.name if node else None, node.op_name if node else None,
                                node_macs(node) if node else 0))
    return timed


def claim(nodes: list[Node], shapes: list[tuple[int, ...]]) -> Node | None:
    """Remove and return the first of `nodes` that reads the kernel's first argument's shape and
    writes its last one's (None if none does), the planes compared flattened: a pointwise conv's
    kernel reads and writes [N, C, H * W]."""
    if len(shapes) < 2:
        return None
    first, last = _flat_planes(shapes[0]), _flat_planes(shapes[-1])
    for i, node in enumerate(nodes):
        if _flat_planes(node.inputs[0].shape) == first and \
                _flat_planes(node.outputs[0].shape) == last:
            return nodes.pop(i)
    return None


def _flat_planes(shape: tuple[int, ...]) -> tuple[int, ...]:
    """(N, C, H, W, ...) as (N, C, H * W * ...); shorter shapes as they are."""
    shape = tuple(shape)
    return shape if len(shape) <= 3 else shape[:2] + (math.prod(shape[2:]),)


def onnxruntime_times(graph: Graph, inputs: Mapping[str, np.ndarray], runs: int = 10,
                      threads: int | None = None) -> list[NodeTime]:
    """ONNX Runtime's per-node profile (SessionOptions.enable_profiling) of graphopt's ONNX
    export of `graph`, on the CPU with ORT's default graph optimizations: each node's mean time
    over `runs` runs after a warm-up run, the slowest first."""
    import onnxruntime
    from ..frontends.onnx import save_onnx
    model = save_onnx(graph).SerializeToString()
    with tempfile.TemporaryDirectory(prefix="graphopt-ort-") as folder:
        options = onnxruntime.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "profile")
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        feeds = {name: np.asarray(array) for name, array in inputs.items()}
        try:
            session = onnxruntime.InferenceSession(model, options,
                                                   providers=["CPUExecutionProvider"])
            for _ in range(runs + 1):
                session.run(None, feeds)
        except Exception as e:
            if type(e).__module__ != ORT_ERRORS:
                raise
            raise GraphoptError(f"ONNX Runtime cannot run graphopt's export of graph "
                                f"'{graph.name}': {str(e).strip().splitlines()[0]}") from e
        with open(session.end_profiling()) as f:
            events = json.load(f)
    durations: dict[tuple[str, str], list[float]] = defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            name = event["name"][:-len("_kernel_time")]
            durations[(name, event.get("args", {}).get("op_name", "?"))].append(event["dur"])
    times = [NodeTime(name, op, float(np.mean(found[1:] or found)) / 1e3)   # µs -> ms
             for (name, op), found in durations.items()]
    return sorted(times, key=lambda t: -t.ms)
