"""int8 post-training quantization: the quantize_int8 pass and go.quantize(g, calib) on LeNet-5
and a residual conv net: which layers compute in integers, integer chains, accuracy against the
float graph, keep lists, missing ranges, compiled CPU models and ONNX Runtime."""
from __future__ import annotations

import dataclasses
import re
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import graphopt as go
from graphopt import dsl
from graphopt.compare import QUANTIZED_TOLERANCE, onnxruntime_outputs, tolerance_for
from graphopt.passes.quantize_int8 import quantize_int8

from conftest import skip_unless_this_cpu_runs
from test_passes_property import cnn_graphs

LAYERS = ("conv2d", "fused_conv2d", "linear", "matmul")
QLINEAR = ("qlinear_conv2d", "qlinear_matmul")


def residual_net():
    """conv + batch norm + relu, max pool, a residual conv + batch norm + add + relu, a strided
    conv + relu, flatten, linear: the default pipeline fuses it to three fused_conv2d and a
    linear."""
    with dsl.Builder("residual_net", seed=1) as b:
        x = b.input("input", (1, 3, 16, 16))
        y = dsl.relu(dsl.batch_norm(dsl.conv2d(x, 8, 3, padding=1, name="c1"), name="bn1"),
                     name="r1")
        y = dsl.max_pool2d(y, 3, stride=2, padding=1, name="pool")
        z = dsl.batch_norm(dsl.conv2d(y, 8, 3, padding=1, name="c2"), name="bn2")
        z = dsl.relu(dsl.add(z, y, name="add"), name="r2")
        z = dsl.relu(dsl.conv2d(z, 16, 3, stride=2, padding=1, name="c3"), name="r3")
        return b.output(dsl.linear(dsl.flatten(z, name="flat"), 10, name="fc"))


NETS = {"lenet5": go.zoo.lenet5, "residual_net": residual_net}


def batches(graph, count: int, seed: int):
    rng = np.random.default_rng(seed)
    return [{v.name: rng.standard_normal(v.shape).astype(np.float32) for v in graph.inputs}
            for _ in range(count)]


@lru_cache(maxsize=None)
def calibrated(model: str):
    graph = NETS[model]()
    return graph, go.calibrate(graph, batches(graph, 32, seed=0))


@lru_cache(maxsize=None)
def quantized(model: str, per_channel: bool = True):
    graph, calib = calibrated(model)
    return go.quantize(graph, calib, per_channel=per_channel)


def pool_graph(op, shape):
    with dsl.Builder("pool") as b:
        x = b.input("x", shape)
        return b.output(b.apply(op, [x], name="pool"), names=["y"])


def ops_of(graph) -> list[str]:
    return [n.op_name for n in graph.nodes]


@pytest.mark.parametrize("model", NETS)
def test_layers_compute_in_integers(model):
    graph, _ = calibrated(model)
    res = quantized(model)
    q = res.graph
    layers = sum(op in LAYERS for op in ops_of(go.optimize(graph).graph))
    assert sum(op in QLINEAR for op in ops_of(q)) == layers
    assert not any(op in LAYERS for op in ops_of(q))
    stats = next(r.stats for r in res.records if r.name == "quantize_int8" and r.changed)
    assert stats["nodes quantized"] == layers
    assert len(stats["quantized"]) == layers + stats.get("nodes on integers", 0)
    # weights are int8, per output channel
    convs = [n for n in q.nodes if n.op_name == "qlinear_conv2d"]
    assert all(n.inputs[3].dtype == "int8" and n.inputs[4].shape == (n.inputs[3].shape[0],)
               for n in convs)
    assert q.output_names == graph.output_names and q.inputs[0].type == graph.inputs[0].type
    # running the pass again changes nothing
    assert not quantize_int8(calibrated(model)[1], source=graph)(q).changed


