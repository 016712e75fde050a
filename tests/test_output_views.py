"""A model output that reshapes a tensor the model computed is a view of it, not a copy kernel
(`targets/tvm/output_views.py`); a reshape of a model input stays a copy. Outputs equal the
interpreter's, run after run."""
import numpy as np
import pytest

pytest.importorskip("tvm")

import graphopt as go  # noqa: E402
from graphopt.frontends import dsl  # noqa: E402
from graphopt.targets.reference import interpret  # noqa: E402


def _feeds(graph, seed):
    rng = np.random.default_rng(seed)
    return {v.name: rng.standard_normal(v.type.shape).astype(np.float32) for v in graph.inputs}


def _check_runs(graph, model):
    """Three runs on other inputs each equal the interpreter, and earlier results stay intact."""
    kept = []
    for seed in range(3):
        feeds = _feeds(graph, seed)
        got = model.run(feeds)
        want = interpret(graph, feeds)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)
        kept.append((got, want))
    for got, want in kept:
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)


def _reshape_kernels(model) -> list[str]:
    return [k for k in model.kernels if "reshape" in k and "fused" not in k]


def _flat_head():
    """A conv whose relu'd output, flattened, is the model's output."""
    with dsl.Builder("flat_head", seed=3) as b:
        x = b.input("x", (1, 16, 12, 12))
        return b.output(dsl.flatten(dsl.relu(dsl.conv2d(x, 24, 3, padding=1))))


def _pointwise_outputs():
    """1x1 convs on a 32x32 plane (the pointwise rule's flat planes where the host takes it):
    one's output is a model output and the next conv's input."""
    with dsl.Builder("pointwise_outputs", seed=4) as b:
        x = b.input("x", (1, 32, 32, 32))
        first = dsl.relu(dsl.conv2d(x, 64, 1))
        return b.output(first, dsl.conv2d(first, 16, 1))


def test_flattened_conv_output_is_a_view():
    graph = _flat_head()
    model = go.compile(graph)
    assert _reshape_kernels(model) == []
    _check_runs(graph, model)


def test_pointwise_conv_outputs_take_no_copy_kernel():
    graph = _pointwise_outputs()
    model = go.compile(graph)
    assert _reshape_kernels(model) == []
    _check_runs(graph, model)


def test_view_of_a_tensor_computed_into_a_concatenation():
    """An output viewing a concatenation's input, which is computed in place into the
    concatenation's memory (`concat_in_place.py`), keeps its values while later kernels run."""
    with dsl.Builder("concat_view", seed=2) as b:
        x = b.input("x", (1, 16, 16, 16))
        branch = dsl.relu(dsl.conv2d(x, 16, 3, padding=1))
        y = dsl.concat([branch, dsl.relu(dsl.conv2d(x, 16, 1))], axis=1)
        for _ in range(3):
            y = dsl.relu(dsl.conv2d(y, 32, 3, padding=1))
        graph = b.output(dsl.flatten(branch), y)
    model = go.compile(graph)
    assert [n.op.in_place for n in model.graph.nodes if n.op_name == "concat"] == [True]
    assert _reshape_kernels(model) == []
    _check_runs(graph, model)


def test_reshape_of_a_model_input_stays_a_copy():
    with dsl.Builder("input_view", seed=5) as b:
        x = b.input("x", (2, 3, 4))
        graph = b.output(dsl.reshape(x, (6, 4)), dsl.relu(x))
    model = go.compile(graph)
    assert len(_reshape_kernels(model)) == 1
    feeds = _feeds(graph, 0)
    original = feeds["x"].copy()
    first = model.run(feeds)
    feeds["x"][:] = 0
    np.testing.assert_array_equal(first[graph.outputs[0].name], original.reshape(6, 4))
    _check_runs(graph, model)


def test_exported_model_keeps_the_views(tmp_path):
    graph = _pointwise_outputs()
    path = str(tmp_path / "pointwise.so")
    go.compile(graph).export(path)
    loaded = go.load(path)
    _check_runs(graph, loaded)
