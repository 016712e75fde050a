"""Graph construction and edits: add, replace_all_uses, remove, copy, topological order, networkx."""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import graphopt as go
from graphopt import ops
from graphopt.analysis import count_macs
from graphopt.errors import GraphoptError, ShapeError, VerifyError
from graphopt.ir import Graph, TensorType, float_info, is_float_dtype
from graphopt.signature import probe_inputs

from conftest import one_node_graph


def diamond() -> Graph:
    """x -> relu -> (sigmoid, tanh) -> add -> + bias -> y. Nodes and values share one namespace,
    so node 'relu' outputs value 'r', and so on."""
    g = Graph("diamond")
    x = g.add_input("x", TensorType((2, 3)))
    r = g.add_node(ops.Relu(), [x], name="relu", output_names=["r"]).output
    s = g.add_node(ops.Sigmoid(), [r], name="sigmoid", output_names=["s"]).output
    t = g.add_node(ops.Tanh(), [r], name="tanh", output_names=["t"]).output
    c = g.add_constant("bias", np.ones((3,), np.float32))
    a = g.add_node(ops.Add(), [s, t], name="add", output_names=["a"]).output
    y = g.add_node(ops.Add(), [a, c], name="add_bias", output_names=["y"]).output
    g.set_outputs([y])
    return go.verify(g)


# ---- TensorType --------------------------------------------------------------------------------
def test_tensor_type_properties():
    t = TensorType((2, 3, 4), "float32")
    assert (t.ndim, t.numel, t.is_float, str(t)) == (3, 24, True, "float32[2,3,4]")
    assert t.with_shape((4, 6)) == TensorType((4, 6)) and t.with_dtype("int8").dtype == "int8"
    assert TensorType.of(np.zeros((1, 2), np.int64)) == TensorType((1, 2), "int64")
    assert TensorType([np.int64(2), 3]).shape == (2, 3)   # numpy ints normalise to int


def test_bfloat16_is_a_float_dtype_numpy_knows():
    t = TensorType((2, 3), "bfloat16")
    assert t.is_float and t.nbytes == 12 and str(t) == "bfloat16[2,3]"
    array = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3).astype("bfloat16")
    assert TensorType.of(array) == t
    # numpy's dtype of bfloat16 has kind "V": graphopt tests float dtypes by name
    assert array.dtype.kind == "V" and is_float_dtype(array.dtype) and is_float_dtype("float16")
    assert not is_float_dtype(np.dtype("int8")) and not is_float_dtype("bool")
    assert float(float_info("bfloat16").max) > 3e38 and float(float_info("float16").max) == 65504


def test_bfloat16_inputs_are_checked_and_probed():
    g = one_node_graph(ops.Relu(), [np.zeros((2, 3), "bfloat16")])
    feeds = probe_inputs(g)
    assert feeds["node.in0"].dtype == "bfloat16" and np.abs(feeds["node.in0"]).max() > 0
    out = go.interpret(g, feeds)["node.out"]
    assert out.dtype == "bfloat16" and (out.astype(np.float32) >= 0).all()
    with pytest.raises(go.InputError, match="expected bfloat16"):
        go.interpret(g, {"node.in0": np.zeros((2, 3), np.float32)})


@pytest.mark.parametrize("shape, dtype, message", [
    ((2, -1), "float32", "negative dimension"),
    ((2,), "complex64", "unknown dtype 'complex64'"),
])
def test_tensor_type_rejects(shape, dtype, message):
    with pytest.raises(ShapeError, match=message):
        TensorType(shape, dtype)


# ---- construction ----------------------------------------------------------------------------------
def test_add_node_infers_types_and_links_users():
    g = diamond()
    relu = g.node("relu")
    assert relu.output.type == TensorType((2, 3)) and relu.output.producer is relu
    assert [u.name for u in relu.output.users] == ["sigmoid", "tanh"]
    assert g.input_names == ["x"] and g.output_names == ["y"]
    assert g.value("bias").is_constant and not g.value("x").is_constant