def test_chains_stay_integer():
    q = quantized("residual_net").graph
    # one quantize after the input, one dequantize before the output: the layers read each
    # other's integers, the max pool and flatten compute on them (exactly; the flatten and the
    # linear layer's reshape merge)
    assert ops_of(q) == ["quantize_linear", "qlinear_conv2d", "max_pool2d", "qlinear_conv2d",
                         "qlinear_conv2d", "reshape", "qlinear_conv2d", "reshape",
                         "dequantize_linear"]
    pool = q.nodes[2]
    assert pool.output.dtype == "uint8"
    # the max pool on integers is the float max pool of their real values, exactly
    values = go.interpret(q, batches(q, 1, seed=6)[0], keep=True)
    scale, zero_point = (pool.inputs[0].producer.inputs[i].data for i in (6, 7))
    real = (values[pool.inputs[0].name].astype(np.float32) - zero_point) * scale
    pooled = (values[pool.output.name].astype(np.float32) - zero_point) * scale
    assert np.array_equal(pooled, go.interpret(pool_graph(pool.op, real.shape), {"x": real})["y"])
    residual = q.nodes[3]
    assert residual.op.has_residual and residual.inputs[-3] is q.nodes[2].output
    # LeNet-5: the avg pool after each conv is float, on a table of the tanh's 256 float
    # results for the conv's codes; the tanh between its linear layers is a table of its 256
    # quantized results (tabulate_quantized_activations); the output is dequantized once
    lenet = ops_of(quantized("lenet5").graph)
    assert lenet.count("quantize_linear") == 3 and lenet.count("dequantize_linear") == 1
    assert lenet.count("table_lookup") == 4 and "tanh" not in lenet
    for graph in (q, quantized("lenet5").graph):
        for n in graph.nodes:
            if n.op_name == "quantize_linear":
                assert n.inputs[0].producer is None or \
                    n.inputs[0].producer.op_name != "dequantize_linear"


@pytest.mark.parametrize("model", NETS)
@pytest.mark.parametrize("per_channel", [True, False])
def test_outputs_within_the_int8_tolerance(model, per_channel):
    graph, _ = calibrated(model)
    q = quantized(model, per_channel).graph
    assert tolerance_for("float32", q) == QUANTIZED_TOLERANCE == 2e-1
    assert tolerance_for("float32", graph) < QUANTIZED_TOLERANCE
    worst = 0.0
    for feeds in batches(graph, 8, seed=1):    # held out, same distribution
        report = go.compare(graph, q, feeds)
        assert report.ok, report
        worst = max(worst, report.outputs[0].max_rel)
    assert worst > 1e-3       # it does compute in integers


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graph=cnn_graphs())
def test_random_graphs_quantize_within_the_int8_tolerance(graph):
    """On random CNNs (convs with or without bias and batch norm, activations, pads, pools,
    residual adds, concats, a linear head, several outputs): the quantized graph verifies,
    keeps the interface, passes the pass manager's check and matches the float graph within
    the int8 tolerance on calibration-like inputs; every layer computes in integers or says
    why not; quantizing again changes nothing."""
    samples = batches(graph, 4, seed=0)
    calib = go.calibrate(graph, samples)
    res = go.quantize(graph, calib, check=True, inputs=samples[0])
    q = go.verify(res.graph)
    assert [(v.name, v.type) for v in q.inputs] == [(v.name, v.type) for v in graph.inputs]
    assert [(v.name, v.type) for v in q.outputs] == [(v.name, v.type) for v in graph.outputs]
    for feeds in samples[1:3]:
        report = go.compare(graph, q, feeds)
        assert report.ok, report
    records = [r for r in res.records if r.name == "quantize_int8"]
    layers = [n for n in go.optimize(graph).graph.nodes if n.op_name in LAYERS]
    integer = sum(op in QLINEAR for op in ops_of(q))
    stayed = sum(len(r.stats.get("misses", {}).get("quantize to int8", []))
                 for r in records[-1:])
    assert integer + sum(op in LAYERS for op in ops_of(q)) == len(layers)
    assert sum(op in LAYERS for op in ops_of(q)) <= stayed
    assert not quantize_int8(calib, source=graph)(q).changed


def test_a_bias_after_a_near_zero_input_keeps_its_value():
    """A linear layer reading a value that is zero up to rounding (a mean subtracted, then
    averaged): its input scale, about 1e-10, made the bias too many steps for int32, and the
    quantized layer's outputs came out as one step of its output scale instead of the bias.
    Its weight scales are raised instead (as ORT's quantizer raises them)."""
    with dsl.Builder("near_zero", seed=2) as b:
        x = dsl.relu(b.input("input", (1, 16, 7, 31)))
        centred = dsl.sub(x, dsl.reduce(x, "mean", axes=[2]))
        graph = b.output(dsl.linear(dsl.flatten(dsl.global_avg_pool2d(centred)), 16, name="fc"))
    samples = batches(graph, 2, seed=3)
    q = go.quantize(graph, go.calibrate(graph, samples)).graph
    assert "qlinear_conv2d" in ops_of(q)
    (bias,) = [v for n in q.nodes for v in n.inputs if v.name == "fc.bias.int32"]
    assert np.abs(bias.data.astype(np.int64)).max() < 2**31 - 1
    expected = go.interpret(graph, samples[0])["output"]
    assert np.abs(expected).max() > 0.05
    np.testing.assert_allclose(go.interpret(q, samples[0])["output"], expected,
                               atol=0.02 * np.abs(expected).max())
    model = go.compile(q)
    np.testing.assert_array_equal(model.run(samples[0])["output"],
                                  go.interpret(q, samples[0])["output"])


