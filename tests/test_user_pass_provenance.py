"""A node a pass builds to replace another stands for the same original layers by default
(`Graph.replace_all_uses`), so that compare's per-layer view names the layer a user's pass broke,
not the first layer downstream of it."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt import dsl, ops
from graphopt.ir import Graph, TensorType
from graphopt.passes import PassResult


def chain() -> Graph:
    """x -> relu 'act' -> identity 'copy' -> sigmoid 'squash' -> y."""
    g = Graph("chain")
    x = g.add_input("x", TensorType((2, 3)))
    act = g.add_node(ops.Relu(), [x], name="act")
    copy = g.add_node(ops.Identity(), [act.output], name="copy")
    squash = g.add_node(ops.Sigmoid(), [copy.output], name="squash")
    g.set_outputs([squash.output])
    return g


def fresh_stand_in(g):
    new = g.add_node(ops.LeakyRelu(0.1), g.node("act").inputs, name="act_leaky")
    return "act", new, ("act",)


def fresh_with_its_own_provenance(g):
    new = g.add_node(ops.LeakyRelu(0.1), g.node("act").inputs, name="act_leaky",
                     provenance=("mine",))
    return "act", new, ("mine",)


def an_existing_node(g):
    # bypassing the identity with what it reads: the node upstream keeps standing for itself
    return "copy", g.node("act"), ("act",)


def a_node_inserted_after(g):
    # a node placed after `act` reads it: it is an addition, not a replacement
    new = g.add_node(ops.Tanh(), [g.node("act").output], name="after")
    return "act", new, ("after",)


def a_node_already_used(g):
    new = g.add_node(ops.LeakyRelu(0.1), g.node("act").inputs, name="act_leaky")
    g.add_node(ops.Tanh(), [new.output], name="reader")
    return "act", new, ("act_leaky",)


def a_graph_output(g):
    new = g.add_node(ops.LeakyRelu(0.1), g.node("act").inputs, name="act_leaky")
    g.set_outputs([*g.outputs, new.output])
    return "act", new, ("act_leaky",)


# (builds the replacement in the chain: (replaced node, new node, the new node's provenance after))
REPLACEMENTS = [fresh_stand_in, fresh_with_its_own_provenance, an_existing_node,
                a_node_inserted_after, a_node_already_used, a_graph_output]


@pytest.mark.parametrize("replacement", REPLACEMENTS, ids=lambda f: f.__name__)
def test_which_replacements_take_the_provenance_of_what_they_replace(replacement):
    g = chain()
    old, new, provenance = replacement(g)
    g.replace_all_uses(g.node(old).output, new.output)
    assert new.provenance == provenance


def test_a_constant_replaced_leaves_provenance_alone():
    g = Graph("constants")
    x = g.add_input("x", TensorType((3,)))
    c = g.add_constant("c", np.ones(3, np.float32))
    add = g.add_node(ops.Add(), [x, c], name="add")
    g.set_outputs([add.output])
    g.replace_all_uses(c, g.add_constant("d", np.ones(3, np.float32)))
    assert add.provenance == ("add",)


def net() -> Graph:
    with dsl.Builder("net", seed=0) as b:
        x = b.input("input", (1, 3, 8, 8))
        y = dsl.relu(dsl.conv2d(x, 4, 3, padding=1, name="conv1"), name="act")
        y = dsl.conv2d(y, 4, 3, padding=1, name="conv2")
        return b.output(dsl.relu(y, name="act2"))


def leaky_instead_of_relu(graph: Graph) -> PassResult:
    """A user's pass that is wrong on purpose: relu 'act' becomes a leaky relu."""
    g = graph.copy()
    node = g.node("act")
    new = g.add_node(ops.LeakyRelu(0.5), node.inputs, name="act_leaky")
    g.replace_all_uses(node.output, new.output)
    g.remove_node(node)
    return PassResult(g, True, {})


def test_first_divergent_names_the_layer_a_user_pass_broke():
    g = net()
    broken = go.optimize(g, [leaky_instead_of_relu]).graph
    x = {"input": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    report = go.compare(g, broken, x, per_layer=True)
    assert report.first_divergent == "act"
    assert report.layer("act").node == "act_leaky" and report.layer("conv1").ok
    assert go.bisect(g, [leaky_instead_of_relu], x) is not None
