"""compare(..., per_layer=True): values lined up through provenance across folds and fusions, the
first divergent layer found after one weight is perturbed, and compiled candidates (probed)."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt import GraphoptError
from graphopt.passes import optimize, probe_inputs


@pytest.fixture(scope="module")
def resnet():
    g = go.zoo.resnet18(image_size=32, num_classes=10)
    return g, optimize(g).graph, probe_inputs(g)


def test_optimized_resnet_lines_up_and_agrees(resnet):
    g, opt, x = resnet
    rep = go.compare(g, opt, x, per_layer=True)
    assert rep.ok and rep.first_divergent is None
    names = [layer.name for layer in rep.layers]
    # Every fused group lines up with its last original node; its inner nodes have no match.
    assert "layer1.0.relu2" in names and "layer1.0.bn2" not in names and "fc" in names
    assert rep.layer("layer1.0.relu2").provenance == ("layer1.0.conv2", "layer1.0.bn2",
                                                      "layer1.0.add", "layer1.0.relu2")
    order = [n.name for n in g.topological_order()]
    assert names == sorted(names, key=order.index)
    assert "first divergent: none" in str(rep)


def _perturbed(graph, anchor: str):
    """A copy of `graph` in which the weight of the node computing `anchor` is 5% larger."""
    g = graph.copy()
    node = next(n for n in g.nodes if n.provenance[-1] == anchor)
    node.inputs[1].data = node.inputs[1].data * np.float32(1.05)
    return g


@pytest.mark.parametrize("anchor", ["layer1.1.relu1", "layer3.0.downsample.1", "fc"])
def test_a_perturbed_weight_in_the_optimized_graph_is_found(resnet, anchor):
    g, opt, x = resnet
    rep = go.compare(g, _perturbed(opt, anchor), x, per_layer=True)
    assert not rep.ok and rep.first_divergent == anchor
    first = [layer.name for layer in rep.layers].index(anchor)
    assert all(layer.ok for layer in rep.layers[:first])


def test_a_perturbed_weight_inside_a_fused_group_is_reported_at_the_group(resnet):
    g, opt, x = resnet
    reference = g.copy()
    w = reference.node("layer2.0.conv2").inputs[1]
    w.data = w.data * np.float32(1.05)
    rep = go.compare(reference, opt, x, per_layer=True)
    assert rep.first_divergent == "layer2.0.relu2"
    assert "layer2.0.conv2" in rep.layer("layer2.0.relu2").provenance


def test_per_layer_needs_the_candidate_graph(resnet):
    g, opt, x = resnet

    class Outputs:      # a compiled or loaded model exposes nothing but its outputs
        def run(self, inputs):
            return go.interpret(opt, inputs)
    assert go.compare(g, Outputs(), x).ok
    with pytest.raises(GraphoptError, match="needs the candidate as a Graph"):
        go.compare(g, Outputs(), x, per_layer=True)


def test_first_divergent_needs_per_layer(resnet):
    g, opt, x = resnet
    with pytest.raises(GraphoptError, match="per_layer=True"):
        go.compare(g, opt, x).first_divergent


def test_compiled_candidate_is_probed_at_every_lined_up_layer():
    with go.dsl.Builder("block", seed=0) as b:
        x = b.input("input", (1, 4, 8, 8))
        y = go.dsl.relu(go.dsl.batch_norm(go.dsl.conv2d(x, 4, 3, padding=1, bias=False)))
        y = go.dsl.batch_norm(go.dsl.conv2d(y, 4, 3, padding=1, bias=False))
        y = go.dsl.relu(go.dsl.add(y, x))
        g = b.output(go.dsl.max_pool2d(y, 2))
    opt = optimize(g).graph
    x = probe_inputs(g)
    rep = go.compare(g, opt, x, per_layer=True, target="cpu")
    assert rep.ok and len(rep.layers) == 3 and rep.first_divergent is None
    w = next(n for n in opt.topological_order() if n.op_name == "fused_conv2d").inputs[1]
    w.data = w.data * np.float32(1.05)
    rep = go.compare(g, opt, x, per_layer=True, target="cpu")
    assert rep.first_divergent == rep.layers[0].name


@pytest.fixture(scope="module")
def quantized_convnet():
    g = go.zoo.deep_convnet(batch=2)
    rng = np.random.default_rng(0)
    batches = [{"input": rng.standard_normal((2, 1, 28, 28)).astype(np.float32)}
               for _ in range(4)]
    return g, go.quantize(g, go.calibrate(g, batches)).graph, batches[0]


def test_int8_layers_are_read_as_the_real_values_they_stand_for(quantized_convnet):
    """Integer values are dequantized with their own scale and zero point (max pools on
    integers with their input's), and a linear layer computed as a 1x1 convolution lines up."""
    g, q, x = quantized_convnet
    rep = go.compare(g, q, x, per_layer=True)
    assert rep.ok and rep.first_divergent is None, rep.layer_table()
    names = [layer.name for layer in rep.layers]
    assert names == ["relu1", "relu2", "pool1", "relu3", "relu4", "pool2", "relu5", "relu6",
                     "pool3", "relu7", "fc2"]
    assert {layer.op for layer in rep.layers} == {"qlinear_conv2d", "max_pool2d", "reshape"}
    assert all(0 < layer.max_rel < 0.1 and layer.cosine > 0.999 for layer in rep.layers)


def test_a_wrong_scale_in_an_int8_graph_is_found(quantized_convnet):
    g, q, x = quantized_convnet
    broken = q.copy()
    conv = next(n for n in broken.nodes if n.provenance[-1] == "relu4")
    conv.inputs[4].data = conv.inputs[4].data * np.float32(4)     # the weight scales
    rep = go.compare(g, broken, x, per_layer=True)
    assert rep.first_divergent == "relu4"


def test_integer_outputs_of_quantizing_graphs_may_differ_by_one_step():
    """x * 0.1 quantized: the float64 reference and a float32 run round values next to a tie
    differently; one step is allowed there, two are not, and integer outputs of graphs that do
    not quantize stay exact."""
    c = np.float32(0.1)
    ties = ((np.arange(64) + 0.5) / np.float64(c)).astype(np.float32)
    x = np.concatenate([np.nextafter(ties, np.float32(1e9)), ties])
    with go.dsl.Builder("tie") as b:
        v = b.input("x", x.shape)
        scaled = go.dsl.mul(v, b.constant("c", c))
        one, zero = b.constant("scale", np.float32(1)), b.constant("zp", np.uint8(0))
        g = b.output(b.apply(go.ops.QuantizeLinear(), [scaled, one, zero]), names=["y"])
    in64 = go.interpret(g, {"x": x}, dtype=np.float64)["y"]
    in32 = go.interpret(g, {"x": x})["y"]
    assert 0 < np.count_nonzero(in64 != in32) and np.abs(in64.astype(int) - in32).max() == 1
    rep = go.compare(g, g, {"x": x})
    assert rep.ok and rep.outputs[0].steps == 1 and "1 step" in str(rep)
    shifted = g.copy()
    shifted.value("zp").data = np.uint8(2)
    assert not go.compare(g, shifted, {"x": x}).ok
    assert go.compare(g, g, {"x": x}, tolerance=0).outputs[0].steps == 0