def test_check_uses_the_int8_tolerance():
    graph, calib = calibrated("residual_net")
    res = go.quantize(graph, calib, check=True)
    assert ops_of(res.graph).count("qlinear_conv2d") == 4


def test_keep_lists():
    graph, calib = calibrated("residual_net")
    # by original node name (c2 was fused with bn2, add and r2) and by op name
    q = go.quantize(graph, calib, keep=["c2", "linear"])
    ops = ops_of(q.graph)
    assert ops.count("qlinear_conv2d") == 2 and "fused_conv2d" in ops and "linear" in ops
    kept = next(r.stats for r in q.records if r.name == "quantize_int8" and r.changed)["misses"]
    reasons = dict(kept["quantize to int8"])
    assert {"fc", *(n.name for n in q.graph.nodes if n.op_name == "fused_conv2d")} <= \
        {name for name, why in reasons.items() if why == "kept in float32 (keep list)"}
    feeds = batches(graph, 1, seed=2)[0]
    assert go.compare(graph, q.graph, feeds).ok
    with pytest.raises(go.OptionError, match="keep names"):
        go.quantize(graph, calib, keep=["c9"])


def test_missing_ranges_leave_the_layer_float():
    graph, calib = calibrated("residual_net")
    partial = dataclasses.replace(calib, values={k: v for k, v in calib.values.items()
                                                 if k != graph.output_names[0]})
    q = go.quantize(graph, partial)
    assert ops_of(q.graph).count("linear") == 1
    misses = next(r.stats for r in q.records if r.name == "quantize_int8")["misses"]
    assert ("fc", "no calibrated range for %output") in misses["quantize to int8"]


def test_int8_options_are_checked():
    graph, calib = calibrated("residual_net")
    with pytest.raises(go.OptionError, match="needs a Calibration"):
        go.quantize(graph, "int8")
    with pytest.raises(go.OptionError, match="made on graph 'lenet5'"):
        go.quantize(graph, calibrated("lenet5")[1])
    with pytest.raises(go.OptionError, match="takes no calibration"):
        go.quantize(graph, calib, dtype="float16")
    with pytest.raises(go.OptionError, match="activation_dtype"):
        quantize_int8(calib, activation_dtype="int16")
    with pytest.raises(go.OptionError, match="reduce_range applies to int8"):
        go.quantize(graph, "float16", reduce_range=True)
    with pytest.raises(go.OptionError, match="reduce_range to be a bool"):
        quantize_int8(calib, reduce_range="yes")


@pytest.mark.parametrize("model", NETS)
def test_reduce_range_weights_have_7_bits_and_run_on_vpmaddubsw(model):
    """reduce_range=True: every integer weight in [-64, 64], each layer's largest at 64 (the
    scale is ORT's), outputs within the int8 tolerance; compiled for AVX2 every conv is the
    vpmaddubsw kernel, whose int16 pair sums these weights cannot saturate, but those the
    float32 rules compute as rows of vectors (LeNet-5's 1 -> 6 channel conv: `narrow`, exact in
    float32), and it computes what the interpreter does."""
    graph, calib = calibrated(model)
    q = go.quantize(graph, calib, reduce_range=True).graph
    weights = [n.inputs[3].data for n in q.nodes if n.op_name in QLINEAR]
    assert weights and all(np.abs(w).max() == 64 for w in weights)
    for feeds in batches(graph, 2, seed=1):
        assert go.compare(graph, q, feeds).ok
    m = go.compile(q, "cpu", mcpu="haswell")
    convs = [n.op.conv.algorithm for n in m.graph.nodes if n.op_name == "qlinear_conv2d"]
    assert "pmaddubsw" in convs and set(convs) <= {"pmaddubsw", "narrow"}, convs
    assert "reduce_range=True" not in m.report
    # 8-bit weights stay on vpmaddwd, and the compile's report says how to do better
    eight_bits = go.compile(quantized(model).graph, "cpu", mcpu="haswell")
    assert "pmaddwd" in {n.op.conv.algorithm for n in eight_bits.graph.nodes
                         if n.op_name == "qlinear_conv2d"}
    assert re.search(r"vpmaddubsw: 8-bit weights .* reduce_range=True", eight_bits.report)
    skip_unless_this_cpu_runs(m)
    for feeds in batches(graph, 2, seed=4):
        assert np.abs(m.run(feeds)["output"] - go.interpret(q, feeds)["output"]).max() <= \
            lsb(q) * 1.001


