"""bfloat16 linear layers and matmuls by a constant on AVX512-BF16's vdpbf16ps
(schedules/dense_bf16.py): which CPUs' builds choose it, the packed weight's layout, that the
instruction is in the code built for a CPU that has it (on any x86 host), and, where this host
has AVX512-BF16, that the kernel computes what the interpreter does over a table of shapes
(one row or several, odd depths, columns not in whole registers, bias or none, epilogues):
float32 sums in another order, then one rounding to bfloat16."""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import pytest

import graphopt as go
from graphopt import dsl
from graphopt.errors import GraphoptError
from graphopt.ops.linear import Linear

pytest.importorskip("tvm")

from graphopt.targets.tvm.compile import optimize_for_target  # noqa: E402
from graphopt.targets.tvm.cpu import cpu_assembly  # noqa: E402
from graphopt.targets.tvm.options import CompileOptions  # noqa: E402
from graphopt.targets.tvm.schedules import dense_bf16  # noqa: E402

from test_conv_bf16 import BF16_CPU, INSTRUCTION, host_has_bf16  # noqa: E402


@dataclass(frozen=True)
class Case:
    id: str
    rows: int
    depth: int
    columns: int
    bias: bool = True
    activation: str | None = None
    matmul: bool = False       # a matmul by a constant instead of a linear layer


CASES = [
    Case("lenet-fc1-tanh", 1, 400, 120, activation="tanh"),
    Case("lenet-fc3-10-columns", 1, 84, 10),
    Case("odd-depth-33-to-17-rows-3", 3, 33, 17, activation="relu"),
    Case("depth-1", 2, 1, 24),
    Case("rows-8-wide-no-bias", 8, 64, 300, bias=False),
    Case("rows-5-in-parallel", 5, 512, 512, activation="sigmoid"),
    Case("matmul-by-constant", 4, 48, 40, matmul=True),
]


def dense_graph(case: Case):
    """One layer as go.quantize makes it bfloat16: float32 at the graph's edges."""
    with dsl.Builder(f"bf16_{case.id}".replace("-", "_"), seed=0) as b:
        x = b.input("input", (case.rows, case.depth))
        if case.matmul:
            y = dsl.matmul(x, dsl.parameter("weight", (case.depth, case.columns)))
        else:
            y = dsl.linear(x, case.columns, bias=case.bias, name="fc")
        if case.activation:
            y = getattr(dsl, case.activation)(y)
        graph = b.output(y)
    return go.quantize(graph, "bfloat16").graph


def product(graph):
    [node] = [n for n in graph.nodes if n.op_name in ("linear", "matmul")]
    return node.op


def chosen_for(graph, mcpu: str) -> tuple[str, int]:
    op = product(optimize_for_target(graph, "cpu", CompileOptions(mcpu=mcpu))[0].graph)
    return op.algorithm, op.weight_block


def test_only_bf16_cpus_without_amx_take_vdpbf16ps():
    """AVX512-BF16 without AMX (Cooper Lake, Zen 4): "dpbf16" in whole 16-lane registers. With
    AMX-BF16 (Sapphire Rapids), on AVX-512 without BF16 and on AVX2 the layer keeps the
    float32 kernel; a float32 layer never takes it."""
    graph = dense_graph(CASES[0])
    algorithm, block = chosen_for(graph, BF16_CPU)
    assert algorithm == dense_bf16.ALGORITHM and block % 16 == 0
    assert chosen_for(graph, "znver4")[0] == dense_bf16.ALGORITHM
    for mcpu in ("sapphirerapids", "cascadelake", "znver3"):
        assert chosen_for(graph, mcpu)[0] == "", mcpu
    with dsl.Builder("fp32", seed=0) as b:
        fp32 = b.output(dsl.linear(b.input("input", (1, 400)), 120))
    assert chosen_for(fp32, BF16_CPU)[0] == ""


def test_weights_streamed_from_memory_keep_the_widened_kernel(monkeypatch):
    """A product of few rows whose weight is beyond the last-level cache reads it from memory
    at either kernel's speed and keeps the widened one; with more rows it takes vdpbf16ps."""
    # the module (the package's name of the same spelling is the pass)
    select_dense_layout = importlib.import_module(
        "graphopt.targets.tvm.passes.select_dense_layout")
    monkeypatch.setattr(select_dense_layout, "STREAMED_MIN_WEIGHT_BYTES", 400 * 120 * 2 - 1)
    assert chosen_for(dense_graph(CASES[0]), BF16_CPU)[0] == ""
    rows = select_dense_layout.STREAMED_MAX_ROWS
    assert chosen_for(dense_graph(Case("rows", rows, 400, 120)), BF16_CPU)[0] == \
        dense_bf16.ALGORITHM


