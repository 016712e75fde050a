"""NaN in, NaN out: compiled relu, relu6, clip, leaky_relu, max pools (separable or not), global
max pool and the fused-conv epilogues keep a NaN where the interpreter (numpy's maximum and clip)
and ONNX Runtime keep it, instead of TIR's `max(x, 0)` (which is `x > 0 ? x : 0`) turning it
into 0 or a pool dropping it depending on where it sits in the window."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt import dsl
from conftest import assert_close

LAYERS = {
    "relu": lambda x: dsl.relu(x),
    "relu6": lambda x: dsl.relu6(x),
    "clip": lambda x: dsl.clip(x, -0.5, 0.5),
    "clip_min": lambda x: dsl.clip(x, min=-0.5),
    "leaky_relu": lambda x: dsl.leaky_relu(x, 0.1),
    "max_pool": lambda x: dsl.max_pool2d(x, 2),
    "max_pool_overlapping": lambda x: dsl.max_pool2d(x, 3, stride=1, padding=1),
    "global_max_pool": lambda x: dsl.global_max_pool2d(x),
    "conv_relu": lambda x: dsl.relu(dsl.conv2d(x, 8, 3, padding=1)),
    "conv_relu6": lambda x: dsl.relu6(dsl.conv2d(x, 8, 3, padding=1)),
    "conv_residual_relu": lambda x: dsl.relu(dsl.conv2d(x, 8, 1) + x),
}


def nan_graph():
    with dsl.Builder("nan", seed=0) as b:
        x = b.input("input", (1, 8, 6, 6))
        return b.output(*[layer(x) for layer in LAYERS.values()],
                        names=[f"out_{name}" for name in LAYERS])


def nan_input():
    x = np.random.default_rng(0).standard_normal((1, 8, 6, 6)).astype(np.float32)
    x[0, 0, 0, 0] = x[0, 3, 2, 5] = x[0, 7, 5, 5] = np.nan   # first, inside, last of a window
    return {"input": x}


@pytest.fixture(scope="module")
def graph_and_reference():
    graph = nan_graph()
    return graph, go.interpret(graph, nan_input())


@pytest.mark.parametrize("how", [{}, {"passes": (), "target_passes": False}],
                         ids=["default_pipeline", "unfused_unscheduled"])
def test_compiled_cpu_keeps_nan_where_the_interpreter_does(graph_and_reference, how):
    graph, reference = graph_and_reference
    compiled = go.compile(graph, "cpu", **how).run(nan_input())
    for name in LAYERS:
        expected, found = reference[f"out_{name}"], compiled[f"out_{name}"]
        assert np.isnan(expected).any(), name
        np.testing.assert_array_equal(np.isnan(found), np.isnan(expected), err_msg=name)
        keep = ~np.isnan(expected)
        assert_close(found[keep], expected[keep], rtol=1e-5, what=name)


def test_the_interpreter_agrees_with_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    with dsl.Builder("nan_ort", seed=0) as b:
        x = b.input("input", (1, 8, 6, 6))
        graph = b.output(dsl.relu(x), dsl.relu6(x), dsl.clip(x, -0.5, 0.5),
                         dsl.leaky_relu(x, 0.1))
    feeds = nan_input()
    session = ort.InferenceSession(go.save_onnx(graph).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    found = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    for name, expected in go.interpret(graph, feeds).items():
        np.testing.assert_array_equal(found[name], expected, err_msg=name)


@pytest.mark.parametrize("mcpu", ["skylake-avx512", "znver3"])   # AVX-512, AVX2
def test_max_pools_are_vector_code(mcpu):
    """TVM does not mark `isnan` vectorizable, so its vectorizer ran a NaN-propagating max pool
    a lane at a time, and on short rows LLVM re-vectorized the strided columns pass with
    gathers (16 ch 28x28, 2x2 stride 2, on Zen 4: 7.4 us, 1.1 as TVM's vector code)."""
    from graphopt.targets.tvm.cpu import cpu_assembly
    with dsl.Builder("pools", seed=0) as b:
        x = b.input("input", (1, 16, 28, 28))
        graph = b.output(dsl.max_pool2d(x, 2), dsl.max_pool2d(x, 3, stride=2, padding=1),
                         names=["unpadded", "padded"])
    model = go.compile(graph, "cpu", mcpu=mcpu)
    assembly = cpu_assembly(model.executable)
    assert "vmaxps" in assembly and "vgather" not in assembly
