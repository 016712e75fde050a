"""PyTorch eager execution of graphs (the bundle's baseline) against the float64 interpreter."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt.compare import compare_arrays
from graphopt.errors import UnsupportedOpError
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
    with dsl.Builder("resized", seed=0) as b:
        x = b.input("input", (1, 2, 4, 4))
        graph = b.output(dsl.resize(x, scale=2))
    with pytest.raises(UnsupportedOpError, match="no torch eager form"):
        TorchEager(graph)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(go.zoo.MODELS))
def test_every_zoo_model(name):
    check_against_interpreter(go.zoo.MODELS[name](batch=1))
