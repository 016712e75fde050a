"""The DSL's wrappers for the activations, elementwise functions and the split that the zoo
models and imported ones use, against torch's functions, and their naming and error rules."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt.errors import ShapeError
from graphopt.frontends import dsl

torch = pytest.importorskip("torch")
F = torch.nn.functional

ROWS = [
    ("hard_sigmoid", lambda x: dsl.hard_sigmoid(x, alpha=1 / 6), F.hardsigmoid),
    ("hard_sigmoid_onnx_default", lambda x: dsl.hard_sigmoid(x),
     lambda t: torch.clamp(0.2 * t + 0.5, 0, 1)),
    ("hard_swish", dsl.hard_swish, F.hardswish),
    ("gelu", dsl.gelu, F.gelu),
    ("gelu_tanh", lambda x: dsl.gelu(x, approximate="tanh"),
     lambda t: F.gelu(t, approximate="tanh")),
    ("silu", dsl.silu, F.silu),
    ("exp", dsl.exp, torch.exp),
    ("elu", lambda x: dsl.elu(x, alpha=0.5), lambda t: F.elu(t, 0.5)),
    ("selu", dsl.selu, F.selu),
    ("softplus", dsl.softplus, F.softplus),
    ("softsign", dsl.softsign, F.softsign),
    ("mish", dsl.mish, F.mish),
    ("thresholded_relu", lambda x: dsl.thresholded_relu(x, alpha=0.5),
     lambda t: torch.where(t > 0.5, t, 0.0)),
    ("abs", dsl.abs, torch.abs),
    ("neg", dsl.neg, torch.neg),
    ("reciprocal", lambda x: dsl.reciprocal(dsl.add(dsl.abs(x), dsl.parameter(
        "one", (1,), value=np.ones(1, np.float32)))), lambda t: 1 / (t.abs() + 1)),
    ("maximum", lambda x: dsl.maximum(x, dsl.neg(x)), lambda t: torch.maximum(t, -t)),
    ("minimum", lambda x: dsl.minimum(x, dsl.mul(x, x)), lambda t: torch.minimum(t, t * t)),
    ("prelu", lambda x: dsl.prelu(x, init=0.3),
     lambda t: torch.nn.functional.prelu(t, torch.tensor([0.3], dtype=torch.float64))),
    ("prelu_per_channel", lambda x: dsl.prelu(x, 6, slope=np.linspace(-1, 1, 6).reshape(
        6, 1, 1)), lambda t: torch.nn.functional.prelu(t, torch.linspace(-1, 1, 6,
                                                                        dtype=torch.float64))),
    ("celu", lambda x: dsl.celu(x, 0.5), lambda t: F.celu(t, 0.5)),
    ("log_softmax", lambda x: dsl.log_softmax(x, axis=1), lambda t: F.log_softmax(t, 1)),
    ("sign", dsl.sign, torch.sign),
    ("floor", dsl.floor, torch.floor),
    ("ceil", dsl.ceil, torch.ceil),
    ("round", dsl.round, torch.round),
    ("split", lambda x: dsl.concat(dsl.split(x, [2, 1, 3])[::-1], axis=1),
     lambda t: torch.cat(torch.split(t, [2, 1, 3], dim=1)[::-1], 1)),
    ("split_last_axis", lambda x: dsl.split(x, [4, 1], axis=-1)[0],
     lambda t: t[..., :4]),
]


@pytest.mark.parametrize("name, layer, reference", ROWS, ids=[r[0] for r in ROWS])
def test_wrapper_matches_torch(name, layer, reference):
    with dsl.Builder(name) as b:
        graph = b.output(layer(b.input("input", (2, 6, 5, 5))))
    # Values from -6 to 6 reach both saturated ends of the hard functions.
    x = np.random.default_rng(0).uniform(-6, 6, (2, 6, 5, 5))
    found = go.interpret(graph, {"input": x.astype(np.float32)}, dtype=np.float64)["output"]
    expected = reference(torch.from_numpy(x.astype(np.float32).astype(np.float64))).numpy()
    # float32 attributes (1/6, 0.2) and torch's own 1/6 differ by ~1e-8 relative.
    np.testing.assert_allclose(found, expected, rtol=1e-7, atol=1e-7)


def test_silu_and_split_name_their_nodes():
    with dsl.Builder("names") as b:
        x = b.input("input", (1, 4, 2, 2))
        first, second = dsl.split(dsl.silu(dsl.silu(x), name="act"), [1, 3], name="chunk")
        graph = b.output(dsl.concat([second, first]))
    assert [n.name for n in graph.topological_order()] == [
        "silu.sigmoid", "silu", "act.sigmoid", "act", "chunk.0", "chunk.1", "concat"]
    assert [n.op_name for n in graph.topological_order()][:2] == ["sigmoid", "mul"]


@pytest.mark.parametrize("sizes, axis, message", [
    ([2, 3], 1, r"summing to 4"),
    ([5, -1], 1, r"non-negative sizes"),
    ([4], 4, r"axis"),
    (4, 1, r"list of sizes"),
])
def test_split_refuses_sizes_that_do_not_cover_the_axis(sizes, axis, message):
    with pytest.raises(ShapeError, match=message) as info:
        with dsl.Builder("bad") as b:
            dsl.split(b.input("input", (1, 4, 2, 2)), sizes, axis=axis, name="parts")
    assert info.value.node == "parts"


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_elementwise_functions_compile_in_half_precision(precision):
    """Each of these layers after a conv, in a bfloat16 or float16 model: built (TVM's isnan
    refuses bfloat16, which maximum, minimum and sign test) and within tolerance of the
    interpreter's half-precision graph. The steps (sign, floor, ceil, round) read the model's
    input, which both see rounded alike: after a conv, one value on either side of a step
    would fail any tolerance."""
    one = np.ones(1, np.float32)
    layers = [dsl.elu, dsl.selu, dsl.celu, dsl.softplus, dsl.softsign, dsl.mish,
              dsl.thresholded_relu, dsl.abs, dsl.neg, lambda t: dsl.log_softmax(t, 1),
              lambda t: dsl.prelu(t, 4), lambda t: dsl.maximum(t, dsl.neg(t)),
              lambda t: dsl.minimum(t, dsl.abs(t)),
              lambda t: dsl.reciprocal(dsl.add(dsl.abs(t), dsl.parameter("one", (1,),
                                                                         value=one)))]
    steps = [dsl.sign, dsl.floor, dsl.ceil, dsl.round]
    with dsl.Builder("half", seed=0) as b:
        inputs = b.input("input", (2, 3, 5, 7))
        x = dsl.conv2d(inputs, 4, 3, padding=1)
        outputs = [layer(x) for layer in layers] + [step(inputs) for step in steps]
        graph = go.quantize(b.output(*outputs), precision).graph
    feeds = {"input": np.random.default_rng(1).standard_normal((2, 3, 5, 7))
             .astype(np.float32)}
    report = go.compare(graph, go.compile(graph), feeds)
    assert report.ok, report