def test_add_node_names_are_fresh():
    g = Graph()
    x = g.add_input("x", TensorType((4,)))
    names = [g.add_node(ops.Relu(), [x]).name for _ in range(3)]
    assert len(set(names)) == 3 and names[0] == "relu"
    assert g.add_constant("w", np.zeros(2, np.float32)).name == "w"
    assert g.add_constant("w", np.zeros(2, np.float32)).name != "w"


def test_add_node_shape_error_names_node_and_frees_name():
    g = Graph()
    a, b = g.add_input("a", TensorType((2, 3))), g.add_input("b", TensorType((4, 5)))
    with pytest.raises(ShapeError, match=r"node 'bad' \(add\): expected broadcastable shapes, "
                                         r"found \(2, 3\) and \(4, 5\)"):
        g.add_node(ops.Add(), [a, b], name="bad")
    assert g.nodes == [] and g.add_node(ops.Relu(), [a], name="bad").name == "bad"


def test_duplicate_input_name_is_rejected():
    g = Graph("g")
    g.add_input("x", TensorType((1,)))
    with pytest.raises(VerifyError, match="name 'x' is already used in graph 'g'"):
        g.add_input("x", TensorType((1,)))


def test_multi_output_node_value_names():
    # No registered op has two outputs yet; the IR must still name them node:i.
    class Split(ops.Relu):
        def infer(self, x):
            return (x, x)
    g = Graph()
    x = g.add_input("x", TensorType((2,)))
    node = g.add_node(Split(), [x], name="split")
    assert [v.name for v in node.outputs] == ["split:0", "split:1"]
    with pytest.raises(GraphoptError, match="has 2 outputs, not one"):
        node.output


# ---- edits ----------------------------------------------------------------------------------------
def test_replace_all_uses_rewires_users_and_outputs():
    g = diamond()
    relu, sig = g.node("relu"), g.node("sigmoid")
    x = g.value("x")
    g.replace_all_uses(relu.output, x)            # skip the relu
    assert relu.output.users == []
    assert g.node("sigmoid").inputs == [x] and g.node("tanh").inputs == [x]
    assert sig in x.users
    g.remove_node(relu)
    go.verify(g)
    out = go.interpret(g, {"x": np.full((2, 3), -1.0, np.float32)})["y"]
    np.testing.assert_allclose(out, 1 / (1 + np.e) + np.tanh(-1.0) + 1, rtol=1e-6)


def test_replace_all_uses_updates_graph_outputs():
    g = diamond()
    old = g.outputs[0]
    new = g.add_node(ops.Relu(), [old], name="relu_out").output
    g.replace_all_uses(old, new)
    assert g.outputs == [new]
    # The replacement's own producer keeps reading the old value (no self-loop).
    assert g.node("relu_out").inputs == [old]
    go.verify(g)


def test_replace_all_uses_rejects_type_change():
    g = diamond()
    other = g.add_input("z", TensorType((3, 2)))
    with pytest.raises(VerifyError, match=r"cannot replace %r: float32\[2,3\] by %z"):
        g.replace_all_uses(g.value("r"), other)


def test_remove_node_refuses_used_outputs():
    g = diamond()
    with pytest.raises(VerifyError, match=r"node 'relu' \(relu\): cannot remove: output %r "
                                          "is still used"):
        g.remove_node(g.node("relu"))
    with pytest.raises(VerifyError, match="node 'add_bias'"):
        g.remove_node(g.node("add_bias"))   # a graph output


def test_remove_node_frees_names_and_unused_constants():
    g = diamond()
    g.replace_all_uses(g.value("y"), g.value("a"))
    g.remove_node(g.node("add_bias"))
    assert g.value("bias").users == [] and g.output_names == ["a"]
    g.remove_unused_constants()
    assert "bias" not in g.constants
    go.verify(g)
    assert g.add_constant("bias", np.zeros(1, np.float32)).name == "bias"


