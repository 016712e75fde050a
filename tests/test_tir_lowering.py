"""graphopt's CPU lowering (targets/tvm/tir_lowering.py): kernel buffers on the stack, within a
budget, and the same outputs."""
import numpy as np
import pytest

pytest.importorskip("tvm")

import tvm  # noqa: E402

import graphopt as go  # noqa: E402
from graphopt.frontends import dsl  # noqa: E402
from graphopt.targets.tvm.cpu import cpu_assembly  # noqa: E402
from graphopt.targets.tvm.tir_lowering import ON_STACK, on_stack  # noqa: E402


def _depthwise_graph():
    """A depthwise conv whose per-channel input copy (56x56 padded, 13 KB) is allocated inside
    its parallel loop over channels."""
    with dsl.Builder("depthwise", seed=1) as b:
        x = b.input("x", (1, 32, 56, 56))
        return b.output(dsl.relu6(dsl.conv2d(x, 32, 3, padding=1, groups=32)))


def test_buffers_inside_parallel_loops_are_not_workspace_calls():
    model = go.compile(_depthwise_graph(), "cpu", threads=1, mcpu="skylake-avx512")
    assert "depthwise" in set(model.schedules.values()), model.schedules
    assert "TVMBackendAllocWorkspace" not in cpu_assembly(model.executable)


@pytest.mark.parametrize("bounds_check", [False, True], ids=["", "bounds_checked"])
def test_stack_buffers_compute_the_same(bounds_check):
    graph = _depthwise_graph()
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 32, 56, 56)).astype(np.float32)}
    report = go.compare(graph, go.compile(graph, "cpu", bounds_check=bounds_check), feeds)
    assert report.ok, str(report)


def test_stack_budget_bounds_the_buffers_marked():
    """Buffers are marked in program order while they fit the budget together; one over the
    budget, of a size only known at run time, or empty (a zero-size batch), is left to TVM."""
    from tvm.script import tirx as T

    @T.prim_func
    def four_buffers(a: T.Buffer((4096,), "float32"), n: T.int32):
        small = T.alloc_buffer((1024,), "float32")      # 4 KiB
        large = T.alloc_buffer((16384,), "float32")     # 64 KiB
        dynamic = T.alloc_buffer((n,), "float32")
        empty = T.alloc_buffer((0,), "float32")
        for i in range(1024):
            small[i] = a[i]
        for i in range(16384):
            large[i] = small[i % 1024]
        for i in range(n):
            dynamic[i] = large[i]
        for i in range(4096):
            a[i] = dynamic[i]
        for i in range(0):
            empty[i] = a[i]

    marked = {}

    def collect(alloc):
        marked[alloc.buffer.name] = ON_STACK in alloc.annotations
        return alloc

    import tvm_ffi
    tvm_ffi.structural_map(on_stack(four_buffers, budget=32 * 1024),
                           (tvm.tirx.AllocBuffer, collect))
    assert marked == {"small": True, "large": False, "dynamic": False, "empty": False}, marked
