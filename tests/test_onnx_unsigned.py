"""ONNX Runtime as an exact reference for integer products: int8 operands rewritten as uint8
(`frontends.onnx_unsigned`) give the ONNX semantics' exact values on every x86 CPU, where
ONNX Runtime's own uint8 x int8 kernels saturate without VNNI."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.compare import onnxruntime_outputs
from graphopt.frontends.onnx_unsigned import unsigned_integer_operands

_rng = np.random.default_rng(7)
# Every pair of uint8 x int8 products near the limits: 255 * 127 * 2 = 64770 passes int16.
A = _rng.integers(200, 256, (4, 64)).astype(np.uint8)
B = np.where(_rng.random((64, 5)) < 0.5, 127, 120).astype(np.int8)


def model(nodes, inputs, initializers, output_type=TensorProto.INT32):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                                   a.shape) for n, a in inputs.items()],
        [helper.make_value_info("y", helper.make_tensor_type_proto(output_type, None))],
        initializer=[numpy_helper.from_array(np.asarray(a), n) for n, a in initializers.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)


def exact_matmul(a, b, a_zp, b_zp):
    return ((a.astype(np.int64) - a_zp) @ (b.astype(np.int64) - b_zp)).astype(np.int32)


@pytest.mark.parametrize("runtime", [False, True], ids=["weights", "runtime-operands"])
def test_matmul_integer_is_exact_where_int16_pairs_overflow(runtime):
    node = helper.make_node("MatMulInteger", ["a", "b", "a_zp", "b_zp"], ["y"])
    b_zp = np.int8(-3)
    inputs = {"a": A, "b": B} if runtime else {"a": A}
    m = model([node], inputs, {"a_zp": np.uint8(7), "b_zp": b_zp} | ({} if runtime else {"b": B}))
    rewritten = unsigned_integer_operands(m)
    onnx.checker.check_model(rewritten, full_check=True)
    [product] = [n for n in rewritten.graph.node if n.op_type == "MatMulInteger"]
    types = {t.name: t.data_type for t in rewritten.graph.initializer}
    if not runtime:   # the weight and its zero point become uint8 twins; the originals go
        assert types[product.input[1]] == types[product.input[3]] == TensorProto.UINT8
        assert not {"b", "b_zp"} & set(types)
    found = onnxruntime_outputs(m, inputs)["y"]
    np.testing.assert_array_equal(found, exact_matmul(A, B, 7, b_zp))


def test_omitted_zero_point_becomes_128():
    node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    m = model([node], {"a": A}, {"b": B})
    [product] = unsigned_integer_operands(m).graph.node
    assert len(product.input) == 4 and product.input[2] == ""
    np.testing.assert_array_equal(onnxruntime_outputs(m, {"a": A})["y"], exact_matmul(A, B, 0, 0))


def test_qlinear_conv_with_uint8_output_is_exact():
    x = _rng.integers(200, 256, (1, 32, 5, 5)).astype(np.uint8)
    w = np.where(_rng.random((4, 32, 3, 3)) < 0.5, 127, 126).astype(np.int8)
    scales = {"xs": np.float32(0.01), "ws": np.full(4, 0.002, np.float32), "ys": np.float32(2.0)}
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"],
                            pads=[1, 1, 1, 1])
    m = model([node], {"x": x}, {**scales, "xz": np.uint8(0), "w": w, "wz": np.zeros(4, np.int8),
                                 "yz": np.uint8(3)}, TensorProto.UINT8)
    acc = np.zeros((1, 4, 5, 5), np.int64)
    padded = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    for i in range(3):
        for j in range(3):
            acc += np.einsum("nchw,oc->nohw", padded[:, :, i:i + 5, j:j + 5], w[:, :, i, j])
    multiplier = (scales["xs"] * scales["ws"]) / scales["ys"]
    expected = np.clip(np.rint(acc * multiplier[None, :, None, None].astype(np.float64)) + 3, 0,
                       255)
    found = onnxruntime_outputs(m, {"x": x})["y"]
    # the float32 requantize may round a value that lands near .5 the other way
    assert np.abs(found.astype(np.int64) - expected).max() <= 1
    assert np.mean(found == expected) > 0.9


def test_dequantized_weights_of_a_conv_become_uint8():
    """The QDQ format: a DequantizeLinear reading int8 conv weights reads uint8 ones."""
    w = _rng.integers(-128, 128, (2, 3, 1, 1)).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=0),
             helper.make_node("Conv", ["x", "wf"], ["y"])]
    x = _rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    m = model(nodes, {"x": x}, {"w": w, "ws": np.float32([0.1, 0.2]), "wz": np.int8([0, 0])},
              TensorProto.FLOAT)
    rewritten = unsigned_integer_operands(m)
    dq = rewritten.graph.node[0]
    values = {t.name: numpy_helper.to_array(t) for t in rewritten.graph.initializer}
    assert values[dq.input[0]].dtype == values[dq.input[2]].dtype == np.uint8
    np.testing.assert_array_equal(values[dq.input[2]], [128, 128])
    weights = w.astype(np.float32) * np.float32([0.1, 0.2])[:, None, None, None]
    expected = np.einsum("nchw,oc->nohw", x, weights[:, :, 0, 0])
    np.testing.assert_allclose(onnxruntime_outputs(m, {"x": x})["y"], expected, rtol=1e-5,
                               atol=1e-6)


def test_models_without_int8_products_are_returned_as_they_are():
    int8_out = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"],
                                ["y"])
    a8 = A.astype(np.int16) - 128
    m = model([int8_out], {"a": a8.astype(np.int8)},
              {"as": np.float32(0.1), "az": np.int8(0), "b": B, "bs": np.float32(0.1),
               "bz": np.int8(0), "ys": np.float32(50.0), "yz": np.int8(0)}, TensorProto.INT8)
    assert unsigned_integer_operands(m) is m   # ONNX Runtime has int8 x int8 kernels only here
    floats = model([helper.make_node("Relu", ["x"], ["y"])],
                   {"x": np.zeros((2,), np.float32)}, {}, TensorProto.FLOAT)
    assert unsigned_integer_operands(floats) is floats


def test_an_unreadable_reference_model_is_named(tmp_path):
    from graphopt.errors import ModelFormatError
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07not a model")
    with pytest.raises(ModelFormatError, match="broken.onnx"):
        onnxruntime_outputs(bad, {})
    with pytest.raises(ModelFormatError, match="missing.onnx"):
        onnxruntime_outputs(tmp_path / "missing.onnx", {})


@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
def test_a_model_file_with_external_data_runs(tmp_path, int8):
    """A file whose weights live in external data: handed to ONNX Runtime by its path where
    nothing is rewritten, read whole where its int8 weights are."""
    if int8:
        m = model([helper.make_node("MatMulInteger", ["a", "b", "a_zp", "b_zp"], ["y"])],
                  {"a": A}, {"a_zp": np.uint8(7), "b_zp": np.int8(-3), "b": B})
        feeds, expected = {"a": A}, exact_matmul(A, B, 7, np.int8(-3))
    else:
        w = _rng.standard_normal((64, 5)).astype(np.float32)
        x = _rng.standard_normal((4, 64)).astype(np.float32)
        m = model([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": x}, {"w": w},
                  TensorProto.FLOAT)
        feeds, expected = {"x": x}, x @ w
    path = tmp_path / "model.onnx"
    onnx.save(m, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").stat().st_size > 0
    np.testing.assert_allclose(onnxruntime_outputs(path, feeds)["y"], expected, rtol=1e-5)
