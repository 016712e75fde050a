"""Max pools with indices and max unpooling beyond the op table: what the DSL and the importer
record (the gathered form only for indices a matching pool made), and the errors a user can
cause, each naming the node, the op and what was expected."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt as go
from graphopt import ops
from graphopt.errors import InputError, ModelFormatError, ShapeError, UnsupportedOpError
from graphopt.frontends import dsl


def unpool_graph(pool_kernel=2, unpool_kernel=2, shape=(1, 2, 6, 6), indices_input=False):
    with dsl.Builder("unpool") as b:
        x = b.input("input", shape)
        values, indices = dsl.max_pool2d(x, pool_kernel, name="pool", return_indices=True)
        if indices_input:
            indices = b.input("indices", values.shape, "int64")
        return b.output(dsl.max_unpool2d(values, indices, unpool_kernel, name="unpool"))


def test_return_indices_names_the_indices_node_and_gathers_where_the_pool_matches():
    g = unpool_graph()
    assert [(n.name, n.op_name) for n in g.nodes] == [
        ("pool", "max_pool2d"), ("pool.indices", "max_pool2d_indices"),
        ("unpool", "max_unpool2d")]
    assert g.node("unpool").op.window_indices


def unpool_of(shape, pool, unpool, output_size=None, indices_input=False):
    """A max pool (kernel, stride, padding) of `shape` and a max unpool of its values."""
    with dsl.Builder("case") as b:
        x = b.input("input", shape)
        values, indices = dsl.max_pool2d(x, *pool, return_indices=True)
        if indices_input:
            indices = b.input("indices", values.shape, "int64")
        g = b.output(dsl.max_unpool2d(values, indices, *unpool, output_size=output_size,
                                      name="unpool"))
    return g.node("unpool").op.window_indices


@pytest.mark.parametrize("case, gathered", [
    (dict(shape=(1, 2, 6, 6), pool=(2,), unpool=(2,)), True),
    (dict(shape=(1, 2, 7, 7), pool=(3, 2, 1), unpool=(3, 2, 1), output_size=(7, 7)), True),
    (dict(shape=(1, 2, 6, 6), pool=(2,), unpool=(2,), indices_input=True), False),
    # the pool's input is 7x7, the unpool's output 6x6: its indices name other places
    (dict(shape=(1, 2, 7, 7), pool=(3,), unpool=(3,)), False),
    (dict(shape=(1, 2, 6, 6), pool=(3, 2, 1), unpool=(2,), output_size=(6, 6)), False),
], ids=["same-geometry", "same-geometry-output-size", "graph-input", "other-size",
        "other-geometry"])
def test_only_a_matching_pools_indices_are_gathered(case, gathered):
    assert unpool_of(**case) == gathered


def test_scattered_and_gathered_unpooling_agree_compiled():
    """The same pool's indices through both lowerings, compiled, equal the interpreter."""
    with dsl.Builder("both") as b:
        x = b.input("input", (2, 3, 9, 8))
        values, indices = dsl.max_pool2d(x, 3, 2, padding=1, return_indices=True)
        gathered = dsl.max_unpool2d(values, indices, 3, 2, 1, output_size=(9, 8))
        scattered = b.apply(ops.MaxUnpool2d(3, 2, 1, (9, 8)), [values, indices], "scattered")
        g = b.output(gathered, scattered, names=["gathered_out", "scattered_out"])
    assert g.node("scattered").op.window_indices is False
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 8)).astype(np.float32)
    expected = go.interpret(g, {"input": x})
    np.testing.assert_array_equal(expected["gathered_out"], expected["scattered_out"])
    found = go.compile(g, "cpu").run({"input": x})
    for name in ("gathered_out", "scattered_out"):
        np.testing.assert_array_equal(found[name], expected[name])


def test_unpool_indices_of_another_dtype_or_shape_name_the_node():
    with pytest.raises(ShapeError, match=r"node 'up' \(max_unpool2d\): expected int64 indices "
                                         r"of x's shape \[1, 2, 2, 2\], found int32"):
        with dsl.Builder("bad") as b:
            x = b.input("input", (1, 2, 4, 4))
            dsl.max_unpool2d(dsl.max_pool2d(x, 2), b.input("i", (1, 2, 2, 2), "int32"), 2,
                             name="up")


def test_index_outside_the_output_is_an_input_error_naming_the_node():
    g = unpool_graph(indices_input=True)
    feeds = {"input": np.ones((1, 2, 6, 6), np.float32),
             "indices": np.full((1, 2, 3, 3), 72, np.int64)}
    with pytest.raises(InputError, match=r"node 'unpool' \(max_unpool2d\): index 72 lies "
                                         r"outside the output \[1, 2, 6, 6\] \(72 elements\)"):
        go.interpret(g, feeds)


