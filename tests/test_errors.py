"""Bad input raises a GraphoptError subclass that names what is wrong: runtime inputs (to the
interpreter and to a compiled module), op attributes and shapes, lowering and targets."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt import ops
from graphopt.errors import (GraphoptError, InputError, LoweringError, ShapeError,
                             UnsupportedOpError, VerifyError)
from graphopt.ir import Graph, TensorType

from conftest import one_node_graph


def two_input_graph() -> Graph:
    g = Graph("pair")
    a = g.add_input("image", TensorType((1, 3, 4, 4)))
    b = g.add_input("mask", TensorType((1, 1, 4, 4)))
    g.set_outputs([g.add_node(ops.Mul(), [a, b], output_names=["y"]).output])
    return g


def good_inputs() -> dict[str, np.ndarray]:
    return {"image": np.ones((1, 3, 4, 4), np.float32), "mask": np.ones((1, 1, 4, 4), np.float32)}


BAD_INPUTS = [
    ("wrong-shape", {"image": np.ones((1, 3, 4, 5), np.float32)},
     r"input 'image': expected float32\[1,3,4,4\], found float32\[1,3,4,5\]"),
    ("wrong-rank", {"mask": np.ones((1, 4, 4), np.float32)},
     r"input 'mask': expected float32\[1,1,4,4\], found float32\[1,4,4\]"),
    ("wrong-dtype", {"image": np.ones((1, 3, 4, 4), np.float64)},
     r"input 'image': expected float32\[1,3,4,4\], found float64\[1,3,4,4\]"),
    ("int-dtype", {"mask": np.ones((1, 1, 4, 4), np.int32)},
     r"input 'mask': expected float32\[1,1,4,4\], found int32\[1,1,4,4\]"),
    ("unsupported-dtype", {"mask": np.ones((1, 1, 4, 4), np.complex64)},
     r"input 'mask': expected float32\[1,1,4,4\], found complex64\[1,1,4,4\]"),
    ("missing", {"mask": None}, r"expected inputs \['image', 'mask'\].*; missing \['mask'\]"),
    ("unknown", {"imgae": np.ones((1, 3, 4, 4), np.float32)}, r"; unknown \['imgae'\]"),
]


def apply_change(change: dict) -> dict:
    feeds = good_inputs()
    for name, array in change.items():
        if array is None:
            del feeds[name]
        else:
            feeds[name] = array
    return feeds


@pytest.fixture(scope="module")
def compiled():
    return go.compile(two_input_graph(), "cpu")


@pytest.mark.parametrize("change, message", [c[1:] for c in BAD_INPUTS],
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_to_interpreter(change, message):
    with pytest.raises(InputError, match=message):
        go.interpret(two_input_graph(), apply_change(change))


@pytest.mark.parametrize("change, message", [c[1:] for c in BAD_INPUTS],
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_to_compiled_module(compiled, change, message):
    with pytest.raises(InputError, match=message):
        compiled.run(apply_change(change))


def test_compiled_module_runs_good_inputs(compiled):
    feeds = good_inputs()
    feeds["mask"] = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(compiled.run(feeds)["y"], go.interpret(two_input_graph(),
                                                                         feeds)["y"])
    np.testing.assert_array_equal(compiled(feeds)["y"], compiled.run(feeds)["y"])


def test_missing_and_unknown_together():
    feeds = {"mask": np.ones((1, 1, 4, 4), np.float32), "extra": np.ones(1)}
    with pytest.raises(InputError, match=r"missing \['image'\]; unknown \['extra'\]"):
        go.interpret(two_input_graph(), feeds)


def test_errors_are_graphopt_errors():
    for cls in (ShapeError, VerifyError, UnsupportedOpError, LoweringError, InputError):
        assert issubclass(cls, GraphoptError)
    e = ShapeError("expected 3, found 4", node="layer1.conv", op="conv2d")
    assert str(e) == "node 'layer1.conv' (conv2d): expected 3, found 4"
    assert (e.node, e.op, e.detail) == ("layer1.conv", "conv2d", "expected 3, found 4")
    assert str(GraphoptError("bad", op="relu")) == "relu: bad"


@pytest.mark.parametrize("make, message", [
    (lambda: ops.Conv2d(stride=0), "expected positive stride/dilation/groups"),
    (lambda: ops.Conv2d(padding=(1, 2, 3)), r"expected padding as an int, \(h, w\) or "
                                            r"\(top, left, bottom, right\), found \(1, 2, 3\)"),
    (lambda: ops.MaxPool2d(kernel=2, padding=2), "expected padding smaller than the kernel"),
    (lambda: ops.ConvTranspose2d(stride=2, output_padding=2), "expected output_padding smaller"),
    (lambda: ops.Resize((4, 4), mode="cubic"), "expected mode 'nearest' or 'bilinear', found "
                                               "'cubic'"),
    (lambda: ops.Resize((4, 4), nearest_mode="up"), "expected nearest_mode in"),
    (lambda: ops.Resize((0, 4)), r"expected a positive size, found \(0, 4\)"),
])
def test_bad_attributes(make, message):
    with pytest.raises(ShapeError, match=message):
        make()


X = np.zeros((1, 4, 6, 6), np.float32)


@pytest.mark.parametrize("op, inputs, constants, message", [
    (ops.Conv2d(), [X], [np.zeros((8, 3, 3, 3), np.float32)],
     r"expected input channels 3 \(weight \(8, 3, 3, 3\) x groups 1\), found 4"),
    (ops.Conv2d(groups=3), [X], [np.zeros((6, 1, 3, 3), np.float32)],
     "expected input channels 3"),
    (ops.Conv2d(), [X], [np.zeros((8, 4, 7, 7), np.float32)], "expected a kernel that fits"),
    (ops.Conv2d(), [X], [np.zeros((8, 4, 3, 3), np.float32), np.zeros(7, np.float32)],
     r"expected bias of shape \(8,\), found float32\[7\]"),
    (ops.Conv2d(), [X.astype(np.int32)], [np.zeros((8, 4, 3, 3), np.int32)],
     "expected a floating-point input"),
    (ops.Conv2d(), [X], [np.zeros((8, 4, 3, 3), np.float64)], "expected inputs of one dtype"),
    (ops.Linear(), [np.zeros((2, 5), np.float32)], [np.zeros((3, 4), np.float32)],
     r"expected 4 input features .* found 5"),
    (ops.Matmul(), [np.zeros((2, 5), np.float32), np.zeros((4, 3), np.float32)], [],
     "expected matching inner dimensions"),
    (ops.Matmul(), [np.zeros((2, 2, 5), np.float32), np.zeros((3, 5, 3), np.float32)], [],
     "expected broadcastable batch dimensions"),
    (ops.Concat(1), [X, np.zeros((1, 4, 5, 6), np.float32)], [],
     "expected shapes equal except on axis 1"),
    (ops.Concat(4), [X], [], r"expected axis in \[-4, 4\), found 4"),
    (ops.Reshape((5, -1)), [X], [], "to fit shape"),
    (ops.Reshape((-1, -1)), [X], [], "at most one -1"),
    (ops.Transpose((0, 1, 2)), [X], [], "expected a permutation of 0..3"),
    (ops.Softmax(4), [X], [], r"expected axis in \[-4, 4\), found 4"),
    (ops.Pad(((1, 1),)), [X], [], r"expected 4 \(before, after\) pairs, found 1"),
    (ops.BatchNorm(), [X], [np.ones(3, np.float32)] * 4, r"expected scale of shape \(4,\)"),
    (ops.MaxPool2d(kernel=7), [X], [], "expected a window that fits"),
    (ops.GlobalAvgPool2d(), [np.zeros((2, 3), np.float32)], [], "expected input x of rank 4"),
    (ops.Clip(2.0, 1.0), [X], [], "expected min <= max"),
    (ops.Dropout(1.0), [X], [], r"expected ratio in \[0, 1\)"),
    (ops.Relu(), [X, X], [], "expected 1 inputs, found 2"),
    (ops.Add(), [X, np.zeros((3, 6), np.float32)], [], "expected broadcastable shapes"),
])
def test_bad_shapes_name_node_and_op(op, inputs, constants, message):
    with pytest.raises(ShapeError, match=message) as info:
        one_node_graph(op, inputs, constants, name="culprit")
    assert info.value.node == "culprit" and info.value.op == op.name
    assert str(info.value).startswith(f"node 'culprit' ({op.name}): ")


def test_lowering_failure_names_the_node():
    class NoLowering(ops.Relu):
        def lower_tvm(self, bb, x):
            raise TypeError("no such relax op")
    g = one_node_graph(NoLowering(), [X], name="odd")
    with pytest.raises(LoweringError, match=r"node 'odd' \(relu\): TypeError: no such relax op"):
        go.compile(g, "cpu")


def test_lowering_with_wrong_type_is_caught():
    class WrongType(ops.Relu):
        def lower_tvm(self, bb, x):
            from tvm import relax
            return relax.op.sum(x, axis=[1])
    g = one_node_graph(WrongType(), [X], name="odd")
    with pytest.raises(LoweringError, match=r"node 'odd' \(relu\): lowering produced .*, expected "
                                            r"float32\[1,4,6,6\]"):
        go.compile(g, "cpu")


def test_unknown_target():
    with pytest.raises(GraphoptError, match="unknown target 'tpu'; expected one of cpu"):
        go.compile(one_node_graph(ops.Relu(), [X]), "tpu")