def test_matmul_by_a_constant_and_int8_activations():
    with dsl.Builder("matmul_net", seed=2) as b:
        x = b.input("input", (2, 4, 16))
        w = b.constant("w", np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))
        graph = b.output(dsl.relu(dsl.matmul(x, w, name="mm"), name="act"))
    calib = go.calibrate(graph, batches(graph, 16, seed=0))
    for dtype in ("uint8", "int8"):
        q = go.optimize(graph, [quantize_int8(calib, activation_dtype=dtype)]).graph
        assert "qlinear_matmul" in ops_of(q) and "matmul" not in ops_of(q)
        assert q.nodes[1].inputs[0].dtype == dtype
        assert go.compare(graph, q, batches(graph, 1, seed=3)[0]).ok


def mlp():
    """linear - relu - linear - clip(0, 6) - linear, and a linear whose output is also a graph
    output before its relu."""
    with dsl.Builder("mlp", seed=3) as b:
        x = b.input("input", (4, 32))
        h = dsl.relu(dsl.linear(x, 24, name="fc1"), name="act1")
        h = dsl.clip(dsl.linear(h, 16, name="fc2"), 0.0, 6.0, name="act2")
        y = dsl.linear(h, 8, name="fc3")
        return b.output(y, dsl.relu(y, name="act3"), names=["logits", "positive"])


def test_relu_and_clip_after_a_layer_become_its_epilogue():
    graph = mlp()
    calib = go.calibrate(graph, batches(graph, 16, seed=0))
    res = go.quantize(graph, calib)
    q = res.graph
    convs = [n for n in q.nodes if n.op_name == "qlinear_conv2d"]
    assert [n.op.activation for n in convs] == [go.ops.Relu(), go.ops.Clip(0.0, 6.0), None]
    # fc1 + act1 stands for both, its output quantized over act1's calibrated range (a relu's:
    # from 0, so its zero point is 0 and no step is spent on negatives)
    assert set(convs[0].provenance) == {"fc1", "act1"}
    scale, zero_point = calib.params(graph.node("act1").output.name)
    assert convs[0].inputs[6].data == scale and convs[0].inputs[7].data == zero_point == 0
    # no dequantize -> relu -> quantize: one quantize for the input; fc3's output is a graph
    # output, so act3 stays a float relu on its dequantized values
    assert ops_of(q).count("quantize_linear") == 1
    assert ops_of(q).count("relu") == 1 and ops_of(q).count("clip") == 0
    stats = next(r.stats for r in res.records if r.name == "quantize_int8" and r.changed)
    assert stats["activations in epilogues"] == 2
    for feeds in batches(graph, 4, seed=7):
        report = go.compare(graph, q, feeds)
        assert report.ok, report
    # kept activations stay float, their layer quantized over its own range
    kept = go.quantize(graph, calib, keep=["act2"]).graph
    assert ops_of(kept).count("clip") == 1
    assert [n.op.activation for n in kept.nodes if n.op_name == "qlinear_conv2d"] == \
        [go.ops.Relu(), None, None]
    # compiled and in ONNX Runtime, within an output step of the interpreter (both outputs
    # come from the dequantized logits)
    feeds = batches(graph, 1, seed=8)[0]
    mine = go.interpret(q, feeds)
    compiled = go.compile(q, "cpu").run(feeds)
    theirs = onnxruntime_outputs(go.save_onnx(q), feeds)   # int8 operands unsigned (exact)
    step = float(q.value("logits").producer.inputs[1].data)
    for other in (compiled, theirs):
        for name in q.output_names:
            assert np.abs(other[name] - mine[name]).max() <= step * 1.001


