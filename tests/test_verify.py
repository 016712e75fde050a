"""The verifier catches each broken invariant with a VerifyError that names the culprit.

Each case corrupts a valid graph by hand, bypassing the editing methods (which refuse to)."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt import ops
from graphopt.errors import VerifyError
from graphopt.ir import Graph, Node, TensorType, Value
from graphopt.verify import is_valid, verify


def chain() -> Graph:
    """x -> conv(w) -> relu -> y."""
    g = Graph("chain")
    x = g.add_input("x", TensorType((1, 2, 5, 5)))
    w = g.add_constant("w", np.ones((3, 2, 3, 3), np.float32))
    c = g.add_node(ops.Conv2d(padding=1), [x, w], name="conv", output_names=["c"]).output
    y = g.add_node(ops.Relu(), [c], name="relu", output_names=["y"]).output
    g.set_outputs([y])
    return g


def test_valid_graph_passes():
    g = chain()
    assert verify(g) is g and is_valid(g)


def duplicate_value_name(g):
    g.node("relu").output.name = "c"


def duplicate_node_name(g):
    g.node("relu").name = "conv"


def input_reuses_constant_name(g):
    g.inputs[0].name = "w"


def cycle(g):
    conv, relu = g.node("conv"), g.node("relu")
    conv.inputs[0] = relu.output       # conv reads relu, which reads conv
    relu.output.users.append(conv)
    g.inputs[0].users.clear()


def dangling_use(g):
    stray = Value("stray", TensorType((1, 3, 5, 5)))
    relu = g.node("relu")
    relu.inputs = [stray]
    stray.users.append(relu)


def missing_user_link(g):
    g.value("c").users.clear()


def stale_user_link(g):
    g.value("x").users.append(g.node("relu"))    # relu reads c, not x


def user_outside_graph(g):
    ghost = Node("ghost", ops.Relu(), [g.value("c")], [])
    g.value("c").users.append(ghost)              # never added to the graph (or removed from it)


def user_listed_twice(g):
    g.value("c").users.append(g.node("relu"))


def wrong_output_type(g):
    g.node("relu").output.type = TensorType((1, 3, 5, 4))


def wrong_output_dtype(g):
    g.node("conv").output.type = TensorType((1, 3, 5, 5), "float16")


def constant_type_mismatch(g):
    g.constants["w"].data = np.ones((3, 2, 3, 3), np.float64)


def constant_without_data(g):
    g.constants["w"].data = None


def undefined_graph_output(g):
    g.outputs = [Value("ghost", TensorType((1,)))]


def output_not_owned(g):
    g.node("relu").outputs[0].producer = g.node("conv")


def inference_fails(g):
    g.node("conv").op = ops.Conv2d(groups=2, padding=1)   # 2 input channels -> weight must be [*, 1]


def input_with_producer(g):
    g.inputs[0].producer = g.node("conv")


CASES = [
    (duplicate_value_name, r"value name 'c' is defined twice \(SSA\), again by node 'relu'"),
    (duplicate_node_name, r"node 'conv' \(relu\): node name is used twice"),
    (input_reuses_constant_name, r"value name 'w' is defined twice \(SSA\), again by a constant"),
    (cycle, r"graph 'chain' has a cycle through nodes \['conv', 'relu'\]"),
    (dangling_use, r"node 'relu' \(relu\): input 0 \(%stray\) is not defined in the graph "
                   r"\(dangling use\)"),
    (missing_user_link, r"node 'relu' \(relu\): input %c does not list this node among its users"),
    (stale_user_link, r"node 'relu' \(relu\): %x lists this node among its users, but the node "
                      r"does not read it"),
    (user_outside_graph, r"node 'ghost' \(relu\): %c lists this node among its users, but the "
                         r"node is not in the graph"),
    (user_listed_twice, r"node 'relu' \(relu\): %c lists this node twice among its users"),
    (wrong_output_type, r"node 'relu' \(relu\): expected output types float32\[1,3,5,5\], found "
                        r"float32\[1,3,5,4\]"),
    (wrong_output_dtype, r"node 'conv' \(conv2d\): expected output types float32\[1,3,5,5\], "
                         r"found float16\[1,3,5,5\]"),
    (constant_type_mismatch, r"constant 'w' is declared float32\[3,2,3,3\] but holds "
                             r"float64\[3,2,3,3\]"),
    (constant_without_data, r"constant 'w' has no data"),
    (undefined_graph_output, r"graph output %ghost is not defined in the graph"),
    (output_not_owned, r"node 'relu' \(relu\): output %y does not point back at its node"),
    (inference_fails, r"node 'conv' \(conv2d\): shape/dtype inference fails: expected input "
                      r"channels 4"),
    (input_with_producer, r"graph input 'x' must have neither producer nor data"),
]


@pytest.mark.parametrize("corrupt, message", CASES, ids=[c.__name__ for c, _ in CASES])
def test_verifier_catches(corrupt, message):
    g = chain()
    corrupt(g)
    with pytest.raises(VerifyError, match=message):
        verify(g)
    assert not is_valid(g)


def test_compile_verifies_first():
    g = chain()
    wrong_output_type(g)
    with pytest.raises(VerifyError, match="node 'relu'"):
        go.compile(g, "cpu")


def test_cycle_also_stops_topological_order():
    g = chain()
    cycle(g)
    with pytest.raises(VerifyError, match="cycle"):
        g.topological_order()


def test_self_loop_is_a_cycle():
    g = Graph("loop")
    x = g.add_input("x", TensorType((2,)))
    node = g.add_node(ops.Relu(), [x], name="r", output_names=["v"])
    node.inputs = [node.output]
    node.output.users.append(node)
    x.users.clear()
    g.set_outputs([node.output])
    with pytest.raises(VerifyError, match=r"cycle through nodes \['r'\]"):
        verify(g)


def test_node_outside_graph_is_dangling():
    g = chain()
    other = Graph("other")
    z = other.add_input("z", TensorType((1, 3, 5, 5)))
    foreign = other.add_node(ops.Relu(), [z], name="f", output_names=["foreign"]).output
    relu = g.node("relu")
    relu.inputs = [foreign]
    foreign.users.append(relu)
    with pytest.raises(VerifyError, match=r"node 'relu' \(relu\): input 0 \(%foreign\) is not "
                                          "defined"):
        verify(g)


def test_unregistered_node_object_is_checked_like_any_other():
    g = chain()
    y = g.outputs[0]
    extra = Node("sig", ops.Sigmoid(), [y], [])
    extra.outputs = [Value("s", TensorType((1, 3, 5, 5), "int32"), producer=extra)]
    y.users.append(extra)
    g.nodes.append(extra)
    with pytest.raises(VerifyError, match=r"node 'sig' \(sigmoid\): expected output types "
                                          r"float32\[1,3,5,5\], found int32\[1,3,5,5\]"):
        verify(g)
