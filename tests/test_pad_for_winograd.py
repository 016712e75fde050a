"""pad_for_winograd: unpadded 3x3 convs that Winograd computes once padded become the padded
conv and a slice of its interior; the same outputs as the interpreter, bounds-checked."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from conftest import skip_unless_this_cpu_runs
from graphopt.frontends import dsl

pytest.importorskip("tvm")

from graphopt.targets.tvm.compile import optimize_for_target  # noqa: E402
from graphopt.targets.tvm.options import CompileOptions  # noqa: E402

AVX512_CPU = "skylake-avx512"   # F(4x4) from 64 channels on planes of 28x28 and more


def conv_graph(channels: int, side: int, residual: bool = False, padding: int = 0):
    with dsl.Builder("valid_conv", seed=7) as b:
        x = b.input("x", (1, channels, side, side))
        y = dsl.conv2d(x, channels, 3, padding=padding, name="conv")
        if residual:
            y = y + dsl.conv2d(x, channels, 3, name="other")
        return b.output(dsl.relu(y))


def target_graph(graph, **options):
    return optimize_for_target(graph, "cpu", CompileOptions(mcpu=AVX512_CPU, **options))[0].graph


def test_an_unpadded_conv_becomes_a_padded_winograd_conv_and_its_interior():
    graph = target_graph(conv_graph(64, 44))
    assert [n.op_name for n in graph.nodes] == ["fused_conv2d", "slice"]
    conv, interior = graph.nodes
    assert conv.op.conv.padding == (1, 1, 1, 1) and conv.op.conv.algorithm == "winograd"
    assert interior.output.shape == (1, 64, 42, 42)
    assert (interior.op.starts, interior.op.ends, interior.op.axes) == ((1, 1), (43, 43), (2, 3))


@pytest.mark.parametrize("graph, why", [
    (conv_graph(16, 44), "too few channels for Winograd"),
    (conv_graph(64, 30), "a border of 13 % of the padded plane"),
    (conv_graph(64, 44, padding=1), "already 'same'"),
])
def test_convs_the_rewrite_leaves_alone(graph, why):
    assert "slice" not in [n.op_name for n in target_graph(graph).nodes], why


def test_a_conv_with_a_residual_keeps_its_shape():
    """The residual added in the conv's epilogue has the unpadded output's shape: that conv
    stays; the conv computing the residual is rewritten."""
    nodes = target_graph(conv_graph(64, 44, residual=True)).nodes
    fused = [n for n in nodes if n.op_name == "fused_conv2d"]
    assert len(fused) == 1 and fused[0].op.has_residual
    assert fused[0].op.conv.padding == (0, 0, 0, 0)
    assert [n.op_name for n in nodes].count("slice") == 1


def test_no_rewrite_for_onednn_kernels_or_quantized_convs():
    graph = conv_graph(64, 44)
    assert "slice" not in [n.op_name for n in target_graph(graph, kernels="onednn").nodes]
    rng = np.random.default_rng(0)
    samples = [{"x": rng.standard_normal((1, 64, 44, 44)).astype(np.float32)} for _ in range(2)]
    int8 = go.quantize(graph, go.calibrate(graph, samples)).graph
    assert "slice" not in [n.op_name for n in target_graph(int8).nodes]


def test_the_rewritten_conv_computes_the_interpreters_outputs():
    graph = conv_graph(64, 46)
    model = go.compile(graph, mcpu=AVX512_CPU, bounds_check=True)
    assert "slice" in [n.op_name for n in model.graph.nodes]
    skip_unless_this_cpu_runs(model)
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 64, 46, 46)).astype(np.float32)}
    assert go.compare(graph, model, feeds).ok


def test_on_the_host_the_outputs_match_whatever_it_chooses():
    graph = conv_graph(32, 40)
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 32, 40, 40)).astype(np.float32)}
    assert go.compare(graph, go.compile(graph, bounds_check=True), feeds).ok
