"""The DSL: the README's tiny net, shape errors that point at the user's line, user weights,
deterministic initialisation, batch_norm statistics, scopes and operators."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import graphopt as go
from graphopt import dsl
from graphopt.errors import GraphoptError, ShapeError

THIS_FILE = __file__


def tiny(batch=1, seed=0):
    """The README's example network."""
    with dsl.Builder("tiny", seed=seed) as b:
        x = b.input("input", (batch, 1, 28, 28))
        x = dsl.relu(dsl.conv2d(x, 8, kernel=3, padding=1))
        x = dsl.max_pool2d(x, 2)
        return b.output(dsl.linear(dsl.flatten(x), 10))


def here(offset: int = 1) -> str:
    """'this file:line' of the caller's line plus `offset`."""
    return f"{THIS_FILE}:{inspect.currentframe().f_back.f_lineno + offset}"


def test_tiny_net_builds():
    g = tiny(batch=2)
    go.verify(g)
    assert [n.op_name for n in g.topological_order()] == [
        "conv2d", "relu", "max_pool2d", "flatten", "linear"]
    assert g.input_names == ["input"] and g.output_names == ["output"]
    assert g.outputs[0].type == go.TensorType((2, 10))
    assert g.num_params() == (8 * 9 + 8) + (10 * 8 * 14 * 14 + 10)


def test_tiny_net_runs_and_compiles(rng):
    g = tiny()
    x = {"input": rng.standard_normal((1, 1, 28, 28)).astype(np.float32)}
    out = go.interpret(g, x)["output"]
    assert out.shape == (1, 10) and np.isfinite(out).all() and np.abs(out).max() > 0
    report = go.compare(g, go.compile(g, "cpu"), x)
    assert report.ok, str(report)


def test_shape_error_names_node_and_user_line():
    with dsl.Builder("bad") as b:
        x = b.input("x", (1, 3, 8, 8))
        y = b.input("y", (1, 4, 8, 8))
        with pytest.raises(ShapeError) as info:
            location = here()
            dsl.add(x, y, name="merge")
        b.output(x)
    message = str(info.value)
    assert info.value.node == "merge" and info.value.op == "add"
    assert message.startswith("node 'merge' (add): expected broadcastable shapes")
    assert f"(at {location})" in message


def test_shape_error_from_operator_points_at_user_line():
    with dsl.Builder("bad") as b:
        x = b.input("x", (1, 3, 8, 8))
        with b.scope("block"):
            h = dsl.conv2d(x, 4, kernel=3, name="conv")        # 6x6
            with pytest.raises(ShapeError) as info:
                location = here()
                h + x
        b.output(h)
    assert info.value.node == "block.add" and f"(at {location})" in str(info.value)


def test_linear_on_wrong_features_points_at_user_line():
    with dsl.Builder("bad") as b:
        x = b.input("x", (2, 12))
        with pytest.raises(ShapeError) as info:
            location = here()
            dsl.linear(x, 5, weight=np.zeros((5, 11), np.float32), name="fc")
        b.output(x)
    message = str(info.value)
    assert "node 'fc'" in message and "expected weight of shape (5, 12), found (5, 11)" in message
    assert f"(at {location})" in message


def test_conv_groups_mismatch_points_at_user_line():
    with dsl.Builder("bad") as b:
        x = b.input("x", (1, 3, 8, 8))
        with pytest.raises(ShapeError) as info:
            location = here()
            dsl.conv2d(x, 4, kernel=3, groups=2, name="gconv")
        b.output(x)
    assert info.value.node == "gconv" and info.value.op == "conv2d"
    assert "divisible by groups 2" in str(info.value) and f"(at {location})" in str(info.value)


