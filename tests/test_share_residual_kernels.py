"""share_residual_kernels: Winograd convs that differ only in their residual (a ResNet basic
block's two 3x3 convs) run one kernel with a run-time residual switch; the same outputs as the
interpreter, bounds-checked."""
from __future__ import annotations

import dataclasses

import pytest

import graphopt as go
from conftest import skip_unless_this_cpu_runs
from graphopt.errors import GraphoptError
from graphopt.frontends import dsl
from graphopt.ops.conv import Conv2d
from graphopt.ops.fused import FusedConv2d
from graphopt.signature import probe_inputs
from graphopt.verify import verify

pytest.importorskip("tvm")

from graphopt.passes import DEFAULT_PIPELINE  # noqa: E402
from graphopt.targets.tvm.compile import optimize_for_target  # noqa: E402
from graphopt.targets.tvm.options import CompileOptions  # noqa: E402
from graphopt.targets.tvm.passes import TARGET_PASSES  # noqa: E402

AVX512_CPU = "skylake-avx512"   # F(4x4) from 64 channels on planes of 28x28 and more


def basic_block(channels: int = 64, side: int = 28, out_channels: int | None = None):
    """x -> conv3x3 + relu -> conv3x3 + residual + relu (a projection where the channels
    change)."""
    out_channels = out_channels or channels
    with dsl.Builder("basic_block", seed=3) as b:
        x = b.input("x", (1, channels, side, side))
        y = dsl.relu(dsl.conv2d(x, out_channels, 3, padding=1, name="conv1"))
        y = dsl.conv2d(y, out_channels, 3, padding=1, name="conv2")
        shortcut = x if out_channels == channels else dsl.conv2d(x, out_channels, 1, name="down")
        return b.output(dsl.relu(y + shortcut))


def fused_convs(graph):
    return [n for n in graph.nodes if n.op_name == "fused_conv2d"]


def target_graph(graph, **options):
    return optimize_for_target(graph, "cpu", CompileOptions(mcpu=AVX512_CPU, **options))[0].graph


def winograd_kernels(model) -> int:
    return sum(rule == "winograd" for rule in model.schedules.values())


def test_a_basic_blocks_two_convs_share_one_winograd_kernel():
    graph = basic_block()
    convs = fused_convs(target_graph(graph))
    assert [(c.op.has_residual, c.op.optional_residual, c.op.conv.algorithm) for c in convs] == \
        [(False, True, "winograd"), (True, True, "winograd")]
    assert "residual switched at run time" in convs[0].op.target_choice()
    model = go.compile(graph, mcpu=AVX512_CPU, bounds_check=True)
    assert winograd_kernels(model) == 1
    skip_unless_this_cpu_runs(model)
    assert go.compare(graph, model, probe_inputs(graph)).ok


def test_without_the_pass_each_epilogue_builds_its_own_kernel():
    """The same compile with every target pass but this one: two Winograd kernels."""
    others = [name for name in TARGET_PASSES["cpu"] if name != "share_residual_kernels"]
    model = go.compile(basic_block(), mcpu=AVX512_CPU, target_passes=False,
                       passes=[*DEFAULT_PIPELINE, *others])
    assert not any(c.op.optional_residual for c in fused_convs(model.graph))
    assert winograd_kernels(model) == 2


@pytest.mark.parametrize("graph, why", [
    (basic_block(64, 28, out_channels=128), "the input has other channels than the output"),
    (basic_block(16, 28), "too few channels for Winograd: the direct rule's kernels stay"),
])
def test_convs_that_keep_their_own_kernels(graph, why):
    assert not any(c.op.optional_residual for c in fused_convs(target_graph(graph))), why


def test_convs_without_a_sibling_keep_their_own_kernels():
    """Two relu-only Winograd convs: nothing to share with a residual conv."""
    with dsl.Builder("plain", seed=4) as b:
        x = b.input("x", (1, 64, 28, 28))
        y = dsl.relu(dsl.conv2d(x, 64, 3, padding=1))
        graph = b.output(dsl.relu(dsl.conv2d(y, 64, 3, padding=1)))
    assert not any(c.op.optional_residual for c in fused_convs(target_graph(graph)))


@pytest.mark.parametrize("algorithm", ["direct", "winograd"])
def test_either_switch_computes_the_interpreters_outputs(algorithm):
    """The decision recorded by hand on a direct conv too: the kernel is lowered from the op."""
    graph = basic_block()
    optimized = target_graph(graph, target_passes=False, passes=DEFAULT_PIPELINE)
    conv = Conv2d(padding=(1, 1, 1, 1), algorithm="direct", weight_block=16) \
        if algorithm == "direct" else \
        Conv2d(padding=(1, 1, 1, 1), algorithm="winograd", output_tile=4, weight_block=32)
    for node in fused_convs(optimized):
        node.op = dataclasses.replace(node.op, conv=conv, optional_residual=True)
    model = go.compile(optimized, mcpu=AVX512_CPU, passes=(), target_passes=False,
                       bounds_check=True)
    assert winograd_kernels(model) == (algorithm == "winograd")
    assert len(model.kernels) == 1
    skip_unless_this_cpu_runs(model)
    assert go.compare(graph, model, probe_inputs(graph, 1)).ok


def test_an_optional_residual_needs_an_input_of_the_outputs_type():
    graph = target_graph(basic_block(64, 28, out_channels=128))
    node = fused_convs(graph)[0]
    node.op = dataclasses.replace(node.op, optional_residual=True)
    with pytest.raises(GraphoptError, match=f"{node.name}.*stand in for the optional residual"):
        verify(graph)


def test_no_optional_residual_on_onednn():
    with pytest.raises(GraphoptError, match="onednn"):
        FusedConv2d(conv=Conv2d(algorithm="onednn"), optional_residual=True)


def test_on_the_host_the_outputs_match_whatever_it_chooses():
    graph = basic_block(128, 14)
    assert go.compare(graph, go.compile(graph, bounds_check=True), probe_inputs(graph, 2)).ok