def fire_net(tap: str | None = None, seed: int = 3):
    """A SqueezeNet fire module: a squeeze conv, 1x1 and 3x3 expand convs (each + relu)
    concatenated, a max pool and a conv on the concat. `tap`: "output" makes the 3x3 branch a
    graph output too, "reader" has another conv read it, "pool" concatenates a max pool of
    the squeeze (no layer's output) as a third input."""
    with dsl.Builder("fire_net", seed=seed) as b:
        x = b.input("input", (1, 8, 12, 12))
        s = dsl.relu(dsl.conv2d(x, 8, 1, name="squeeze"), name="squeeze_relu")
        e1 = dsl.relu(dsl.conv2d(s, 16, 1, name="expand1x1"), name="e1_relu")
        e3 = dsl.relu(dsl.conv2d(s, 16, 3, padding=1, name="expand3x3"), name="e3_relu")
        branches = [e1, e3] + ([dsl.max_pool2d(s, 3, stride=1, padding=1, name="side")]
                               if tap == "pool" else [])
        y = dsl.max_pool2d(dsl.concat(branches, axis=1, name="cat"), 2, stride=2, name="pool")
        y = dsl.relu(dsl.conv2d(y, 16, 3, padding=1, name="head"), name="head_relu")
        if tap == "reader":
            y = y + dsl.max_pool2d(dsl.conv2d(e3, 16, 1, name="other"), 2, stride=2)
        return b.output(y, e3, names=["output", "branch"]) if tap == "output" else b.output(y)


def test_a_concat_of_layers_concatenates_their_integers(monkeypatch):
    """The expand convs requantize straight to the concat's calibrated scale and zero point
    (the same constants), the concat and the max pool after it compute on uint8, and no
    float tensor passes between the layers; within the int8 tolerance of the float graph, no
    less accurate than dequantizing, concatenating in float and quantizing again (which
    rounds twice); compiled exactly as the interpreter computes it, and in ONNX Runtime
    within an output step."""
    graph = fire_net()
    samples = batches(graph, 16, seed=0)
    calib = go.calibrate(graph, samples)
    q = go.quantize(graph, calib).graph
    assert ops_of(q) == ["quantize_linear", "qlinear_conv2d", "qlinear_conv2d",
                         "qlinear_conv2d", "concat", "max_pool2d", "qlinear_conv2d",
                         "dequantize_linear"]
    concat = q.nodes[4]
    assert concat.output.dtype == "uint8"
    expands = [v.producer for v in concat.inputs]
    assert [n.name for n in expands] == ["e1_relu.fused", "e3_relu.fused"]
    assert expands[0].inputs[6] is expands[1].inputs[6] and \
        expands[0].inputs[7] is expands[1].inputs[7]
    scale, zero_point = calib.params(graph.node("cat").output.name)
    assert expands[0].inputs[6].data == scale and expands[0].inputs[7].data == zero_point
    head = q.nodes[6]                      # reads the concat's integers with those steps
    assert head.inputs[1] is expands[0].inputs[6] and head.inputs[2] is expands[0].inputs[7]
    monkeypatch.setattr(go.passes.quantize_int8, "INTEGER_CONCATS", False)
    float_concat = go.quantize(graph, calib).graph
    assert ops_of(float_concat).count("dequantize_linear") == 3
    errors = {}
    for name, candidate in (("integers", q), ("float", float_concat)):
        worst = 0.0
        for feeds in batches(graph, 6, seed=9):
            report = go.compare(graph, candidate, feeds)
            assert report.ok, report
            worst += np.abs(go.interpret(candidate, feeds)["output"]
                            - go.interpret(graph, feeds)["output"]).mean()
        errors[name] = worst
    assert errors["integers"] <= errors["float"] * 1.02, errors
    compiled, exported = go.compile(q, "cpu"), go.save_onnx(q)
    for feeds in batches(graph, 2, seed=4):
        mine = go.interpret(q, feeds)["output"]
        assert np.array_equal(compiled.run(feeds)["output"], mine)
        theirs = onnxruntime_outputs(exported, feeds)["output"]
        assert np.abs(theirs - mine).max() <= lsb(q) * 1.001