def test_user_weights_are_used(rng):
    w = rng.standard_normal((4, 3, 1, 1))        # float64: cast to the input's dtype
    bias = rng.standard_normal(4).astype(np.float32)
    with dsl.Builder("user") as b:
        x = b.input("x", (1, 3, 5, 5))
        g = b.output(dsl.conv2d(x, 4, kernel=1, weight=w, bias_value=bias, name="proj"))
    weight, b_const = g.constants["proj.weight"], g.constants["proj.bias"]
    assert weight.dtype == "float32"
    np.testing.assert_array_equal(weight.data, w.astype(np.float32))
    np.testing.assert_array_equal(b_const.data, bias)
    xs = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    expected = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], xs) + bias[None, :, None, None]
    np.testing.assert_allclose(go.interpret(g, {"x": xs})["output"], expected, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("layer, kwargs, message", [
    (dsl.conv2d, dict(out_channels=4, kernel=3, weight=np.zeros((4, 3, 3, 3))),
     r"node 'c' \(conv2d\): expected weight of shape \(4, 2, 3, 3\), found \(4, 3, 3, 3\)"),
    (dsl.conv2d, dict(out_channels=4, kernel=3, bias_value=np.zeros(5)),
     r"expected bias of shape \(4,\), found \(5,\)"),
    (dsl.batch_norm, dict(var=np.ones(3)), r"expected running_var of shape \(2,\), found \(3,\)"),
    (dsl.conv_transpose2d, dict(out_channels=4, kernel=2, weight=np.zeros((4, 2, 2, 2))),
     r"expected weight of shape \(2, 4, 2, 2\), found \(4, 2, 2, 2\)"),
])
def test_wrong_shaped_user_weights_are_rejected(layer, kwargs, message):
    with dsl.Builder("user") as b:
        x = b.input("x", (1, 2, 6, 6))
        with pytest.raises(ShapeError, match=message) as info:
            location = here()
            layer(x, name="c", **kwargs)
        b.output(x)
    assert info.value.node == "c" and f"(at {location})" in str(info.value)
    assert info.value.op == layer.__name__


def test_output_name_taken_by_a_node_is_refused_clearly():
    with dsl.Builder("names") as b:
        x = b.input("x", (1, 2, 6, 6))
        y = dsl.relu(dsl.relu(x, name="first"), name="second")
        with pytest.raises(go.GraphoptError, match="output name 'first' is already the name of a node"):
            b.output(y, names=["first"])
        b.output(y)


def constants_of(g):
    return {name: c.data for name, c in g.constants.items()}


def test_same_seed_same_weights():
    a, b = constants_of(tiny(seed=3)), constants_of(tiny(seed=3))
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_different_seed_different_weights():
    a, b = constants_of(tiny(seed=0)), constants_of(tiny(seed=1))
    assert all(not np.array_equal(a[k], b[k]) for k in a)


def test_init_scale_is_he_normal():
    with dsl.Builder("init", seed=0) as b:
        x = b.input("x", (1, 64, 4, 4))
        g = b.output(dsl.conv2d(x, 256, kernel=3, name="c"))
    w = g.constants["c.weight"].data
    fan_in = 64 * 9
    assert abs(w.mean()) < 0.01 and abs(w.std() - np.sqrt(2 / fan_in)) < 0.05 * np.sqrt(2 / fan_in)
    bias = g.constants["c.bias"].data
    assert np.abs(bias).max() <= 1 / np.sqrt(fan_in) and bias.std() > 0


def test_batch_norm_statistics_are_non_trivial():
    with dsl.Builder("bn", seed=0) as b:
        x = b.input("x", (1, 16, 4, 4))
        g = b.output(dsl.batch_norm(x, name="bn"))
    c = {k.split(".")[-1]: v.data for k, v in g.constants.items()}
    assert set(c) == {"weight", "bias", "running_mean", "running_var"}
    assert (c["weight"] != 1).all() and (c["weight"] > 0).all()
    assert (c["running_var"] != 1).all() and (c["running_var"] > 0).all()
    assert (c["running_mean"] != 0).all() and (c["bias"] != 0).all()
    assert len(np.unique(c["running_mean"])) == 16
    # So batch_norm really changes its input (a fold that dropped it would be caught).
    xs = np.random.default_rng(0).standard_normal((1, 16, 4, 4)).astype(np.float32)
    assert np.abs(go.interpret(g, {"x": xs})["output"] - xs).max() > 0.1
    assert g.num_params() == 2 * 16


def test_scopes_prefix_names():
    with dsl.Builder("scoped") as b:
        x = b.input("x", (1, 3, 8, 8))
        with b.scope("layer1"), b.scope("0"):
            y = dsl.conv2d(x, 4, kernel=3, padding=1, name="conv1")
            y = dsl.relu(y)
        g = b.output(y)
    names = [n.name for n in g.nodes]
    assert names[0] == "layer1.0.conv1" and names[1].startswith("layer1.0.relu")
    assert {"layer1.0.conv1.weight", "layer1.0.conv1.bias"} <= set(g.constants)


def test_operators_with_numbers(rng):
    with dsl.Builder("ops") as b:
        x = b.input("x", (2, 3))
        g = b.output((2 * x + 1) / 4 - x, 1 - x)
    xs = rng.standard_normal((2, 3)).astype(np.float32)
    out = go.interpret(g, {"x": xs})
    assert list(out) == ["output0", "output1"]
    np.testing.assert_allclose(out["output0"], (2 * xs + 1) / 4 - xs, rtol=1e-6)
    np.testing.assert_allclose(out["output1"], 1 - xs, rtol=1e-6)


def test_output_names_and_passthrough():
    with dsl.Builder("io") as b:
        x = b.input("x", (2, 2))
        r = dsl.relu(x)
        g = b.output(x, r, r, names=["same", "act", "act_again"])
    assert g.output_names == ["same", "act", "act_again"]
    # An input, or a value returned twice, is routed through an identity node.
    assert [n.op_name for n in g.nodes] == ["relu", "identity", "identity"]
    out = go.interpret(go.verify(g), {"x": np.array([[-1, 2], [3, -4]], np.float32)})
    np.testing.assert_array_equal(out["same"], [[-1, 2], [3, -4]])
    np.testing.assert_array_equal(out["act"], [[0, 2], [3, 0]])
    np.testing.assert_array_equal(out["act"], out["act_again"])
    with pytest.raises(GraphoptError, match="expected 1 output names"), dsl.Builder("io") as b:
        b.output(b.input("x", (1,)), names=["a", "b"])


def test_layers_outside_a_builder_fail_clearly():
    with pytest.raises(GraphoptError, match=r"inside `with dsl.Builder\(...\)`"):
        dsl.relu(1.0)


@pytest.mark.parametrize("build, shape", [
    (lambda x: dsl.conv2d(x, 4, kernel=3, padding="same"), (1, 4, 9, 9)),
    (lambda x: dsl.conv2d(x, 4, kernel=4, padding="same", dilation=2), (1, 4, 9, 9)),
    (lambda x: dsl.conv2d(x, 4, kernel=4, padding="same", stride=2), (1, 4, 5, 5)),
    (lambda x: dsl.conv2d(x, 4, kernel=(3, 5), padding="valid"), (1, 4, 7, 5)),
    (lambda x: dsl.conv2d(x, 6, kernel=3, groups=3, stride=2), (1, 6, 4, 4)),
    (lambda x: dsl.conv_transpose2d(x, 2, kernel=4, stride=2, padding=1), (1, 2, 18, 18)),
    (lambda x: dsl.pad(x, (1, 2, 3, 4)), (1, 3, 13, 15)),
    (lambda x: dsl.resize(x, scale=2), (1, 3, 18, 18)),
    (lambda x: dsl.resize(x, size=(5, 7), mode="bilinear", align_corners=True), (1, 3, 5, 7)),
    (lambda x: dsl.avg_pool2d(x, 3, stride=2, ceil_mode=True), (1, 3, 4, 4)),
    (lambda x: dsl.concat([x, dsl.relu6(x)], axis=1), (1, 6, 9, 9)),
    (lambda x: dsl.reshape(dsl.transpose(x, (0, 2, 3, 1)), (-1, 3)), (81, 3)),
    (lambda x: dsl.softmax(dsl.flatten(dsl.global_avg_pool2d(x))), (1, 3)),
    (lambda x: dsl.lrn(dsl.leaky_relu(x), size=3), (1, 3, 9, 9)),
])
def test_layer_shapes(build, shape):
    with dsl.Builder("layers", seed=0) as b:
        g = b.output(build(b.input("x", (1, 3, 9, 9))))
    assert g.outputs[0].shape == shape
    out = go.interpret(go.verify(g), {"x": np.ones((1, 3, 9, 9), np.float32)})["output"]
    assert out.shape == shape and np.isfinite(out).all()


def test_resize_needs_size_or_scale():
    with pytest.raises(GraphoptError, match="needs a size or a scale"), dsl.Builder("r") as b:
        dsl.resize(b.input("x", (1, 1, 2, 2)))


@pytest.mark.parametrize("scale, mode, size", [(2, "nearest", (10, 10)), (2.0, "nearest", (10, 10)),
                                               (1.5, "bilinear", (7, 7)), ((2, 3), "nearest", (10, 15))])
def test_resize_by_scale_floors_like_pytorch(scale, mode, size):
    with dsl.Builder("resize") as b:
        y = dsl.resize(b.input("x", (1, 3, 5, 5)), scale=scale, mode=mode)
        b.output(y)
    assert y.shape == (1, 3, *size)


@pytest.mark.parametrize("kwargs, error", [(dict(), GraphoptError), (dict(scale=-1), ShapeError),
                                           (dict(scale=2, mode="cubic"), GraphoptError)])
def test_resize_bad_arguments_are_clear_errors(kwargs, error):
    with dsl.Builder("resize") as b:
        x = b.input("x", (1, 3, 5, 5))
        with pytest.raises(error, match="resize"):
            dsl.resize(x, **kwargs)
        b.output(x)


def conv_with_named_padding(shape, kernel, stride, dilation, groups, padding):
    """A one-conv graph with padding "same" or "valid", its weights and a random input."""
    with dsl.Builder("named_padding", seed=3) as b:
        x = b.input("input", shape)
        g = b.output(dsl.conv2d(x, 6, kernel, stride=stride, padding=padding, dilation=dilation,
                                groups=groups, name="conv"))
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    return g, g.constants["conv.weight"].data, g.constants["conv.bias"].data, x


# (input shape, kernel, dilation, groups, padding): torch's F.conv2d, stride 1
NAMED_PADDING = [
    ((1, 4, 9, 8), 3, 1, 1, "same"),
    ((1, 4, 9, 8), 4, 1, 2, "same"),          # even kernel: the odd pad goes bottom/right
    ((1, 4, 9, 8), 2, 1, 1, "same"),
    ((1, 4, 9, 8), 4, 2, 1, "same"),          # dilated even kernel: 6 pads, 3 on each side
    ((2, 4, 10, 7), (2, 3), (3, 2), 1, "same"),
    ((1, 4, 5, 5), 5, 1, 2, "same"),          # the kernel as large as the input
    ((1, 4, 9, 8), 1, 1, 1, "same"),
    ((1, 4, 9, 8), 5, 1, 1, "valid"),
    ((1, 4, 9, 8), (3, 2), (2, 3), 2, "valid"),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("shape, kernel, dilation, groups, padding", NAMED_PADDING)
def test_named_padding_is_torchs(shape, kernel, dilation, groups, padding):
    torch = pytest.importorskip("torch")
    g, w, bias, x = conv_with_named_padding(shape, kernel, 1, dilation, groups, padding)
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(
            torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias), padding=padding,
            dilation=dilation, groups=groups).numpy()
    found = go.interpret(g, {"input": x})["output"]
    assert found.shape == expected.shape
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-5)


