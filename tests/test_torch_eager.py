"""PyTorch eager execution of graphs (the bundle's baseline) against the float64 interpreter."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt.compare import compare_arrays
from graphopt.errors import UnsupportedOpError
from graphopt import ops
from graphopt.frontends import dsl

pytest.importorskip("torch")
from graphopt.torch_eager import TorchEager  # noqa: E402


def check_against_interpreter(graph):
    feeds = {v.name: np.random.default_rng(0).standard_normal(v.shape).astype(v.dtype)
             for v in graph.inputs}
    found = TorchEager(graph)(feeds)
    for name, ref in go.interpret(graph, feeds, dtype=np.float64).items():
        result = compare_arrays(name, ref, found[name])
        assert result.ok, f"{graph.name} {name}: max rel {result.max_rel:.3g}"


def test_layers_with_asymmetric_padding_and_branches():
    with dsl.Builder("mixed", seed=2) as b:
        x = b.input("input", (2, 3, 15, 15))
        a = dsl.relu(dsl.batch_norm(dsl.conv2d(x, 4, kernel=3, stride=2, padding="same")))
        c = dsl.leaky_relu(dsl.conv2d(x, 4, kernel=3, stride=2, padding=1), 0.1)
        y = dsl.concat([a, c * 0.5], axis=1)
        y = dsl.avg_pool2d(dsl.max_pool2d(y, 2, ceil_mode=True), 2)
        graph = b.output(dsl.softmax(dsl.linear(dsl.flatten(y), 7)))
    check_against_interpreter(graph)


def test_a_zoo_model():
    check_against_interpreter(go.zoo.lenet5(batch=2))


def residual_block(batch: int = 2):
    with dsl.Builder("residual", seed=3) as b:
        x = b.input("input", (batch, 4, 8, 8))
        y = dsl.relu(dsl.batch_norm(dsl.conv2d(x, 4, kernel=3, padding=1)))
        y = dsl.batch_norm(dsl.conv2d(y, 4, kernel=3, padding=1, groups=2))
        y = dsl.relu6(dsl.conv2d(dsl.relu(y + x), 6, kernel=1))
        y = dsl.leaky_relu(dsl.conv2d(y, 6, kernel=3, padding=(0, 0, 1, 1)), 0.2)
        return b.output(dsl.linear(dsl.reshape(y, (batch, -1)), 5))


def test_fused_convolutions():
    fused = go.optimize(residual_block()).graph
    epilogues = {str(n.op) for n in fused.nodes if n.op_name == "fused_conv2d"}
    assert any("add" in e for e in epilogues) and len(epilogues) == 4, epilogues
    check_against_interpreter(fused)


def test_forward_differentiates_through_replaced_weights():
    """`forward` outside inference mode records autograd through the weights given in place of
    the constants: its gradients agree with finite differences (float64, fused graph)."""
    import torch
    graph = go.optimize(residual_block()).graph
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 4, 8, 8)))
    weights = {name: torch.from_numpy(c.data.astype(np.float64))
               for name, c in graph.constants.items()}
    trained = [n.inputs[i].name for n in graph.nodes if n.op_name == "fused_conv2d"
               for i in range(1, len(n.inputs)) if n.inputs[i].is_constant][:4]

    def logits(*tensors):
        forward = TorchEager(graph, weights={**weights, **dict(zip(trained, tensors))})
        return forward.forward({"input": x})[0]

    tensors = [weights[name].clone().requires_grad_() for name in trained]
    assert torch.autograd.gradcheck(logits, tensors)
    assert not TorchEager(graph).run_tensors({"input": x.float()})[0].requires_grad


def test_ops_without_a_torch_form_are_named():
    from graphopt.ir import Graph, TensorType
    graph = Graph("quantized")
    x = graph.add_input("input", TensorType((1, 2, 4, 4)))
    node = graph.add_node(ops.QuantizeLinear(), [x, graph.add_constant("scale", np.float32(0.1)),
                                                 graph.add_constant("zero", np.uint8(128))],
                          name="q")
    graph.set_outputs(node.outputs)
    with pytest.raises(UnsupportedOpError, match="node 'q' .*no torch eager form"):
        TorchEager(graph)


def one_node(op, shapes, constants=(), dtype="float32"):
    """A graph of `op` on inputs of `shapes` (float32 or `dtype`), then constant inputs, every
    output a graph output."""
    from graphopt.ir import Graph, TensorType
    graph = Graph(op.name)
    inputs = [graph.add_input(f"x{i}", TensorType(shape, dtype)) for i, shape in enumerate(shapes)]
    inputs += [graph.add_constant(f"c{i}", np.asarray(c)) for i, c in enumerate(constants)]
    node = graph.add_node(op, inputs)
    graph.set_outputs(node.outputs)
    return graph


RNG = np.random.default_rng(7)
LSTM_WEIGHTS = [RNG.standard_normal(s).astype(np.float32) * 0.3
                for s in ((2, 16, 3), (2, 16, 4), (2, 32))]
GRU_WEIGHTS = [RNG.standard_normal(s).astype(np.float32) * 0.3
               for s in ((1, 12, 3), (1, 12, 4), (1, 24))]


@pytest.mark.parametrize("graph", [
    one_node(ops.Pad(((0, 0), (0, 0), (1, 2), (2, 0)), 1.5), [(1, 2, 4, 5)]),
    one_node(ops.Pad(((0, 0), (1, 1), (3, 2), (2, 3)), mode="reflect"), [(1, 2, 4, 5)]),
    one_node(ops.Pad(((1, 0), (0, 0), (2, 2), (0, 3)), mode="edge"), [(1, 2, 4, 5)]),
    one_node(ops.Pad(((0, 0), (0, 0), (6, 1), (1, 7)), mode="wrap"), [(1, 2, 4, 5)]),   # > axis
    *[one_node(ops.Resize((7, 9), mode, coordinates, rounding), [(1, 2, 3, 4)])
      for mode, coordinates, rounding in [
          ("nearest", "half_pixel", "round_prefer_floor"),
          ("nearest", "asymmetric", "floor"), ("nearest", "align_corners", "round_prefer_ceil"),
          ("nearest", "pytorch_half_pixel", "ceil"), ("bilinear", "half_pixel", "floor"),
          ("bilinear", "align_corners", "floor"), ("bilinear", "asymmetric", "floor"),
          ("bilinear", "pytorch_half_pixel", "floor")]],
    one_node(ops.Resize((1, 2), "bilinear", "pytorch_half_pixel"), [(1, 2, 3, 4)]),
    one_node(ops.Slice((3, -1), (0, -100), (1, 2), (-1, -2)), [(2, 5, 6)]),   # negative steps
    one_node(ops.Slice((1,), (100,), (-1,), (2,)), [(2, 5, 6)]),
    one_node(ops.Gather(1), [(2, 5, 3)], [np.array([[4, -1], [0, 2]], np.int64)]),
    one_node(ops.Gather(0), [(6,)], [np.array(-6, np.int32)]),
    one_node(ops.Expand((3, 1, 4)), [(2, 1)]),
    one_node(ops.ArgMax(1, keepdims=False), [(2, 5, 3)]),
    one_node(ops.ArgMin(-1, select_last_index=True), [(2, 5, 3)]),
    one_node(ops.Exp(), [(2, 3)]),
    one_node(ops.InstanceNorm(1e-3), [(2, 3, 4, 5)], [np.array([1.0, 2.0, 0.5], np.float32),
                                                      np.array([0.0, -1.0, 3.0], np.float32)]),
    one_node(ops.MaxPool2d(3, 2, (0, 1, 2, 1)), [(1, 2, 7, 8)]),      # asymmetric padding
    one_node(ops.MaxPool2dIndices(3, 2, (1, 1, 1, 1)), [(2, 3, 7, 8)]),
    one_node(ops.MaxPool2dIndices(2, 2, storage_order=1), [(2, 3, 6, 4)]),
    one_node(ops.Lstm("bidirectional", layout=1, sequence_lens=(5, 3), clip=2.0),
             [(2, 5, 3)], LSTM_WEIGHTS),
    one_node(ops.Gru(activations=(("HardSigmoid", 0.3, 0.4), ("LeakyRelu", 0.1, 0.0)),
                     linear_before_reset=True), [(5, 2, 3)], GRU_WEIGHTS),
    one_node(ops.Gru(direction="reverse"), [(5, 2, 3)], GRU_WEIGHTS),
], ids=lambda graph: graph.name)
def test_op_forms_against_the_interpreter(graph):
    check_against_interpreter(graph)


def test_max_unpool_puts_values_back_where_the_pool_found_them():
    with dsl.Builder("unpool", seed=1) as b:
        x = b.input("input", (2, 3, 8, 6))
        y, where = dsl.max_pool2d(x, 2, return_indices=True)
        graph = b.output(dsl.max_unpool2d(dsl.relu(y), where, 2, output_size=(8, 6)))
    check_against_interpreter(graph)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(go.zoo.MODELS))
def test_every_zoo_model(name):
    check_against_interpreter(go.zoo.MODELS[name](batch=1))