def test_rename_value():
    g = diamond()
    g.rename_value(g.value("bias"), "b")
    g.rename_value(g.value("y"), "out")
    assert "b" in g.constants and "bias" not in g.constants and g.output_names == ["out"]
    go.verify(g)
    with pytest.raises(VerifyError, match="already used"):
        g.rename_value(g.value("out"), "x")


# ---- queries --------------------------------------------------------------------------------------
def test_topological_order_puts_producers_first():
    g = diamond()
    g.nodes.reverse()   # storage order must not matter
    order = [n.name for n in g.topological_order()]
    assert order.index("relu") < order.index("sigmoid") < order.index("add") < order.index(
        "add_bias")
    assert order.index("tanh") < order.index("add")


def test_topological_order_is_stable():
    g = Graph()
    x = g.add_input("x", TensorType((1,)))
    names = [g.add_node(ops.Relu(), [x], name=f"n{i}").name for i in range(5)]
    assert [n.name for n in g.topological_order()] == names


def test_copy_is_independent():
    g = diamond()
    c = g.copy()
    go.verify(c)
    assert c.output_names == g.output_names and [n.name for n in c.nodes] == [n.name for n in g.nodes]
    assert all(a is not b for a, b in zip(c.nodes, g.nodes))
    assert c.constants["bias"].data is g.constants["bias"].data   # immutable arrays are shared
    c.replace_all_uses(c.value("y"), c.value("a"))
    c.remove_node(c.node("add_bias"))
    c.add_node(ops.Relu(), [c.value("x")], name="extra")
    assert len(g.nodes) == 5 and "extra" not in [n.name for n in g.nodes]
    assert g.output_names == ["y"] and g.value("a").users == [g.node("add_bias")]
    assert g.value("x").users == [g.node("relu")]
    go.verify(g)


def test_copy_preserves_provenance_and_behaviour(rng):
    g = diamond()
    g.node("relu").provenance = ("conv", "relu")
    c = g.copy()
    assert c.node("relu").provenance == ("conv", "relu")
    x = {"x": rng.standard_normal((2, 3)).astype(np.float32)}
    np.testing.assert_array_equal(go.interpret(c, x)["y"], go.interpret(g, x)["y"])


def test_to_networkx():
    g = diamond()
    nxg = g.to_networkx()
    assert isinstance(nxg, nx.MultiDiGraph)
    assert set(nxg.nodes) == {"relu", "sigmoid", "tanh", "add", "add_bias"}
    assert nxg.nodes["relu"]["op"] == "relu" and nxg.nodes["add"]["node"] is g.node("add")
    assert sorted((u, v, d["value"]) for u, v, d in nxg.edges(data=True)) == [
        ("add", "add_bias", "a"), ("relu", "sigmoid", "r"), ("relu", "tanh", "r"),
        ("sigmoid", "add", "s"), ("tanh", "add", "t")]
    assert nx.is_directed_acyclic_graph(nxg)
    assert list(nx.topological_sort(nxg))[0] == "relu"


def test_lookup_errors_name_the_graph():
    g = diamond()
    with pytest.raises(GraphoptError, match="graph 'diamond' has no value named 'nope'"):
        g.value("nope")
    with pytest.raises(GraphoptError, match="graph 'diamond' has no node named 'nope'"):
        g.node("nope")


def test_repr_and_summary_mention_every_node():
    g = diamond()
    text = repr(g)
    assert text.startswith("graph diamond(%x: float32[2,3])") and "return %y" in text
    summary = g.summary()
    assert all(n.name in summary for n in g.nodes)