@pytest.mark.parametrize("build, message", [
    (lambda: ops.MaxPool2dIndices(2, storage_order=2), "expected storage_order 0 or 1"),
    (lambda: ops.MaxUnpool2d(0), "expected positive kernel"),
    (lambda: ops.MaxUnpool2d(2, output_size=(1, 2, 3)), "output_size"),
])
def test_bad_attributes_are_shape_errors(build, message):
    with pytest.raises(ShapeError, match=message):
        build()


def model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(
        nodes, "case", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        initializer=[numpy_helper.from_array(a, n) for n, a in initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64


@pytest.mark.parametrize("proto, error, message", [
    (model([helper.make_node("MaxUnpool", ["x", "i", "s"], ["y"], name="unpool1",
                             kernel_shape=[2, 2], strides=[2, 2])],
           [("x", FLOAT, [1, 2, 2, 2]), ("i", INT64, [1, 2, 2, 2])], [("y", FLOAT, [1, 3, 4, 4])],
           [("s", np.array([1, 3, 4, 4], np.int64))]),
     ModelFormatError, r"node 'unpool1' \(MaxUnpool\): output_shape \[1, 3, 4, 4\] must be "
                       r"\[N, C, H, W\] with X's N and C"),
    (model([helper.make_node("MaxUnpool", ["x", "i"], ["y"], name="unpool2",
                             kernel_shape=[2, 2], strides=[2, 2])],
           [("x", FLOAT, [1, 2, 2, 2]), ("i", INT64, [1, 2, 3, 2])], [("y", FLOAT, [1, 2, 4, 4])]),
     ModelFormatError, r"node 'unpool2' \(MaxUnpool\): expected int64 indices of X's shape"),
    (model([helper.make_node("MaxPool", ["x"], ["v", "i"], name="pool1", kernel_shape=[2, 2],
                             storage_order=3)],
           [("x", FLOAT, [1, 2, 4, 4])], [("i", INT64, [1, 2, 2, 2])]),
     ModelFormatError, r"node 'pool1' \(MaxPool\): storage_order must be 0 or 1"),
    (model([helper.make_node("ReduceL2", ["x"], ["y"], name="l2", axes=[1])],
           [("x", TensorProto.INT32, [2, 3])], [("y", TensorProto.INT32, [2, 1])]),
     UnsupportedOpError, r"ReduceL2 \(input int32\[2,3\] \(floating-point inputs are "
                         r"supported\)\): 1 node \[l2\]"),
    (model([helper.make_node("ReduceMin", ["x"], ["y"], name="min", axes=[1])],
           [("x", FLOAT, [2, 0, 3])], [("y", FLOAT, [2, 1, 3])]),
     UnsupportedOpError, r"ReduceMin \(reducing the empty axes \[1\]"),
])
def test_malformed_and_unsupported_forms_name_the_node(proto, error, message):
    with pytest.raises(error, match=message):
        go.load_onnx(proto)


def test_new_ops_compile_for_cuda():
    """Compiled for CUDA (no GPU needed): every kernel gets a dlight rule, the scattered
    unpooling (indices from elsewhere) excepted, which TVM leaves as one serial loop."""
    with dsl.Builder("cuda_ops") as b:
        x = b.input("input", (1, 8, 12, 12))
        values, indices = dsl.max_pool2d(x, 2, name="pool", return_indices=True)
        y = dsl.max_unpool2d(values, indices, 2, name="unpool")
        y = dsl.pad(y, (1, 2, 3, 4), mode="wrap", name="wrap")
        reduced = [b.apply(op, [y], op.name) for op in (
            ops.ReduceMin((1,)), ops.ReduceProd((1,)), ops.ReduceL1((1,)), ops.ReduceL2((1,)),
            ops.ReduceSumSquare((1,)), ops.ReduceLogSumExp((1,)))]
        g = b.output(*reduced, names=[f"out{i}" for i in range(len(reduced))])
    report = go.compile(g, target="cuda").schedule_report
    assert "none" not in report.rules.values(), report.rules
    assert report.naive_heavy_kernels == []


@pytest.mark.parametrize("kind", dsl.REDUCTIONS)
def test_dsl_reduce_builds_each_kind(kind):
    with dsl.Builder("reduce") as b:
        x = b.input("input", (2, 3, 4))
        g = b.output(dsl.reduce(dsl.relu(x), kind, axes=(0, 2), keepdims=False, name="r"))
    assert g.node("r").op == ops.get_op(f"reduce_{kind}")((0, 2), False)
    assert g.outputs[0].shape == (3,)


def test_dsl_reduce_names_unknown_kinds_and_bad_axes():
    with dsl.Builder("reduce") as b:
        x = b.input("input", (2, 3, 4))
        with pytest.raises(go.GraphoptError, match="expected a reduction among mean, sum"):
            dsl.reduce(x, "median")
        with pytest.raises(ShapeError, match=r"node 'r' \(reduce_min\): expected axes in "
                                             r"\[-3, 3\), found \[3\]"):
            dsl.reduce(x, "min", axes=(3,), name="r")
        b.output(dsl.reduce(x, "min"))