def test_packed_weight_holds_pairs_of_rows():
    """[K, N] -> [ceil(N / block), ceil(K / 2), block, 2] bits: element (j // block, k // 2,
    j % block, k % 2) is weight[k, j]; the odd row and the missing columns are zeros."""
    weight = np.random.default_rng(0).standard_normal((5, 20)).astype(ml_dtypes.bfloat16)
    packed = dense_bf16.pack_weight(weight, 16)
    assert packed.shape == (2, 3, 16, 2) and packed.dtype == np.uint16
    bits = weight.view(np.uint16)
    for k, j in [(0, 0), (1, 3), (4, 17), (3, 19)]:
        assert packed[j // 16, k // 2, j % 16, k % 2] == bits[k, j]
    assert not packed[:, 2, :, 1].any() and not packed[1, :, 4:].any()
    with pytest.raises(GraphoptError, match="bfloat16 weight"):
        dense_bf16.pack_weight(weight.astype(np.float32), 16)
    with pytest.raises(GraphoptError, match="16-column"):
        dense_bf16.pack_weight(weight, 24)


def test_an_algorithm_needs_a_known_name_and_a_weight_block():
    with pytest.raises(GraphoptError, match="algorithm"):
        Linear(weight_block=16, algorithm="vnni")
    with pytest.raises(GraphoptError, match="weight_block"):
        Linear(algorithm="dpbf16")
    assert "dpbf16" in Linear(weight_block=32, algorithm="dpbf16").target_choice()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_vdpbf16ps_products_compute_what_the_interpreter_does(case):
    """Built for an AVX512-BF16 CPU without AMX (on any x86 host) with bounds checks: the layer
    takes "dpbf16", its kernel the dense_bf16 rule and vdpbf16ps is in the code; where this
    host can run it, the outputs are the interpreter's within one rounding, on two inputs."""
    graph = dense_graph(case)
    model = go.compile(graph, "cpu", mcpu=BF16_CPU, bounds_check=True)
    assert product(model.graph).algorithm == dense_bf16.ALGORITHM
    assert list(model.schedules.values()).count(dense_bf16.NAME) == 1
    assert re.search(INSTRUCTION, cpu_assembly(model.executable))
    if not host_has_bf16():
        pytest.skip(f"this CPU has no avx512_bf16: the {BF16_CPU} build is compile-checked only")
    for seed in (1, 2):
        inputs = {"input": np.random.default_rng(seed).standard_normal(
            (case.rows, case.depth)).astype(np.float32)}
        found, reference = model.run(inputs), go.interpret(graph, inputs)
        for name in reference:
            assert_within_one_rounding(found[name], reference[name])


def assert_within_one_rounding(found: np.ndarray, expected: np.ndarray) -> None:
    """Within one bfloat16 rounding (2^-8 relative, doubled for a value near a rounding
    boundary) of the largest expected output, an rms difference under half of one. Not
    mostly identical, as the convolutions' outputs are: TVM computes the layer's epilogue and
    the cast to the float32 output in float32 and stores no bfloat16 value in between, so the
    kernel does not round where the interpreter does (the float32 rule's kernels alike)."""
    found, expected = found.astype(np.float64), expected.astype(np.float64)
    scale = float(np.abs(expected).max())
    assert np.abs(found - expected).max() <= scale * 2 ** -7
    assert np.sqrt(np.mean((found - expected) ** 2)) <= scale * 2 ** -9


def test_exported_bf16_lenet_runs_with_only_the_runtime(tmp_path):
    """bfloat16 LeNet-5 built for an AVX512-BF16 CPU: its convolutions and linear layers on
    vdpbf16ps, kernels in several parts of one library (each importing the instruction's
    wrapper); exported, it runs in a fresh process with only the runtime (where this host has
    AVX512-BF16) as the compiled model does, at one and two threads."""
    from test_export import run_with_only_the_runtime
    graph = go.quantize(go.zoo.lenet5(batch=1, seed=0), "bfloat16").graph
    model = go.compile(graph, "cpu", mcpu=BF16_CPU, threads=2)
    assert list(model.schedules.values()).count(dense_bf16.NAME) == 3
    path = str(tmp_path / "lenet5_bf16.so")
    model.export(path)
    if not host_has_bf16():
        pytest.skip(f"this CPU has no avx512_bf16: the {BF16_CPU} library is export-checked only")
    inputs = {"input": np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(
        np.float32)}
    expected = model.run(inputs)
    for threads in (1, 2):
        found = run_with_only_the_runtime(path, inputs, tmp_path / str(threads), threads)
        for name in expected:
            np.testing.assert_array_equal(found[name], expected[name])
