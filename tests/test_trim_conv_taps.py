"""trim_conv_taps: kernel rows and columns that read only padding are removed with that padding;
the trimmed graph computes what the original does (checked against the interpreter on random
inputs by the pass manager), and convs whose every tap reads the plane are left alone."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt.frontends import dsl

# name -> (input shape, layer, expected weight shape after the pass, expected padding)
CASES = {
    "aspp_rate_12_on_4x4": ((1, 8, 4, 4), lambda x: dsl.conv2d(x, 4, 3, padding=12, dilation=12),
                            (4, 8, 1, 1), (0, 0, 0, 0)),
    "aspp_rate_36_with_bias_relu": ((1, 8, 5, 3), lambda x: dsl.relu(dsl.conv2d(
        x, 6, 3, padding=36, dilation=36)), (6, 8, 1, 1), (0, 0, 0, 0)),
    "rows_only": ((1, 4, 2, 9), lambda x: dsl.conv2d(x, 4, 3, padding=(3, 1), dilation=(3, 1)),
                  (4, 4, 1, 3), (0, 1, 0, 1)),
    "stride_2_big_padding": ((1, 4, 6, 6), lambda x: dsl.conv2d(x, 4, 5, stride=2, padding=8,
                                                               dilation=4),
                             (4, 4, 3, 3), (4, 4, 3, 3)),   # taps 1-3 of 5 read the plane
    "grouped": ((1, 8, 3, 3), lambda x: dsl.conv2d(x, 8, 3, padding=6, dilation=6, groups=4),
                (8, 2, 1, 1), (0, 0, 0, 0)),
}


def _graph(name):
    shape, layer, _, _ = CASES[name]
    with dsl.Builder(name, seed=1) as b:
        return b.output(layer(b.input("x", shape)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_trimmed_conv_computes_the_same(name):
    graph = _graph(name)
    result = go.optimize(graph, "trim_conv_taps", check=True)
    convs = [n for n in result.graph.nodes if n.op_name == "conv2d"]
    assert len(convs) == 1
    _, _, weight_shape, padding = CASES[name]
    assert convs[0].inputs[1].shape == weight_shape
    assert convs[0].op.padding == padding
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal(graph.inputs[0].shape).astype("float32")}
    np.testing.assert_allclose(go.interpret(result.graph, feeds)[graph.output_names[0]],
                               go.interpret(graph, feeds)[graph.output_names[0]], atol=1e-5)


@pytest.mark.parametrize("layer", [
    lambda x: dsl.conv2d(x, 4, 3, padding=1),
    lambda x: dsl.conv2d(x, 4, 3, padding=2, dilation=2),
    lambda x: dsl.conv2d(x, 4, 1),
], ids=["plain", "dilated_all_live", "1x1"])
def test_convs_reading_the_plane_with_every_tap_stay(layer):
    with dsl.Builder("live", seed=1) as b:
        graph = b.output(layer(b.input("x", (1, 4, 6, 6))))
    assert not go.optimize(graph, "trim_conv_taps").records[0].changed


def test_deeplab_aspp_branches_become_1x1():
    graph = go.zoo.deeplabv3_mobilenet_v3_large(image_size=64)
    optimized = go.optimize(graph).graph
    aspp = [n for n in optimized.nodes if "convs" in n.name and n.op_name.endswith("conv2d")]
    kernels = sorted(n.inputs[1].shape[2:] for n in aspp)
    assert kernels == [(1, 1)] * len(kernels), kernels