# (input shape, kernel, stride, dilation): torch refuses "same" at a stride; graphopt's is
# ONNX's auto_pad SAME_UPPER (output = ceil(input / stride), the odd pad at the end)
STRIDED_SAME = [
    ((1, 2, 16, 15), 3, 2, 1),
    ((1, 2, 15, 16), 4, 3, 1),
    ((1, 2, 9, 10), 3, (2, 3), 2),
    ((1, 2, 7, 7), 1, 2, 1),
]


@pytest.mark.parametrize("shape, kernel, stride, dilation", STRIDED_SAME)
def test_same_padding_at_a_stride_is_onnx_same_upper(shape, kernel, stride, dilation):
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator
    g, w, bias, x = conv_with_named_padding(shape, kernel, stride, dilation, 1, "same")
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], auto_pad="SAME_UPPER",
                            strides=pair(stride), dilations=pair(dilation))
    model = helper.make_model(helper.make_graph(
        [node], "same_upper", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")]))
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    found = go.interpret(g, {"input": x})["output"]
    assert found.shape == expected.shape == (*shape[:1], 6, *(-(-n // s) for n, s in zip(
        shape[2:], pair(stride))))
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-5)


def test_two_layers_given_one_name_are_refused_naming_both():
    with pytest.raises(GraphoptError) as info, dsl.Builder("names") as b:
        x = b.input("x", (1, 2, 6, 6))
        first = here()
        y = dsl.conv2d(x, 2, kernel=3, name="c")
        second = here()
        dsl.conv2d(y, 2, kernel=3, name="c")
    assert (info.value.node, info.value.op) == ("c", "conv2d")
    assert f"the name 'c' (at {second}) is taken by node 'c' (conv2d, written at {first})" \
        in str(info.value)


def test_forgetting_the_output_is_refused():
    with pytest.raises(GraphoptError, match=r"graph 'tiny' has no outputs: call `b.output"):
        with dsl.Builder("tiny") as b:
            dsl.relu(b.input("input", (1, 4)))
