"""Models quantized by ONNX Runtime's own tool (`onnxruntime.quantization.quantize_static`, the
QDQ format it writes by default) import, interpret and compile with ONNX Runtime's results; its
QOperator format's contrib ops (QGemm, QLinearAveragePool) are named as unsupported."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_static)

import graphopt as go
from graphopt.compare import onnxruntime_outputs
from graphopt.errors import UnsupportedOpError

pytest.importorskip("tvm")


class Batches(CalibrationDataReader):
    def __init__(self, name: str, shape, count: int = 8):
        rng = np.random.default_rng(0)
        self.batches = iter([{name: rng.standard_normal(shape).astype(np.float32)}
                             for _ in range(count)])

    def get_next(self):
        return next(self.batches, None)


def quantized_lenet(folder, per_channel: bool, quant_format=QuantFormat.QDQ) -> tuple[str, str]:
    graph = go.zoo.lenet5(batch=1, seed=0)
    source, target = str(folder / "float.onnx"), str(folder / "int8.onnx")
    go.save_onnx(graph, source)
    x = graph.inputs[0]
    quantize_static(source, target, Batches(x.name, x.type.shape), quant_format=quant_format,
                    per_channel=per_channel, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return target, x.name


def activation_step(path: str) -> float:
    """The largest scale of a DequantizeLinear reading an activation (not a weight): one
    quantization step of the coarsest quantized value."""
    model = onnx.load(path)
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return max(float(np.max(initializers[n.input[1]])) for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] not in initializers)


@pytest.mark.parametrize("per_channel", [True, False])
def test_quantize_static_qdq_model_runs_as_onnxruntime_does(tmp_path, per_channel):
    path, name = quantized_lenet(tmp_path, per_channel)
    graph = go.load_onnx(path)
    ops = {n.op_name for n in graph.nodes}
    assert {"quantize_linear", "dequantize_linear"} <= ops
    compiled = go.compile(graph, "cpu")
    step = activation_step(path)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.standard_normal(graph.inputs[0].type.shape).astype(np.float32)
        # int8 weights run unsigned in ONNX Runtime: exact on CPUs without VNNI too
        expected = onnxruntime_outputs(path, {name: x})[graph.outputs[0].name]
        output = graph.outputs[0].name
        for found in (go.interpret(graph, {name: x})[output], compiled.run({name: x})[output]):
            np.testing.assert_allclose(found, expected, rtol=0, atol=step)


def test_quantize_static_qoperator_contrib_ops_are_named(tmp_path):
    path, _ = quantized_lenet(tmp_path, True, QuantFormat.QOperator)
    with pytest.raises(UnsupportedOpError, match="QGemm.*QLinearAveragePool"):
        go.load_onnx(path)


def test_a_quantized_concatenation_of_gated_halves_stays_small():
    """A torch network (1x1 convs, a mean subtracted, a sigmoid gate, halves split and
    concatenated back swapped) quantized by `quantize_static` (QDQ; `data/` holds it): blocks
    left beside the concatenation's pieces read across their scope, where TVM lists no
    consumer, and were inlined unmeasured, to megabytes of IR and minutes of build. Measured
    through a walk of the function now, every block stays within `INLINE_MAX_NODES`."""
    from pathlib import Path
    from graphopt.targets.tvm.schedules.common import INLINE_MAX_NODES
    from test_schedules import AVX512_CPU, _largest_store, _scheduled_kernels
    graph = go.load_onnx(Path(__file__).parent / "data" / "quantized_gated_halves.onnx")
    kernels = _scheduled_kernels(graph, AVX512_CPU)
    assert max(_largest_store(f) for f in kernels.values()) <= INLINE_MAX_NODES


def qdq_pool_read_twice() -> onnx.ModelProto:
    """What `quantize_static` writes for max(pool(x), 0.5 * pool(x)) after an average pool:
    QuantizeLinear then DequantizeLinear around the input, the pool and the product."""
    from onnx import TensorProto, helper, numpy_helper

    def qdq(name, source):
        return [helper.make_node("QuantizeLinear", [source, "s", "z"], [f"{name}_q"]),
                helper.make_node("DequantizeLinear", [f"{name}_q", "s", "z"], [name])]
    nodes = [*qdq("xd", "x"),
             helper.make_node("AveragePool", ["xd"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             *qdq("pd", "p"), helper.make_node("Mul", ["pd", "half"], ["m"]), *qdq("md", "m"),
             helper.make_node("Max", ["pd", "md"], ["y"])]
    constants = {"s": np.float32(0.02), "z": np.uint8(128), "half": np.float32(0.5)}
    graph = helper.make_graph(
        nodes, "pool_read_twice", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                 [1, 16, 8, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 4, 6])],
        initializer=[numpy_helper.from_array(v, n) for n, v in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_a_pool_read_by_two_chains_keeps_its_output():
    """The pool's columns pass computed the multiply chain in place of its own output
    (`reverse_compute_inline` moves a consumer into its producer even where the producer has
    other readers), and the maximum's loads of the pool were left without a writer: the build
    failed. Such a move is not made now."""
    model = qdq_pool_read_twice()
    graph = go.load_onnx(model)
    x = np.random.default_rng(0).standard_normal((1, 16, 8, 12)).astype(np.float32)
    step = 0.02   # an average of steps lands on half steps, which float32 rounds either way
    expected = onnxruntime_outputs(model, {"x": x})["y"]
    np.testing.assert_allclose(go.compile(graph).run({"x": x})["y"], expected, rtol=0,
                               atol=step * 1.01)
    np.testing.assert_allclose(go.interpret(graph, {"x": x})["y"], expected, rtol=0,
                               atol=step * 1.01)