def test_num_params_excludes_batch_norm_statistics(rng):
    c = 4
    x = rng.standard_normal((1, c, 3, 3)).astype(np.float32)
    stats = [np.ones(c, np.float32)] * 4
    g = one_node_graph(ops.BatchNorm(), [x], stats)
    assert g.num_params() == 2 * c     # scale and bias, not running mean/var


def test_macs_of_conv_and_linear(rng):
    conv = one_node_graph(ops.Conv2d(stride=2, padding=1, groups=2), [np.zeros((1, 4, 8, 8),
                          np.float32)], [np.zeros((6, 2, 3, 3), np.float32)])
    # output 1x6x4x4, each from 2 channels x 3x3 taps
    assert count_macs(conv) == 6 * 4 * 4 * 2 * 9
    fc = one_node_graph(ops.Linear(), [np.zeros((3, 5), np.float32)],
                        [np.zeros((7, 5), np.float32), np.zeros(7, np.float32)])
    assert count_macs(fc) == 3 * 7 * 5 and fc.num_params() == 7 * 5 + 7


# ---- random graphs --------------------------------------------------------------------------------
UNARY = (ops.Relu(), ops.Tanh(), ops.Sigmoid(), ops.LeakyRelu(0.1))
BINARY = (ops.Add(), ops.Sub(), ops.Mul())


@st.composite
def random_graphs(draw) -> Graph:
    """A random DAG of elementwise ops over two inputs; any value may feed any later node."""
    g = Graph("random")
    values = [g.add_input(name, TensorType((2, 3))) for name in ("a", "b")]
    for i in range(draw(st.integers(1, 12))):
        if draw(st.booleans()):
            op, args = draw(st.sampled_from(UNARY)), [draw(st.sampled_from(values))]
        else:
            op = draw(st.sampled_from(BINARY))
            args = [draw(st.sampled_from(values)), draw(st.sampled_from(values))]
        values.append(g.add_node(op, args, name=f"n{i}", output_names=[f"v{i}"]).output)
    g.set_outputs(draw(st.lists(st.sampled_from(values[2:]), min_size=1, max_size=3,
                                unique_by=id)))
    return g


@settings(max_examples=40, deadline=None)
@given(random_graphs(), st.randoms(use_true_random=False))
def test_random_graph_invariants(g, shuffle):
    go.verify(g)
    shuffle.shuffle(g.nodes)                    # storage order must not matter
    go.verify(g)
    order = g.topological_order()
    position = {id(n): i for i, n in enumerate(order)}
    assert all(position[id(v.producer)] < position[id(n)]
               for n in order for v in n.inputs if v.producer is not None)
    nxg = g.to_networkx()
    assert nx.is_directed_acyclic_graph(nxg)
    assert nxg.number_of_edges() == sum(v.producer is not None for n in g.nodes for v in n.inputs)
    feeds = {"a": np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3),
             "b": np.linspace(1, -1, 6, dtype=np.float32).reshape(2, 3)}
    copy = go.verify(g.copy())
    before = go.interpret(g, feeds, keep=True)
    after = go.interpret(copy, feeds, keep=True)
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k], equal_nan=True) for k in before)


@settings(max_examples=40, deadline=None)
@given(random_graphs(), st.data())
def test_random_bypass_and_dead_code_removal_keep_the_graph_valid(g, data):
    """Bypass a random node (its users read its first input instead), then drop every node
    nothing uses: the verifier must still pass and exactly the output's ancestors remain."""
    victim = data.draw(st.sampled_from(g.nodes))
    g.replace_all_uses(victim.output, victim.inputs[0])
    for node in reversed(g.topological_order()):
        if not node.output.users and all(node.output is not o for o in g.outputs):
            g.remove_node(node)
    go.verify(g)
    nxg = g.to_networkx()
    needed = {o.producer.name for o in g.outputs if o.producer is not None}
    needed |= {a for name in list(needed) for a in nx.ancestors(nxg, name)}
    assert {n.name for n in g.nodes} == needed
    assert victim not in g.nodes
