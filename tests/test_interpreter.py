"""The reference interpreter: kept intermediates, float64 mode, dtype handling, input checking."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt import ops
from graphopt.errors import GraphoptError, InputError
from graphopt.ir import Graph, TensorType
from graphopt.signature import Signature, probe_inputs


def small_net() -> Graph:
    """x -> conv(w, b) -> relu -> global avg pool -> y, and the relu output also as 'feat'."""
    rng = np.random.default_rng(7)
    g = Graph("small")
    x = g.add_input("x", TensorType((1, 2, 6, 6)))
    w = g.add_constant("w", rng.standard_normal((4, 2, 3, 3)).astype(np.float32))
    b = g.add_constant("b", rng.standard_normal(4).astype(np.float32))
    c = g.add_node(ops.Conv2d(padding=1), [x, w, b], name="conv", output_names=["c"]).output
    r = g.add_node(ops.Relu(), [c], name="relu", output_names=["feat"]).output
    y = g.add_node(ops.GlobalAvgPool2d(), [r], name="pool", output_names=["y"]).output
    g.set_outputs([y, r])
    return go.verify(g)


@pytest.fixture
def x(rng):
    return rng.standard_normal((1, 2, 6, 6)).astype(np.float32)


def test_outputs_in_graph_order(x):
    result = go.interpret(small_net(), {"x": x})
    assert list(result) == ["y", "feat"]
    assert result["y"].shape == (1, 4, 1, 1) and result["feat"].dtype == np.float32
    np.testing.assert_allclose(result["y"], result["feat"].mean(axis=(2, 3), keepdims=True),
                               rtol=1e-6)


def test_keep_returns_every_value(x):
    g = small_net()
    kept = go.interpret(g, {"x": x}, keep=True)
    assert set(kept) == {"x", "w", "b", "c", "feat", "y"}
    np.testing.assert_array_equal(kept["x"], x)
    np.testing.assert_array_equal(kept["w"], g.constants["w"].data)
    np.testing.assert_array_equal(kept["feat"], np.maximum(kept["c"], 0))
    assert kept["c"].shape == (1, 4, 6, 6)


def test_float64_mode_widens_floats(x):
    g = small_net()
    r32 = go.interpret(g, {"x": x})
    r64 = go.interpret(g, {"x": x}, dtype=np.float64)
    assert r64["y"].dtype == np.float64 and r64["feat"].dtype == np.float64
    np.testing.assert_allclose(r32["y"], r64["y"], rtol=1e-5, atol=1e-6)
    # Computed in float64, not merely cast: the difference is float32 rounding, and not zero.
    assert np.abs(r32["feat"].astype(np.float64) - r64["feat"]).max() > 0
    kept = go.interpret(g, {"x": x}, dtype=np.float64, keep=True)
    assert all(v.dtype == np.float64 for v in kept.values())


def test_float64_mode_keeps_integers():
    g = Graph("ints")
    a = g.add_input("a", TensorType((3,), "int32"))
    g.set_outputs([g.add_node(ops.Relu(), [a], output_names=["y"]).output])
    out = go.interpret(g, {"a": np.array([-2, 0, 5], np.int32)}, dtype=np.float64)["y"]
    assert out.dtype == np.int32 and out.tolist() == [0, 0, 5]


def test_float16_stays_float16():
    g = Graph("half")
    a = g.add_input("a", TensorType((4,), "float16"))
    g.set_outputs([g.add_node(ops.Sigmoid(), [a], output_names=["y"]).output])
    out = go.interpret(g, {"a": np.zeros(4, np.float16)})["y"]
    assert out.dtype == np.float16 and (out == 0.5).all()


def test_inputs_and_constants_can_be_outputs(x):
    g = Graph("passthrough")
    a = g.add_input("a", TensorType((1, 2, 6, 6)))
    c = g.add_constant("c", np.arange(3, dtype=np.float32))
    g.set_outputs([a, c])
    result = go.interpret(go.verify(g), {"a": x})
    np.testing.assert_array_equal(result["a"], x)
    np.testing.assert_array_equal(result["c"], [0, 1, 2])


def test_input_validation_accepts_non_contiguous_and_lists():
    g = Graph("t")
    a = g.add_input("a", TensorType((2, 3)))
    g.set_outputs([g.add_node(ops.Relu(), [a], output_names=["y"]).output])
    strided = np.arange(12, dtype=np.float32).reshape(3, 4)[:2, :3]
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(go.interpret(g, {"a": strided})["y"], strided)
    with pytest.raises(InputError, match=r"input 'a': expected float32\[2,3\], found float64"):
        go.interpret(g, {"a": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]})   # Python floats are float64


def test_input_must_be_a_mapping(x):
    with pytest.raises(InputError, match="expected a dict of input name -> array, found list"):
        go.interpret(small_net(), [x])


def test_inputs_are_not_modified(x):
    before = x.copy()
    go.interpret(small_net(), {"x": x}, dtype=np.float64)
    np.testing.assert_array_equal(x, before)


def test_failing_kernel_names_the_node():
    class Broken(ops.Relu):
        def reference(self, x):
            raise FloatingPointError("boom")
    g = Graph("broken")
    a = g.add_input("a", TensorType((2,)))
    g.set_outputs([g.add_node(Broken(), [a], name="bad").output])
    with pytest.raises(GraphoptError, match=r"node 'bad' \(relu\): reference kernel failed: "
                                            "FloatingPointError: boom"):
        go.interpret(g, {"a": np.zeros(2, np.float32)})


def test_kernel_with_wrong_shape_is_caught():
    class Wrong(ops.Relu):
        def reference(self, x):
            return x[:1]
    g = Graph("wrong")
    a = g.add_input("a", TensorType((2,)))
    g.set_outputs([g.add_node(Wrong(), [a], name="w").output])
    with pytest.raises(GraphoptError, match=r"node 'w' \(relu\): reference kernel returned shape "
                                            r"\(1,\), expected \(2,\)"):
        go.interpret(g, {"a": np.zeros(2, np.float32)})


def test_signature_describes_and_round_trips():
    g = small_net()
    sig = Signature.of(g)
    assert sig.input_names == ["x"] and sig.output_names == ["y", "feat"]
    assert dict(sig.outputs)["y"] == TensorType((1, 4, 1, 1))
    assert Signature.from_json(sig.to_json()) == sig
    assert Signature.from_dict({"target": "cpu", **sig.to_dict()}) == sig
    assert sig.to_dict()["inputs"] == [{"name": "x", "shape": [1, 2, 6, 6], "dtype": "float32"}]


def test_probe_inputs_are_deterministic_and_fit_each_dtype():
    g = Graph("probe")
    for name, dtype in [("f", "float32"), ("h", "float16"), ("i", "int32"), ("u", "uint8"),
                        ("b", "bool")]:
        g.add_input(name, TensorType((4, 5), dtype))
    feeds = probe_inputs(g, seed=3)
    again = probe_inputs([(v.name, v.shape, v.dtype) for v in g.inputs], seed=3)
    assert all(np.array_equal(feeds[n], again[n]) for n in g.input_names)
    assert {n: str(a.dtype) for n, a in feeds.items()} == {v.name: v.dtype for v in g.inputs}
    assert np.abs(feeds["i"]).max() <= 8 and feeds["u"].max() < 8 and feeds["b"].any()
    assert not np.array_equal(feeds["f"], probe_inputs(g, seed=4)["f"])


def test_a_graph_without_outputs_is_an_error_not_an_empty_result():
    g = Graph("headless")
    x = g.add_input("x", TensorType((2,), "float32"))
    g.add_node(ops.Relu(), [x], name="act")
    with pytest.raises(GraphoptError, match="graph 'headless' has no outputs"):
        go.interpret(g, {"x": np.zeros(2, np.float32)})
