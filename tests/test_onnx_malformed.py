"""Malformed and hostile ONNX models: each kind of damage gives a GraphoptError of the expected
type whose message names the problem (never a raw traceback, never a hang); external data is
read only from inside the model's directory. A fuzz test mutates valid models' bytes and fields."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from graphopt.errors import GraphoptError, ModelFormatError, ShapeError
from graphopt.frontends.onnx import load_onnx


def valid_model() -> onnx.ModelProto:
    """conv -> relu -> flatten -> gemm, with named initializers and full type information."""
    rng = np.random.default_rng(0)
    inits = {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "conv.bias": rng.standard_normal(4).astype(np.float32),
             "fc.weight": rng.standard_normal((5, 64)).astype(np.float32),
             "fc.bias": rng.standard_normal(5).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], name="conv",
                              pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        initializer=[numpy_helper.from_array(a, n) for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def damaged(edit):
    model = valid_model()
    edit(model)
    return model


def node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def initializer(model, name):
    return next(t for t in model.graph.initializer if t.name == name)


def set_dims(model, value_name, dims):
    for v in list(model.graph.input) + list(model.graph.output):
        if v.name == value_name:
            for d, size in zip(v.type.tensor_type.shape.dim, dims):
                d.dim_value = size


def remove_initializer(model, name):
    model.graph.initializer.remove(initializer(model, name))


def make_cycle(model):
    node(model, "relu").input[0] = "f"          # relu reads flatten, which reads relu


def wrong_weight_rank(model):
    t = initializer(model, "conv.weight")
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).reshape(4, 3, 9), t.name))


def disagreeing_channels(model):
    t = initializer(model, "conv.weight")
    t.CopyFrom(numpy_helper.from_array(np.zeros((4, 2, 3, 3), np.float32), t.name))


def short_raw_data(model):
    t = initializer(model, "fc.bias")
    t.raw_data = t.raw_data[:-4]


def duplicate_output(model):
    node(model, "flatten").output[0] = "c"


def huge_constant_of_shape(model):
    model.graph.node.insert(0, helper.make_node(
        "ConstantOfShape", ["big_shape"], ["big"], name="bomb"))
    model.graph.node.insert(1, helper.make_node("Shape", ["big"], ["big_dims"], name="dims"))
    model.graph.initializer.append(numpy_helper.from_array(np.array([1 << 20, 1 << 20],
                                                                    np.int64), "big_shape"))


def huge_gather(model):
    model.graph.node.insert(0, helper.make_node("Gather", ["row", "zeros"], ["many"], name="bomb"))
    model.graph.node.insert(1, helper.make_node("Shape", ["many"], ["many_dims"], name="dims"))
    model.graph.initializer.extend([
        numpy_helper.from_array(np.zeros((1, 1 << 16), np.float32), "row"),
        numpy_helper.from_array(np.zeros(1 << 16, np.int64), "zeros")])


def invalid_utf8(marker: bytes) -> bytes:
    """The valid model's bytes with the last byte of `marker` (a name, same length) made 0xff:
    protobuf parses it, the field comes back as bytes instead of str."""
    data = valid_model().SerializeToString()
    assert data.count(marker) >= 1
    return data.replace(marker, marker[:-1] + b"\xff")


# (id, damage, expected error type, regex the message must match)
DAMAGE = [
    ("truncated_bytes", lambda: valid_model().SerializeToString()[:-40], ModelFormatError,
     "not a valid ONNX model|holds no graph|rejects"),
    ("garbage_bytes", lambda: b"\x08\x07\xff\xfe not a protobuf \x00" * 5, ModelFormatError,
     "not a valid ONNX model|holds no graph"),
    ("empty_bytes", lambda: b"", ModelFormatError, "holds no graph"),
    ("dangling_input", lambda: damaged(lambda m: node(m, "relu").input.__setitem__(0, "ghost")),
     ModelFormatError, r"node 'relu' \(Relu\): input 'ghost' .*dangling"),
    ("missing_initializer", lambda: damaged(lambda m: remove_initializer(m, "fc.weight")),
     ModelFormatError, r"node 'fc' \(Gemm\): input 'fc.weight' .*dangling"),
    ("cycle", lambda: damaged(make_cycle), ModelFormatError, r"cycle through nodes .*relu"),
    ("duplicate_output", lambda: damaged(duplicate_output), ModelFormatError,
     r"node 'flatten'.*'c' is defined twice"),
    ("wrong_rank", lambda: damaged(wrong_weight_rank), ModelFormatError,
     r"node 'conv' \(Conv\): weight float32\[4,3,9\] has rank 3, expected 4"),
    ("dims_disagree", lambda: damaged(disagreeing_channels), ShapeError,
     r"node 'conv' \(conv2d\): expected input channels 2"),
    ("declared_output_dtype_disagrees", lambda: damaged(
        lambda m: m.graph.output[0].type.tensor_type.__setattr__("elem_type", TensorProto.INT32)),
     ModelFormatError, r"'y' is declared int32 but computes float32\[1,5\]"),
    ("initializer_bytes_short", lambda: damaged(short_raw_data), ModelFormatError,
     "fc.bias"),
    ("opset_too_new", lambda: damaged(lambda m: m.opset_import[0].__setattr__("version", 999)),
     ModelFormatError, "opset 999"),
    ("unknown_auto_pad", lambda: damaged(lambda m: node(m, "conv").attribute.extend(
        [helper.make_attribute("auto_pad", "SIDEWAYS")])), ModelFormatError, "auto_pad"),
    ("custom_domain_op", lambda: damaged(lambda m: node(m, "relu").__setattr__(
        "domain", "com.example")), ModelFormatError, "com.example|domain"),
    ("folding_bomb", lambda: damaged(huge_constant_of_shape), ModelFormatError,
     r"folding this ConstantOfShape would create \d+ elements"),
    ("folding_bomb_gather", lambda: damaged(huge_gather), ModelFormatError,
     r"node 'bomb' \(Gather\): folding this Gather would create 4294967296 elements"),
    ("invalid_utf8_node_name", lambda: invalid_utf8(b"flatten"), ModelFormatError,
     r"model.graph.node\[2\].name is not valid UTF-8 text: b'flatte\\xff'"),
    ("invalid_utf8_value_name", lambda: invalid_utf8(b"fc.weight"), ModelFormatError,
     r"model.graph.node\[3\].input\[1\] is not valid UTF-8 text"),
    ("invalid_utf8_graph_name", lambda: invalid_utf8(b"small"), ModelFormatError,
     r"model.graph.name is not valid UTF-8 text"),
    ("invalid_utf8_op_type", lambda: invalid_utf8(b"Gemm"), ModelFormatError,
     r"model.graph.node\[3\].op_type is not valid UTF-8 text"),
    ("no_such_file", lambda: "/nonexistent/model.onnx", ModelFormatError, "cannot read"),
    ("wrong_source_type", lambda: 42, ModelFormatError, "expected a path, bytes"),
]


@pytest.mark.parametrize("row", DAMAGE, ids=[r[0] for r in DAMAGE])
def test_damage_is_reported(row):
    _, make, error, pattern = row
    with pytest.raises(error, match=pattern):
        load_onnx(make())


def test_at_least_ten_kinds_of_damage():
    assert len(DAMAGE) >= 10


# ---- external data --------------------------------------------------------------------------
def save_with_external_weights(directory, location="weights.bin"):
    model = valid_model()
    onnx.save_model(model, os.path.join(directory, "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    if location != "weights.bin":
        model = onnx.load_model(os.path.join(directory, "model.onnx"), load_external_data=False)
        for t in model.graph.initializer:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save_model(model, os.path.join(directory, "model.onnx"))
    return os.path.join(directory, "model.onnx")


def test_external_data_inside_the_directory_loads(tmp_path):
    graph = load_onnx(save_with_external_weights(tmp_path))
    np.testing.assert_array_equal(graph.constants["fc.bias"].data,
                                  numpy_helper.to_array(initializer(valid_model(), "fc.bias")))


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink_out", "beyond_end"])
def test_external_data_escaping_the_directory_is_refused(tmp_path, kind):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * 4096)
    if kind == "dotdot":
        path, pattern = save_with_external_weights(model_dir, "../secret.bin"), "'..'"
    elif kind == "absolute":
        path, pattern = save_with_external_weights(model_dir, str(secret)), "absolute path"
    elif kind == "symlink_out":
        os.symlink(secret, model_dir / "link.bin")
        path, pattern = save_with_external_weights(model_dir, "link.bin"), "outside the model"
    else:
        path = save_with_external_weights(model_dir)
        (model_dir / "weights.bin").write_bytes(b"\x00" * 16)   # shorter than the offsets
        pattern = "lies outside"
    with pytest.raises(ModelFormatError, match=pattern):
        load_onnx(path)


def test_external_data_needs_a_path(tmp_path):
    path = save_with_external_weights(tmp_path)
    with pytest.raises(ModelFormatError, match="load the model from its path"):
        load_onnx(open(path, "rb").read())


# ---- fuzz ----------------------------------------------------------------------------------
VALID_BYTES = valid_model().SerializeToString()


def load_or_graphopt_error(source) -> None:
    try:
        load_onnx(source)
    except GraphoptError:
        pass   # anything else propagates and fails the test


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(VALID_BYTES) - 1), st.integers(0, 255)),
                min_size=1, max_size=8),
       st.integers(1, len(VALID_BYTES)))
def test_fuzz_mutated_bytes(flips, keep):
    data = bytearray(VALID_BYTES[:keep] if keep < len(VALID_BYTES) - 64 else VALID_BYTES)
    for position, value in flips:
        if position < len(data):
            data[position] = value
    load_or_graphopt_error(bytes(data))


FIELD_EDITS = [
    lambda m, r: node(m, "conv").attribute[0].ints.__setitem__(r % 4, r - 20),       # pads
    lambda m, r: node(m, "conv").attribute[1].ints.__setitem__(r % 2, r - 5),        # strides
    lambda m, r: node(m, "fc").attribute[0].__setattr__("i", r - 10),                # transB
    lambda m, r: initializer(m, "fc.weight").dims.__setitem__(r % 2, r),
    lambda m, r: initializer(m, "conv.bias").__setattr__("data_type", r % 30),
    lambda m, r: set_dims(m, "x", [1 + r % 2, r % 5, r, 8]),
    lambda m, r: node(m, "flatten").attribute.extend([helper.make_attribute("axis", r - 10)]),
    lambda m, r: m.graph.node[r % 4].input.__setitem__(0, m.graph.node[(r // 4) % 4].output[0]),
    lambda m, r: m.graph.node[r % 4].__setattr__("op_type", ["Relu", "Conv", "Gemm", "Foo",
                                                               "Reshape", "Pad"][r % 6]),
    lambda m, r: m.graph.output[0].type.tensor_type.__setattr__("elem_type", r % 17),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(FIELD_EDITS) - 1), st.integers(0, 40)),
                min_size=1, max_size=4))
def test_fuzz_mutated_fields(edits):
    model = valid_model()
    for which, r in edits:
        FIELD_EDITS[which](model, r)
    load_or_graphopt_error(model)


def test_fuzz_targets_are_valid_before_damage():
    graph = load_onnx(VALID_BYTES)
    assert [n.name for n in graph.nodes] == ["conv", "relu", "flatten", "fc"]
    assert [n.op_name for n in graph.nodes] == ["conv2d", "relu", "flatten", "linear"]