@pytest.mark.parametrize("tap", ["output", "reader", "pool"])
def test_a_concat_requantizes_the_inputs_that_keep_their_own_scale(tap):
    """A branch that is also a graph output or that another layer reads keeps its own scale
    (the concat's would widen it for its other readers), as a max pool's output keeps its
    input's: the concat still computes on uint8, those inputs dequantized and quantized again
    to its scale (the float concat's rounding), the others requantizing straight to it."""
    graph = fire_net(tap)
    calib = go.calibrate(graph, batches(graph, 16, seed=0))
    q = go.quantize(graph, calib).graph
    concat = next(n for n in q.nodes if n.op_name == "concat")
    assert concat.output.dtype == "uint8"
    scale, zero_point = calib.params(graph.node("cat").output.name)
    feeds = batches(graph, 1, seed=9)[0]
    values = go.interpret(q, feeds, keep=True)
    requantized = []
    for v in concat.inputs:
        if v.producer.op_name == "qlinear_conv2d":
            assert (v.producer.inputs[6].data, v.producer.inputs[7].data) == (scale, zero_point)
            continue
        # dequantize -> quantize, which a later pass makes a lookup table of the 256 codes
        # where nothing else reads the dequantized tensor
        assert v.producer.op_name in ("table_lookup", "quantize_linear")
        source = v.producer.inputs[0]
        if v.producer.op_name == "quantize_linear":
            assert source.producer.op_name == "dequantize_linear" and tap == "output"
            source = source.producer.inputs[0]
        requantized.append(source.producer.name)
        _, own_scale, own_zero_point = go.ops.quant.output_quantization(source)
        real = (values[source.name].astype(np.float32) - own_zero_point) * own_scale
        expected = np.clip(np.rint(real / np.float32(scale)) + zero_point, 0, 255)
        assert np.array_equal(values[v.name], expected.astype(np.uint8))
    assert requantized == (["side"] if tap == "pool" else ["e3_relu.fused"])
    expand = q.node("e3_relu.fused")
    own = calib.params(graph.node("e3_relu").output.name)
    assert own != (scale, zero_point)
    assert (expand.inputs[6].data, expand.inputs[7].data) == (own if tap != "pool" else
                                                              (scale, zero_point))
    compiled = go.compile(q, "cpu")
    for feeds in batches(graph, 2, seed=9):
        report = go.compare(graph, q, feeds)
        assert report.ok, report
        mine, theirs = go.interpret(q, feeds), compiled.run(feeds)
        for name in q.output_names:      # "reader" adds two dequantized tensors in float
            np.testing.assert_allclose(theirs[name], mine[name], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tap", [None, "pool"])
def test_an_integer_concat_lines_up_layer_by_layer(tap):
    """compare(per_layer=True) reads an integer concat (and the max pool after it) in the
    scale and zero point its inputs share, a requantized one's table lookup saying none."""
    graph = fire_net(tap)
    q = go.quantize(graph, go.calibrate(graph, batches(graph, 16, seed=0))).graph
    rep = go.compare(graph, q, batches(graph, 1, seed=9)[0], per_layer=True)
    assert rep.ok and rep.first_divergent is None, rep.layer_table()
    rows = {layer.name: layer for layer in rep.layers}
    assert list(rows) == ["squeeze_relu", *(["side"] if tap else []), "e1_relu", "e3_relu",
                          "cat", "pool", "head_relu"]
    assert rows["cat"].op == "concat" and rows["pool"].op == "max_pool2d"
    assert all(0 < layer.max_rel < 0.05 for layer in rep.layers)


# ---- compiled and exported -----------------------------------------------------------------------
def lsb(q) -> float:
    """The output's quantization step: its dequantize's scale."""
    last = next(n for n in q.nodes if n.output.name == q.output_names[0])
    return float(last.inputs[1].data)


@pytest.mark.parametrize("model", NETS)
def test_compiled_cpu_matches_the_interpreter(model):
    graph, _ = calibrated(model)
    q = quantized(model).graph
    m = go.compile(q, "cpu")
    assert sum(op in QLINEAR for op in ops_of(m.graph)) == sum(op in QLINEAR for op in ops_of(q))
    for feeds in batches(graph, 2, seed=4):
        mine = go.interpret(q, feeds)["output"]
        assert np.abs(m.run(feeds)["output"] - mine).max() <= lsb(q) * 1.001


@pytest.mark.parametrize("batch", [1, 5])
def test_linear_rows_run_as_the_pixels_of_one_image(batch):
    """A quantized linear layer is a 1x1 conv of its rows as 1x1 images, [rows, in, 1, 1]; the
    CPU target computes it over the rows as one image's pixels, [1, in, 1, rows] (so that its
    kernel reads each weight vector once for every row: targets/tvm/passes/images_as_pixels.py),
    the quantized graph keeping its layout for per-layer comparisons; the outputs are the
    interpreter's within one step."""
    from graphopt.targets.tvm.compile import optimize_for_target
    from graphopt.targets.tvm.options import CompileOptions
    with dsl.Builder("mlp", seed=2) as b:
        x = b.input("input", (batch, 40))
        h = dsl.relu(dsl.linear(x, 48, name="fc1"), name="act1")
        graph = b.output(dsl.linear(h, 12, name="fc2"))
    q = go.quantize(graph, go.calibrate(graph, batches(graph, 8, seed=0))).graph
    convs = [n for n in q.nodes if n.op_name == "qlinear_conv2d"]
    assert [n.inputs[0].shape for n in convs] == [(batch, 40, 1, 1), (batch, 48, 1, 1)]
    target = optimize_for_target(q, "cpu", CompileOptions(mcpu="cascadelake"))[0].graph
    convs = [n for n in target.nodes if n.op_name == "qlinear_conv2d"]
    assert [n.inputs[0].shape for n in convs] == [(1, 40, 1, batch), (1, 48, 1, batch)] \
        if batch > 1 else [(1, 40, 1, 1), (1, 48, 1, 1)]
    m = go.compile(q, "cpu")
    for feeds in batches(graph, 2, seed=5):
        mine = go.interpret(q, feeds)["output"]
        assert np.abs(m.run(feeds)["output"] - mine).max() <= lsb(q) * 1.001
        assert np.array_equal(go.interpret(target, feeds)["output"], mine)
    report = go.compare(graph, q, batches(graph, 1, seed=6)[0], per_layer=True, target="cpu")
    assert report.ok and [layer.name for layer in report.layers] == ["act1", "fc2"]


def test_cuda_compiles_to_integer_kernels():
    """No GPU here: the CUDA source and nvcc's sm_90 binary. Every quantized layer is a kernel
    reading uint8 activations and int8 weights, accumulating in int32, writing uint8."""
    import re
    import shutil
    from graphopt.targets.tvm import cuda
    q = quantized("residual_net").graph
    m = go.compile(q, "cuda")
    source = cuda.cuda_source(m.executable)
    kernels = dict(re.findall(r"__global__ void __launch_bounds__\(\d+\) (\w+)\(([^)]*)\) \{",
                              source))
    layers = {name: params for name, params in kernels.items()
              if "conv2d" in name and "requantize" in name}
    assert len(layers) == ops_of(q).count("qlinear_conv2d") == 4
    for name, params in layers.items():
        assert "signed char* __restrict__ param_0_ptr" in params, name    # int8 weights
        assert params.count("uchar*") >= 2, name                          # uint8 in and out
        body = source[source.index(f"{name}({params}) {{"):]
        body = body[:body.find("extern \"C\"")]
        assert re.search(r"\bint\d? \w*conv2d\w*local", body), name   # int32 accumulators
    if shutil.which("nvcc"):
        assert cuda.fatbin_archs(cuda.compile_cuda_source(source, "sm_90")) == ["sm_90"]


def test_exported_int8_library_runs_with_only_the_tvm_runtime(tmp_path):
    """The quantized model's library (the host's integer kernels inside) loads and runs in a
    fresh process that has the TVM runtime but not the compiler, with the in-process results."""
    from test_export import run_with_only_the_runtime
    q = quantized("residual_net").graph
    model = go.compile(q, "cpu")
    path = str(tmp_path / "residual_net_int8.so")
    model.export(path)
    feeds = batches(q, 1, seed=9)[0]
    found = run_with_only_the_runtime(path, feeds, tmp_path)
    np.testing.assert_array_equal(found["output"], model.run(feeds)["output"])


@pytest.mark.parametrize("model", NETS)
def test_onnx_runs_in_onnxruntime(model):
    graph, _ = calibrated(model)
    q = quantized(model).graph
    model_proto = go.save_onnx(q)
    assert "QLinearConv" in [n.op_type for n in model_proto.graph.node]
    for feeds in batches(graph, 2, seed=5):   # int8 operands run unsigned in ONNX Runtime
        mine = go.interpret(q, feeds)["output"]
        theirs = onnxruntime_outputs(model_proto, feeds)["output"]
        assert np.abs(theirs - mine).max() <= lsb(q) * 1.001
