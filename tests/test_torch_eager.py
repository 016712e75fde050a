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
