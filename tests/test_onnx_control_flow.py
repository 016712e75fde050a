"""ONNX Loop and Scan imported as unrolled dataflow and sequences as the tensors they name
(`frontends/onnx_control_flow.py`), checked against onnxruntime and torch.jit.script's exports,
interpreted and compiled; the forms that cannot unroll are named. (An If's own tests are in
test_onnx_import.py.)"""
from __future__ import annotations

import io
from typing import List

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import graphopt as go
from graphopt.errors import UnsupportedOpError
from graphopt.frontends.onnx_control_flow import MAX_UNROLLED_NODES
from graphopt.frontends.onnx_import import nodes_within

RNG = np.random.default_rng(7)
FLOAT = TensorProto.FLOAT


def info(name, shape, dtype=FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "control", inputs, outputs,
                              initializer=[numpy_helper.from_array(a, n) for n, a in initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8)


def check(proto, feeds, nodes_at_most=None):
    """The imported graph matches onnxruntime, interpreted and compiled."""
    graph = go.load_onnx(proto)
    if nodes_at_most is not None:
        assert len(graph.nodes) <= nodes_at_most
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    found = go.interpret(graph, feeds)
    compiled = go.compile(graph).run(feeds)
    for name, want in expected.items():
        np.testing.assert_allclose(found[name], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(compiled[name], want, rtol=1e-5, atol=1e-6)
    return graph


def loop_body(stop=()):
    """v_out = v_in * 0.5 + x (x read from the main graph), scan output relu(v_out) - i; the
    condition passed on, or computed by the `stop` nodes (which write cond_out)."""
    nodes = [helper.make_node("Mul", ["v_in", "half"], ["scaled"]),
             helper.make_node("Add", ["scaled", "x"], ["v_out"]),
             helper.make_node("Relu", ["v_out"], ["r"]),
             helper.make_node("Cast", ["i"], ["i_float"], to=FLOAT),
             helper.make_node("Sub", ["r", "i_float"], ["scan"]),
             *(stop or [helper.make_node("Identity", ["cond_in"], ["cond_out"])])]
    return helper.make_graph(
        nodes, "body", [info("i", [], TensorProto.INT64), info("cond_in", [], TensorProto.BOOL),
                        info("v_in", [2, 3])],
        [info("cond_out", [], TensorProto.BOOL), info("v_out", [2, 3]), info("scan", [2, 3])],
        initializer=[numpy_helper.from_array(np.float32(0.5), "half")])


def loop_model(body, trips=4, cond=True, steps=None):
    inputs = ["M" if trips is not None else "", "c" if cond is not None else "", "v0"]
    initializers = [("v0", np.ones((2, 3), np.float32))]
    if trips is not None:
        initializers.append(("M", np.array(trips, np.int64)))
    if cond is not None:
        initializers.append(("c", np.array(cond)))
    return model([helper.make_node("Loop", inputs, ["v", "scans"], body=body, name="loop")],
                 [info("x", [2, 3])], [info("v", [2, 3]), info("scans", [steps or trips, 2, 3])],
                 initializers)


@pytest.mark.parametrize("trips", [0, 1, 4])
def test_a_loop_with_a_known_trip_count_unrolls(trips):
    feeds = {"x": RNG.standard_normal((2, 3)).astype(np.float32)}
    proto = loop_model(loop_body(), trips)
    if trips == 0:   # no iteration: no scan output to stack
        with pytest.raises(UnsupportedOpError, match="loop that runs no iteration"):
            go.load_onnx(proto)
        return
    graph = check(proto, feeds)
    assert graph.outputs[1].shape == (trips, 2, 3)


def test_a_loop_stops_on_a_condition_computed_from_its_iteration():
    """`while i < 2` with no trip count: the condition folds at import, so it unrolls."""
    stop = [helper.make_node("Less", ["i", "two"], ["cond_out"])]
    body = loop_body(stop)
    body.initializer.append(numpy_helper.from_array(np.array(2, np.int64), "two"))
    graph = check(loop_model(body, trips=None, steps=3), {"x": RNG.standard_normal((2, 3)).astype(
        np.float32)})
    assert graph.outputs[1].shape == (3, 2, 3)


def test_loops_that_cannot_unroll_are_named():
    data_stop = [helper.make_node("ReduceSum", ["v_out"], ["total"], keepdims=0),
                 helper.make_node("Less", ["total", "limit"], ["cond_out"])]
    body = loop_body(data_stop)
    body.initializer.append(numpy_helper.from_array(np.float32(100), "limit"))
    with pytest.raises(UnsupportedOpError, match=r"Loop \(a loop condition computed at run "
                       r"time.*1 node \[loop\]"):
        go.load_onnx(loop_model(body))
    with pytest.raises(UnsupportedOpError, match=rf"unrolled into more than "
                       rf"{MAX_UNROLLED_NODES} nodes"):
        go.load_onnx(loop_model(loop_body(), trips=MAX_UNROLLED_NODES))
    proto = loop_model(loop_body())
    proto.graph.input.append(info("M", [], TensorProto.INT64))
    del proto.graph.initializer[1]
    with pytest.raises(UnsupportedOpError, match=r"a trip count M computed at run time"):
        go.load_onnx(proto)


def test_a_loop_body_with_an_if_on_its_iteration_takes_each_iterations_branch():
    """Names inside the body's own subgraphs are renamed per iteration too."""
    branch = {name: helper.make_graph([helper.make_node(op, ["v_in"], [f"{name}_out"])], name,
                                      [], [info(f"{name}_out", [2, 3])])
              for name, op in (("even", "Relu"), ("odd", "Neg"))}
    body = helper.make_graph(
        [helper.make_node("Mod", ["i", "two"], ["parity"]),
         helper.make_node("Equal", ["parity", "zero"], ["even"]),
         helper.make_node("If", ["even"], ["picked"], then_branch=branch["even"],
                          else_branch=branch["odd"]),
         helper.make_node("Add", ["picked", "x"], ["v_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["v_out"], ["scan"])],
        "body", [info("i", [], TensorProto.INT64), info("cond_in", [], TensorProto.BOOL),
                 info("v_in", [2, 3])],
        [info("cond_out", [], TensorProto.BOOL), info("v_out", [2, 3]), info("scan", [2, 3])],
        initializer=[numpy_helper.from_array(np.array(2, np.int64), "two"),
                     numpy_helper.from_array(np.array(0, np.int64), "zero")])
    graph = check(loop_model(body, trips=5), {"x": RNG.standard_normal((2, 3)).astype(
        np.float32)})
    assert sorted({n.op_name for n in graph.nodes}) == ["add", "concat", "identity", "neg",
                                                         "relu", "reshape"]
    assert sum(n.op_name == "relu" for n in graph.nodes) == 3   # iterations 0, 2 and 4


@pytest.mark.parametrize("in_axis, in_reverse, out_axis, out_reverse",
                         [(0, 0, 0, 0), (1, 1, 0, 0), (-1, 0, 1, 1), (1, 0, -1, 0)])
def test_a_scan_unrolls_along_its_axes_and_directions(in_axis, in_reverse, out_axis,
                                                      out_reverse):
    """A running sum (the state) and a scaled copy (the scan output) of each slice."""
    body = helper.make_graph(
        [helper.make_node("Add", ["sum_in", "slice"], ["sum_out"]),
         helper.make_node("Mul", ["slice", "sum_out"], ["product"])],
        "body", [info("sum_in", [2]), info("slice", [2])],
        [info("sum_out", [2]), info("product", [2])])
    node = helper.make_node("Scan", ["s0", "x"], ["total", "products"], body=body,
                            num_scan_inputs=1, scan_input_axes=[in_axis],
                            scan_input_directions=[in_reverse], scan_output_axes=[out_axis],
                            scan_output_directions=[out_reverse])
    shape = [4, 2] if in_axis == 0 else [2, 4]
    out_shape = [4, 2] if out_axis == 0 else [2, 4]
    proto = model([node], [info("x", shape)], [info("total", [2]), info("products", out_shape)],
                  [("s0", np.zeros(2, np.float32))])
    check(proto, {"x": RNG.standard_normal(shape).astype(np.float32)})


def test_sequence_ops_pick_and_stack_the_tensors_they_name():
    nodes = [helper.make_node("SequenceConstruct", ["a", "b", "c"], ["abc"]),
             helper.make_node("SequenceInsert", ["abc", "d", "one"], ["adbc"]),
             helper.make_node("SequenceErase", ["adbc", "minus_one"], ["adb"]),
             helper.make_node("SequenceAt", ["adb", "two"], ["picked"]),
             helper.make_node("SequenceLength", ["adb"], ["length"]),
             helper.make_node("Cast", ["length"], ["length_float"], to=FLOAT),
             helper.make_node("Mul", ["picked", "length_float"], ["y1"]),
             helper.make_node("ConcatFromSequence", ["adb"], ["y2"], axis=1),
             helper.make_node("ConcatFromSequence", ["adb"], ["y3"], axis=-1, new_axis=1),
             helper.make_node("SplitToSequence", ["y2", "sizes"], ["pieces"], axis=1),
             helper.make_node("SequenceAt", ["pieces", "one"], ["y4"]),
             helper.make_node("SplitToSequence", ["a"], ["rows"], axis=0, keepdims=0),
             helper.make_node("SequenceEmpty", [], ["empty"]),
             helper.make_node("SequenceInsert", ["empty", "c"], ["just_c"]),
             helper.make_node("SequenceAt", ["rows", "minus_one"], ["last_row"]),
             helper.make_node("SequenceAt", ["just_c", "zero"], ["c_again"]),
             helper.make_node("Add", ["c_again", "last_row"], ["y5"])]
    shape = [2, 3]
    proto = model(nodes, [info(n, shape) for n in "abcd"],
                  [info("y1", shape), info("y2", [2, 9]), info("y3", [2, 3, 3]),
                   info("y4", [2, 4]), info("y5", shape)],
                  [("one", np.array(1, np.int64)), ("two", np.array(2, np.int64)),
                   ("zero", np.array(0, np.int64)), ("minus_one", np.array(-1, np.int64)),
                   ("sizes", np.array([2, 4, 3], np.int64))])
    graph = check(proto, {n: RNG.standard_normal(shape).astype(np.float32) for n in "abcd"})
    assert not any(n.op_name.startswith("sequence") for n in graph.nodes)


def test_a_sequence_read_as_a_tensor_is_named():
    nodes = [helper.make_node("SequenceConstruct", ["a", "a"], ["aa"]),
             helper.make_node("Relu", ["aa"], ["y"], name="relu")]
    proto = model(nodes, [info("a", [2])], [info("y", [2])])
    with pytest.raises(UnsupportedOpError, match=r"Relu \(the sequence 'aa' read as a tensor\)"):
        go.load_onnx(proto)


class ScriptedLoop(torch.nn.Module):
    """torch.jit.script's export of a loop over a shape, a branch on the iteration inside and a
    list appended to: a Loop carrying a sequence, an If, ConcatFromSequence after."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        means: List[torch.Tensor] = []
        for i in range(x.shape[2] // 3):
            x = self.conv(x)
            if i % 2 == 0:
                x = torch.relu(x)
            else:
                x = torch.sigmoid(x)
            means.append(x.mean(dim=1))
        return x + torch.stack(means, 1).sum(1, keepdim=True)


class BranchOnTheMean(torch.nn.Module):
    """A data-dependent branch: torch.jit.script exports an If on a run-time condition."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if bool(y.mean() > 0):
            return torch.relu(y) * 2
        return torch.sigmoid(y) - 1


def scripted_export(module, x, dynamic=False) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(torch.jit.script(module), (x,), buffer, dynamo=False,
                      input_names=["input"], output_names=["output"], opset_version=17,
                      dynamic_axes={"input": {2: "h", 3: "w"}} if dynamic else None)
    return onnx.load_from_string(buffer.getvalue())


def test_a_scripted_loop_with_a_list_unrolls_and_matches_torch():
    torch.manual_seed(3)
    module = ScriptedLoop().eval()
    x = torch.randn(1, 4, 10, 9)
    proto = scripted_export(module, x, dynamic=True)
    assert {"Loop", "If", "SequenceEmpty", "ConcatFromSequence"} <= \
        {n.op_type for n in nodes_within(proto.graph)}
    graph = go.load_onnx(proto, input_shapes={"input": (1, 4, 10, 9)})
    with torch.no_grad():
        expected = module(x).numpy()
    np.testing.assert_allclose(go.interpret(graph, {"input": x.numpy()})["output"], expected,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(go.compile(graph).run({"input": x.numpy()})["output"], expected,
                               rtol=1e-5, atol=1e-6)
    assert sum(n.op_name == "conv2d" for n in graph.nodes) == 3   # 10 // 3 iterations


def test_a_scripted_branch_on_the_data_takes_the_branch_torch_takes():
    torch.manual_seed(2)
    module = BranchOnTheMean().eval()
    proto = scripted_export(module, torch.randn(1, 3, 8, 8))
    assert "If" in {n.op_type for n in proto.graph.node}
    graph = go.load_onnx(proto)
    compiled = go.compile(graph, "cpu")
    means = []
    for shift in (-3.0, 3.0):
        x = torch.randn(1, 3, 8, 8) + shift
        with torch.no_grad():
            expected = module(x).numpy()
            means.append(float(module.conv(x).mean()))
        np.testing.assert_allclose(go.interpret(graph, {"input": x.numpy()})["output"],
                                   expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(compiled.run({"input": x.numpy()})["output"], expected,
                                   rtol=1e-5, atol=1e-6)
    assert min(means) < 0 < max(means)   # both branches taken
