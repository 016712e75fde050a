"""float16 and bfloat16: the interpreter's half-precision kernels, the cast op at its edges, the
convert_float16 / convert_bfloat16 passes (random graphs, keep lists, where the casts go),
go.quantize, tolerances, ONNX round trips, and compiled CPU and CUDA models."""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx.reference import ReferenceEvaluator

import graphopt as go
from graphopt import dsl, ops, runtime
from graphopt.compare import FLOAT_TOLERANCE, tolerance_for
from graphopt.ir import Graph, TensorType, is_float_dtype
from graphopt.passes import PASSES, PassResult, probe_inputs
from graphopt.passes.convert_float_precision import convert_precision
from graphopt.targets.tvm.compile import optimize_for_target
from graphopt.targets.tvm.options import CompileOptions

from conftest import add_op_case, input_feeds, one_node_graph
from test_onnx_export import structure
from test_passes_property import cnn_graphs

HALF = ["float16", "bfloat16"]
PROPERTY = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def half_net(batch=2):
    """Conv + batch norm + relu, max pool, a residual conv, avg pool, linear, softmax."""
    with dsl.Builder("half_net", seed=3) as b:
        x = b.input("input", (batch, 3, 12, 12))
        y = dsl.max_pool2d(dsl.relu(dsl.batch_norm(dsl.conv2d(x, 8, 3, padding=1))), 2)
        y = dsl.relu(dsl.add(dsl.conv2d(y, 8, 3, padding=1), y))
        y = dsl.avg_pool2d(y, 2)
        return b.output(dsl.softmax(dsl.linear(dsl.flatten(y), 10, name="fc")))


def casts(graph: Graph) -> list:
    return [n for n in graph.nodes if n.op_name == "cast"]


def assert_casts_at_boundaries(graph: Graph) -> None:
    """Each cast joins two precisions: it reads no cast, its users are no casts and compute in
    the dtype it casts to (or it is a graph output), and no value is cast twice to one dtype."""
    seen = set()
    for node in casts(graph):
        source, out = node.inputs[0], node.output
        assert source.dtype != out.dtype, node
        assert source.producer is None or source.producer.op_name != "cast", node
        for user in out.users:
            assert user.op_name != "cast", (node, user)
            assert all(o.dtype == out.dtype for o in user.outputs if is_float_dtype(o.dtype)), \
                (node, user)
        assert (source.name, out.dtype) not in seen, node
        seen.add((source.name, out.dtype))


def computes_in(node) -> set[str]:
    return {v.dtype for v in node.outputs if is_float_dtype(v.dtype)}


# ---- the interpreter's half-precision kernels ---------------------------------------------------
@dataclass(frozen=True)
class KernelCase:
    op: ops.Op
    inputs: tuple
    weights: tuple


def kernel_cases(rng):
    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)
    fused = ops.FusedConv2d(conv=ops.Conv2d(padding=1), activation=ops.LeakyRelu(0.1),
                            has_residual=True)
    return {"conv2d": KernelCase(ops.Conv2d(padding=1), (r(1, 16, 6, 6),), (r(8, 16, 3, 3), r(8))),
            "fused_conv2d": KernelCase(fused, (r(1, 16, 6, 6),), (r(16, 16, 3, 3), r(16),
                                                                  r(1, 16, 6, 6))),
            "linear": KernelCase(ops.Linear(), (r(3, 64),), (r(10, 64), r(10))),
            "avg_pool2d": KernelCase(ops.AvgPool2d((3, 3), (1, 1), (1, 1, 1, 1)),
                                     (r(1, 4, 6, 6),), ()),
            "global_avg_pool2d": KernelCase(ops.GlobalAvgPool2d(), (r(1, 4, 7, 7),), ()),
            "add": KernelCase(ops.Add(), (r(4, 5),), (r(4, 5),))}


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("op_name", ["conv2d", "fused_conv2d", "linear", "avg_pool2d",
                                     "global_avg_pool2d", "add"])
def test_half_kernels_compute_in_float32_and_round_once(op_name, dtype, rng):
    """A half node's result is its float32 computation on the same (half) values, rounded once
    to the half dtype: a fused conv rounds after its epilogue, not after the conv."""
    case = kernel_cases(rng)[op_name]
    half = [a.astype(dtype) for a in case.inputs + case.weights]
    n = len(case.inputs)
    found = go.interpret(one_node_graph(case.op, half[:n], half[n:]),
                         input_feeds("node", half[:n]))["node.out"]
    wide = [a.astype(np.float32) for a in half]
    expected = go.interpret(one_node_graph(case.op, wide[:n], wide[n:]),
                            input_feeds("node", wide[:n]))["node.out"]
    assert found.dtype == dtype
    np.testing.assert_array_equal(found.astype(np.float32), expected.astype(dtype).astype(np.float32))


def test_interpreter_refuses_a_kernel_result_of_the_wrong_dtype():
    @dataclass(frozen=True)
    class Widening(ops.Relu):   # numpy's bfloat16 matmul and clip return float32
        def reference(self, x):
            return x.astype(np.float32)
    g = one_node_graph(Widening(), [np.ones((2, 2), "bfloat16")])
    with pytest.raises(go.GraphoptError, match="node 'node'.*returned float32, expected bfloat16"):
        go.interpret(g, {"node.in0": np.ones((2, 2), "bfloat16")})


def test_float64_interpretation_keeps_the_rounding_of_casts():
    g = Graph("round_trip")
    x = g.add_input("x", TensorType((4,)))
    half = g.add_node(ops.Cast("float16"), [x], name="to_half").output
    g.set_outputs([g.add_node(ops.Cast("float32"), [half], name="back").output])
    feeds = {"x": np.array([1 + 2 ** -12, 1 / 3, 7.0, -1e-8], np.float32)}
    found = go.interpret(g, feeds, dtype=np.float64)[g.output_names[0]]
    assert found.dtype == np.float64
    np.testing.assert_array_equal(found, feeds["x"].astype(np.float16).astype(np.float64))


def test_cast_special_values_compiled_as_interpreted():
    """NaN, infinities, float16 overflow, ties and NaN -> bool: the CPU module equals the
    interpreter bit for bit (the table rows in test_ops cover finite values)."""
    x = np.array([np.nan, np.inf, -np.inf, 65519.0, 65520.0, -1e6, 1.00048828125, 1 + 2 ** -8,
                  3.3e38, 1e-30, -0.0, 0.0], np.float32)
    g = Graph("casts")
    for to in ("float16", "bfloat16", "bool"):
        add_op_case(g, f"to_{to}", ops.Cast(to), [x])
    g.set_outputs([v for n in g.nodes for v in n.outputs])
    feeds = {f"to_{to}.in0": x for to in ("float16", "bfloat16", "bool")}
    expected, found = go.interpret(g, feeds), go.compile(g, "cpu").run(feeds)
    for name, array in expected.items():
        assert found[name].dtype == array.dtype
        assert np.array_equal(found[name].astype(np.float64), array.astype(np.float64),
                              equal_nan=True), (name, found[name], array)
    assert expected["to_bool.out"].tolist()[:3] == [True, True, True]


# ---- the passes on random graphs ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", HALF)
@PROPERTY
@given(graph=cnn_graphs())
def test_conversion_keeps_the_interface_and_the_result_within_the_dtype(dtype, graph):
    result = PASSES[f"convert_{dtype}"](graph)
    converted = go.verify(result.graph)
    assert [(v.name, v.type) for v in converted.inputs] == [(v.name, v.type) for v in graph.inputs]
    assert [(v.name, v.type) for v in converted.outputs] == \
        [(v.name, v.type) for v in graph.outputs]
    report = go.compare(graph, converted, probe_inputs(graph), per_layer=True)
    assert report.ok and report.first_divergent is None, report
    assert all(o.tolerance == FLOAT_TOLERANCE[dtype] for o in report.outputs)
    # no keep list: every node computes in the half dtype; casts only at inputs and outputs
    assert all(computes_in(n) == {dtype} for n in converted.nodes if n.op_name != "cast")
    outputs = {id(v) for v in converted.outputs}
    assert all(c.inputs[0].producer is None or id(c.output) in outputs for c in casts(converted))
    assert_casts_at_boundaries(converted)
    again = PASSES[f"convert_{dtype}"](converted)
    assert not again.changed and again.graph is converted
    go.optimize(graph, [f"convert_{dtype}"], check=True)   # the manager's check allows it too


@pytest.mark.parametrize("dtype", HALF)
@PROPERTY
@given(graph=cnn_graphs(), data=st.data())
def test_kept_nodes_stay_float32_with_casts_only_around_them(dtype, graph, data):
    names = [n.name for n in graph.nodes]
    keep = data.draw(st.lists(st.sampled_from(names), max_size=3, unique=True))
    converted = go.verify(convert_precision(dtype, keep)(graph).graph)
    for node in converted.nodes:   # a name may be an op's too ("relu"): all of them stay
        kept = node.name in keep or node.op_name in keep
        if node.op_name != "cast":
            assert computes_in(node) == ({"float32"} if kept else {dtype}), node
    assert_casts_at_boundaries(converted)
    assert go.compare(graph, converted, probe_inputs(graph)).ok
    assert not convert_precision(dtype, keep)(converted).changed


# ---- where the casts go, what stays float32 -----------------------------------------------------
@pytest.mark.parametrize("dtype", HALF)
def test_resnet18_has_one_cast_per_input_and_per_output(dtype):
    g = go.zoo.resnet18()
    res = go.quantize(g, dtype)
    q = res.graph
    assert [(c.inputs[0].name, c.output.name) for c in casts(q)] == \
        [("input", f"input.{dtype}"), (f"output.{dtype}", "output")]
    assert all(computes_in(n) == {dtype} for n in q.nodes if n.op_name != "cast")
    assert "fold_batch_norm" in res.report and f"convert_{dtype}" in res.report
    report = go.compare(g, q, probe_inputs(g))
    assert report.ok and report["output"].max_rel > 1e-5, report   # converted, not exact
    assert report["output"].max_rel < FLOAT_TOLERANCE[dtype] / 4


def test_keep_names_nodes_original_nodes_and_ops():
    g = go.zoo.resnet18()
    q = go.quantize(g, "float16", keep=["fc", "layer1.0.bn1"]).graph
    kept = {n.name for n in q.nodes if n.op_name != "cast" and computes_in(n) == {"float32"}}
    # layer1.0.bn1 was folded and fused: the fused node standing for it stays float32
    assert kept == {"fc", "layer1.0.relu1.fused"}
    assert len(casts(q)) == 1 + 2 + 1    # the input, around the fused conv, before fc
    assert_casts_at_boundaries(q)
    by_op = go.quantize(g, "bfloat16", keep="linear").graph
    assert [n.name for n in by_op.nodes if computes_in(n) == {"float32"} and
            n.op_name != "cast"] == ["fc"]
    with pytest.raises(go.OptionError, match=r"keep names \['fc9'\].*nodes are conv1, bn1"):
        go.quantize(g, "float16", keep=["fc", "fc9"])
    with pytest.raises(go.OptionError, match="expected keep as node or op names"):
        go.quantize(g, "float16", keep=[3])


def test_softmax_and_constants_beyond_float16_stay_float32():
    with dsl.Builder("wide", seed=0) as b:
        x = b.input("input", (1, 4))
        y = dsl.linear(x, 6, name="fc1") * 1e5
        g = b.output(dsl.softmax(dsl.linear(y / 1e5, 3, name="fc2")))
    scaling = {n.name for n in g.nodes if n.op_name in ("mul", "div")}
    res = go.quantize(g, "float16", check=True)
    q = res.graph
    float32 = {n.name for n in q.nodes if n.op_name != "cast" and computes_in(n) == {"float32"}}
    assert float32 == scaling | {g.nodes[-1].name}   # * 1e5, / 1e5 (1e5 > 65504), softmax
    assert "beyond float16's range" in res.report and "softmax stays float32" in res.report
    assert_casts_at_boundaries(q)
    bf16 = go.quantize(g, "bfloat16").graph       # bfloat16 holds 1e5
    assert {n.name for n in bf16.nodes if computes_in(n) == {"float32"}} - \
        {c.name for c in casts(bf16)} == {g.nodes[-1].name}


def test_quantize_refuses_int8_and_unknown_dtypes():
    g = half_net()
    with pytest.raises(go.OptionError, match="int8.*needs a Calibration"):
        go.quantize(g, "int8")
    with pytest.raises(go.OptionError, match="expected dtype one of float16, bfloat16, int8"):
        go.quantize(g, "float8")
    with pytest.raises(ValueError, match="expected a dtype in"):
        convert_precision("float32")


def test_tolerance_follows_the_least_precise_dtype_computed():
    g = half_net()
    q = go.quantize(g, "bfloat16").graph
    assert tolerance_for("float32", g) == 1e-4
    assert tolerance_for("float32", g, q) == FLOAT_TOLERANCE["bfloat16"]
    assert tolerance_for("float16", g) == FLOAT_TOLERANCE["float16"]
    assert tolerance_for("int32", q) == 0.0


def test_the_check_still_catches_a_wrong_conversion():
    """The half tolerance is no blank cheque: a conversion that also scales a weight by 1.1
    fails the manager's check, naming the layer."""
    def convert_badly(graph):
        result = PASSES["convert_float16"](graph)
        bad = result.graph.copy()
        w = bad.node("fc").inputs[1]
        w.data = (w.data * 1.1).astype(w.dtype)
        return PassResult(bad, True)
    with pytest.raises(go.PassError, match="convert_badly.*changed the result.*'fc'"):
        go.optimize(half_net(), [convert_badly], check=True)


# ---- ONNX ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", HALF)
def test_onnx_round_trip(dtype):
    """Exported (bfloat16 at opset 22, where Conv and the pools take it), imported back unchanged,
    and run elsewhere: float16 by onnxruntime, bfloat16 by onnx's reference evaluator
    (onnxruntime has no CPU bfloat16 Conv)."""
    g = half_net()
    q = PASSES[f"convert_{dtype}"](g).graph    # unfused: fused convs export as their chain
    model = go.save_onnx(q)
    assert model.opset_import[0].version == (22 if dtype == "bfloat16" else 13)
    assert [n.op_type for n in model.graph.node].count("Cast") == 2
    assert structure(go.load_onnx(model)) == structure(q)
    feeds = probe_inputs(g)
    mine = go.interpret(q, feeds)["output"]
    if dtype == "float16":
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        theirs = session.run(None, feeds)[0]
    else:
        theirs = ReferenceEvaluator(model).run(None, feeds)[0]
    assert np.abs(theirs - mine).max() <= FLOAT_TOLERANCE[dtype] * np.abs(mine).max()


# ---- compiled ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("model", ["half_net", "lenet5"])
def test_compiled_cpu_matches_the_interpreter(model, dtype):
    g = half_net() if model == "half_net" else go.zoo.lenet5(batch=2)
    q = go.quantize(g, dtype).graph
    m = go.compile(q, "cpu")
    feeds = probe_inputs(g)
    assert go.compare(q, m, feeds).ok           # against the half graph in float64
    report = go.compare(g, m, feeds)            # against the float32 original
    assert report.ok and report.outputs[0].tolerance == FLOAT_TOLERANCE[dtype], report
    # half convolutions are the float32 kernels on widened operands (the tiled, pointwise,
    # depthwise, narrow or Winograd one); bfloat16 ones go to AMX tiles where they fill them,
    # and to vdpbf16ps on an AVX512-BF16 CPU without AMX (an image's few channels with the
    # kernel rows' taps as the pairs; the narrow rule's rows with them as the pairs)
    widened = ("direct", "pointwise", "depthwise", "narrow", "winograd")
    allowed = (*widened, "amx", "dpbf16", "dpbf16_taps", "narrow_dpbf16") \
        if dtype == "bfloat16" else widened
    for node in m.graph.nodes:
        if node.op_name in ("conv2d", "fused_conv2d"):
            conv = node.op.conv if node.op_name == "fused_conv2d" else node.op
            assert conv.algorithm in allowed, node



def winograd_shaped(size: int = 14, head: bool = True):
    """A 3x3 stride-1 conv of 128 channels (Winograd's shape) and relu; with `head`, pool and a
    linear layer after them."""
    with dsl.Builder("winograd_shaped", seed=0) as b:
        x = b.input("input", (1, 128, size, size))
        y = dsl.relu(dsl.conv2d(x, 128, 3, padding=1, name="conv"))
        if head:
            y = dsl.linear(dsl.flatten(dsl.global_avg_pool2d(y)), 32, name="fc")
        return b.output(y)


@pytest.mark.parametrize("dtype", HALF)
def test_half_layers_take_winograd_where_float32_does_but_not_onednn(dtype):
    """Half-precision convs run float32 kernels on widened operands; Winograd's is one of them
    (its ~1e-5 relative error is far below one half-precision rounding), oneDNN's is not."""
    graph = winograd_shaped()
    for kernels, algorithm in (("tvm", "winograd"), ("onednn", "onednn")):
        # an AVX-512 CPU without AMX or AVX512-BF16 (test_conv_bf16 covers those)
        options = CompileOptions(kernels=kernels, mcpu="cascadelake")
        plain = optimize_for_target(graph, "cpu", options)[0].graph
        assert {n.op.conv.algorithm for n in plain.nodes if n.op_name == "fused_conv2d"} == \
            {algorithm}                                   # float32 gets it...
        half = optimize_for_target(go.quantize(graph, dtype).graph, "cpu", options)[0].graph
        convs = [n.op.conv for n in half.nodes if n.op_name == "fused_conv2d"]
        dense = [n.op for n in half.nodes if n.op_name == "linear"]
        # ...half precision gets Winograd in both (oneDNN's float32 kernel is not one of its
        # kernels); linear layers pack their weights in their own dtype
        assert convs and all(c.algorithm == "winograd" and c.weight_block for c in convs)
        assert dense and all(d.weight_block for d in dense)


# (input channels, output channels, side, batch): F(4x4) over the whole plane (128 ch 28x28,
# written back through the register transpose in float16), by rows of tiles (32 ch 56x56),
# and on a plane of partial tiles at batch 2 (128 -> 64 ch 11x11: padding rows read by them)
HALF_WINOGRAD_SHAPES = [(128, 128, 28, 1), (32, 32, 56, 1), (128, 64, 11, 2)]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("shape", HALF_WINOGRAD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_half_winograd_convolutions_compute_what_the_interpreter_does(dtype, shape):
    """The host's Winograd kernel on a half-precision conv (the input widened a channel's rows at
    a time before the transforms, the transformed weight float32), built with bounds checks:
    the interpreter's outputs within one rounding, nearly all of them identical. bfloat16 convs
    take AMX tiles or vdpbf16ps where the host has them, so that case is built for an AVX-512
    CPU without either."""
    in_channels, out_channels, side, batch = shape
    with dsl.Builder("half_winograd", seed=0) as b:
        x = b.input("input", (batch, in_channels, side, side))
        graph = b.output(dsl.relu(dsl.conv2d(x, out_channels, 3, padding=1, name="conv")))
    graph = go.quantize(graph, dtype).graph
    flags = runtime.host_cpu_flags() or frozenset()
    mcpu = "cascadelake" if dtype == "bfloat16" and flags & {"amx_bf16", "avx512_bf16"} \
        else None
    model = go.compile(graph, "cpu", bounds_check=True, **({"mcpu": mcpu} if mcpu else {}))
    [conv] = [n.op.conv for n in model.graph.nodes if n.op_name == "fused_conv2d"]
    if conv.algorithm != "winograd":
        pytest.skip(f"this host's build computes the conv as {conv.algorithm}")
    feeds = probe_inputs(graph)
    [name] = [v.name for v in graph.outputs]
    found, expected = model.run(feeds)[name], go.interpret(graph, feeds)[name]
    one_rounding = 2.0 ** -(8 if dtype == "bfloat16" else 11)    # half an ulp, relative
    assert np.abs(found - expected).max() <= 2 * one_rounding * float(np.abs(expected).max())
    assert np.mean(found == expected) >= 0.95


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("rows", [1, 3])
def test_half_linear_layers_stream_half_precision_weights(dtype, rows):
    """A half-precision linear layer keeps its packed weight in its own dtype (half the bytes
    a batch-1 layer streams, half the library), widened to float32 in registers by the dense
    rule, on AVX2 and AVX-512, unless the weight, widened, is small enough to stay in cache
    (`ops.linear.WIDENED_WEIGHT_BYTES`: then it is widened at lowering); the host's build
    computes what the interpreter does."""
    from test_schedules import AVX2_CPU, AVX512_CPU, _scheduled_kernels
    from graphopt.ops.linear import WIDENED_WEIGHT_BYTES
    from graphopt.targets.tvm.cpu import cpu_assembly
    from graphopt.targets.tvm.schedules import SCHEDULE_ATTR
    with dsl.Builder("half_fc", seed=0) as b:
        x = b.input("input", (rows, 1024))
        y = dsl.relu(dsl.linear(x, 97, name="fc"))       # 1024 x 97 x 4 bytes widened
        graph = b.output(dsl.relu(dsl.linear(y, 50, name="small")))     # 97 x 50 x 4
    assert 97 * 50 * 4 <= WIDENED_WEIGHT_BYTES < 1024 * 97 * 4
    half = go.quantize(graph, dtype).graph
    for mcpu in (AVX2_CPU, AVX512_CPU):
        kernels = [f for name, f in sorted(_scheduled_kernels(half, mcpu).items())
                   if "matmul" in name]
        assert [f.attrs[SCHEDULE_ATTR] for f in kernels] == ["dense"] * 2
        # [N / block, K, block]
        packed = {int(p.shape[1]): str(p.dtype) for f in kernels for p in f.params
                  if len(p.shape) == 3}
        assert packed == {1024: dtype, 97: "float32"}, packed
    model = go.compile(half, threads=1)
    # the widening: float16 through F16C's conversion, bfloat16's bits shifted into float32's
    widen = r"vcvtph2ps" if dtype == "float16" else r"vpslld\s+\$16"
    assert re.search(widen, cpu_assembly(model.executable))
    assert go.compare(half, model, probe_inputs(half)).ok


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_narrow_convs(dtype):
    """Convs of an image's few channels and convs to a few maps take the narrow rule in half
    precision too, the input widened into the phase buffer (bounds-checked, interpreter's
    results)."""
    from test_schedules import AVX2_CPU
    with dsl.Builder("narrow_half", seed=0) as b:
        x = b.input("input", (1, 3, 20, 36))
        y = dsl.relu(dsl.conv2d(x, 16, 3, padding=1, name="stem"))     # a thin input
        graph = b.output(dsl.conv2d(y, 3, 3, stride=2, padding=1, name="maps"))   # 3 maps
    half = go.quantize(graph, dtype).graph
    model = go.compile(half, mcpu=AVX2_CPU, bounds_check=True)
    assert {getattr(n.op, "conv", n.op).algorithm for n in model.graph.nodes
            if n.op_name in ("conv2d", "fused_conv2d")} == {"narrow"}
    assert {rule for name, rule in model.schedules.items() if "conv2d" in name} == {"narrow"}
    assert go.compare(half, model, probe_inputs(half)).ok


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("shape, layer", [
    ((2, 17, 1, 1), lambda x: dsl.pad(x, (0, 2, 1, 1), mode="edge")),
    ((1, 3, 40, 1), lambda x: dsl.pad(x, (0, 8, 0, 7), mode="edge")),
    ((2, 2, 1, 1), lambda x: dsl.resize(x, size=(3, 3), mode="nearest"))],
    ids=["edge-pad-rows-of-4", "edge-pad-rows-of-16", "nearest-resize-of-1x1"])
def test_half_copies_of_one_value_per_row_build(dtype, shape, layer):
    """An edge pad of a one-column map and a nearest resize of a 1x1 map copy one value along
    each output row: in bfloat16 TVM's legalization failed on such a vector store, so the row
    stays scalar (bounds-checked, the interpreter's results)."""
    with dsl.Builder("copies_half", seed=0) as b:
        graph = b.output(layer(b.input("x", shape, dtype)))
    model = go.compile(graph, bounds_check=True)
    assert go.compare(graph, model, probe_inputs(graph)).ok


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_pointwise_convs(dtype):
    """1x1 convs in half precision take the pointwise rule (a GEMM over the plane), the input
    widened as the kernel reads it, the weight at lowering (bounds-checked, the interpreter's
    results): on the direct rule they made MobileNetV3 and EfficientNet slower in bfloat16
    than in float32."""
    from test_schedules import AVX2_CPU
    with dsl.Builder("pointwise_half", seed=0) as b:
        x = b.input("input", (1, 96, 16, 16))
        graph = b.output(dsl.relu6(dsl.conv2d(x, 40, 1, name="project")))
    half = go.quantize(graph, dtype).graph
    model = go.compile(half, mcpu=AVX2_CPU, bounds_check=True)
    assert {getattr(n.op, "conv", n.op).algorithm for n in model.graph.nodes
            if n.op_name in ("conv2d", "fused_conv2d")} == {"pointwise"}
    assert {rule for name, rule in model.schedules.items() if "conv2d" in name} == \
        {"pointwise"}
    assert go.compare(half, model, probe_inputs(half)).ok


def test_amx_input_copies_take_no_concatenation():
    """A concatenation (and the batch norm and relu after it, DenseNet's) feeding a conv on AMX
    tiles is computed by its own kernel, split per input, not inside the tiles' input copy,
    where each element picked its input by a chain of comparisons."""
    with dsl.Builder("dense_block", seed=0) as b:
        x = b.input("input", (1, 32, 14, 14))
        parts = [dsl.relu(dsl.conv2d(x, 32, 3, padding=1, name=f"c{i}")) for i in range(3)]
        # an input twice: the concatenation is copied, not computed in place
        y = dsl.relu(dsl.batch_norm(dsl.concat(parts + parts[:1], axis=1)))
        graph = b.output(dsl.conv2d(y, 64, 1, name="bottleneck"))
    half = go.quantize(graph, "bfloat16").graph
    model = go.compile(half, "cpu", mcpu="sapphirerapids")
    assert model.graph.node("bottleneck").op.algorithm == "amx"
    packs = [name for name in model.schedules if "amx_pack" in name]
    assert packs and not any("concat" in name for name in packs), model.schedules
    if "amx_bf16" in (runtime.host_cpu_flags() or ()):
        assert go.compare(half, model, probe_inputs(half)).ok


@pytest.mark.parametrize("dtype", HALF)
def test_cuda_compiles(dtype):
    from graphopt.targets.tvm import cuda
    m = go.compile(go.quantize(half_net(), dtype).graph, "cuda")
    source = cuda.cuda_source(m.executable)
    assert source.count("__global__") >= m.kernel_count()
    assert ("bfloat16" if dtype == "bfloat16" else "half") in source
    if shutil.which("nvcc"):
        assert cuda.fatbin_archs(cuda.compile_cuda_source(source, "sm_90")) == ["sm_90"]


def test_bfloat16_convolutions_on_amx_tiles():
    """Where the CPU has AMX-BF16 (compiled for sapphirerapids on any x86 host), bfloat16
    convolutions that fill the tiles run on tdpbf16ps, accumulating in float32 through the
    epilogue as the interpreter does; elsewhere they stay plain."""
    import re
    from graphopt.targets.tvm.cpu import cpu_assembly
    with dsl.Builder("amx_bf16", seed=0) as b:
        x = b.input("input", (2, 64, 14, 14))
        y = dsl.relu(dsl.batch_norm(dsl.conv2d(x, 64, 3, padding=1, name="c1")))
        y = dsl.relu(dsl.conv2d(y, 64, 3, stride=2, padding=1, name="c4"))   # 7 rows: odd
        z = dsl.conv2d(y, 48, 3, stride=2, padding=1, name="c2")      # 48 = 1.5 C tiles: padded
        w = dsl.conv2d(z, 40, 3, padding=1, name="c5")   # 64 x 64 for 48 x 40: plain
        graph = b.output(dsl.relu(dsl.add(dsl.conv2d(y, 64, 1, name="c3"), y)), w)
    half = go.quantize(graph, "bfloat16").graph
    m = go.compile(half, "cpu", mcpu="sapphirerapids")
    def algorithms(model):
        return {n.provenance[0]: getattr(n.op, "conv", n.op).algorithm for n in model.graph.nodes
                if n.op_name in ("conv2d", "fused_conv2d")}

    assert algorithms(m) == {"c1": "amx", "c2": "amx", "c3": "amx", "c4": "amx", "c5": "direct"}
    assert re.search(r"tdpbf16ps\s+%tmm", cpu_assembly(m.executable))
    # the tiles read back by the transposing epilogue rule, on planes of 7x7 (7 pixels a step)
    # and 4x4 (4), one with the residual; c1's (14x14), which only c4 reads, is computed in
    # c4's input copy from c1's tiles
    epilogues = [rule for name, rule in m.schedules.items() if "amx_epilogue" in name]
    assert epilogues == ["tile_epilogue"] * 3, m.schedules
    assert "amx_pack_epilogue" in m.schedules
    plain = go.compile(half, "cpu", mcpu="cascadelake")   # float32's kernels, widened
    assert algorithms(plain) == {"c1": "winograd", "c2": "direct", "c3": "direct",
                                 "c4": "direct", "c5": "direct"}
    if "amx_bf16" not in (runtime.host_cpu_flags() or ()):
        pytest.skip("this CPU has no AMX-BF16: the amx build is compile-checked only")
    feeds = probe_inputs(graph)
    report = go.compare(graph, m, feeds)
    assert report.ok, report
    expected = go.interpret(half, feeds)
    for name, array in m.run(feeds).items():
        scale = float(np.abs(expected[name].astype(np.float32)).max())
        assert np.abs(array.astype(np.float32) - expected[name].astype(np.float32)).max() <= \
            scale * 2 ** -7        # one bfloat16 rounding: the sums run in another order


@pytest.mark.slow       # dlight tensorizing one fp16 conv for CUDA: over a minute on 2 cores
def test_cuda_half_convolutions_run_on_tensor_cores():
    """dlight's Matmul rule tensorizes a float16 convolution with every GEMM side over 64
    (pixels, output channels, input channels x taps) into WMMA tensor-core tiles."""
    from graphopt.targets.tvm import cuda
    with dsl.Builder("tensor_cores", seed=0) as b:
        x = b.input("input", (1, 128, 28, 28))
        graph = b.output(dsl.relu(dsl.conv2d(x, 128, 3, padding=1, name="conv")))
    m = go.compile(go.quantize(graph, "float16").graph, "cuda")
    source = cuda.cuda_source(m.executable)
    assert "wmma::mma_sync" in source and "wmma::load_matrix_sync" in source
    assert m.schedule_report.counts().get("Matmul") == 1


def test_bfloat16_weights_and_io_through_an_exported_library(tmp_path):
    """numpy's DLPack has no bfloat16: the runtime copies its bits (weights as parameters, a
    bfloat16 input and output) and hands back bfloat16 arrays."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 6, 6)).astype("bfloat16")
    w = rng.standard_normal((8, 4, 3, 3)).astype("bfloat16")
    g = one_node_graph(ops.Conv2d(padding=1), [x], [w])
    m = go.compile(g, "cpu", weights="params")
    loaded = go.load(m.export(str(tmp_path / "bf16.so")))
    loaded.bind_weights(dict(m.weights))
    feeds = {"node.in0": x}
    found, compiled = loaded.run(feeds)["node.out"], m.run(feeds)["node.out"]
    assert found.dtype == "bfloat16" and np.array_equal(found, compiled)
    assert go.compare(g, loaded, feeds).ok


def test_exported_bfloat16_model_runs_with_only_the_tvm_runtime(tmp_path):
    """A model converted to bfloat16 (float32 at its interface, bfloat16 weights inside; its
    convolutions on AMX tiles where the host has AMX-BF16, for which the fresh process asks the
    kernel's permission) loads and runs in a fresh process that has the TVM runtime but not
    the compiler, with the in-process results."""
    from test_export import run_with_only_the_runtime
    with dsl.Builder("bf16_export", seed=0) as b:
        x = b.input("input", (2, 64, 8, 8))
        y = dsl.relu(dsl.batch_norm(dsl.conv2d(x, 64, 3, padding=1, name="c1")))
        y = dsl.max_pool2d(dsl.relu(dsl.conv2d(y, 64, 3, padding=1, name="c2")), 2)
        graph = b.output(dsl.linear(dsl.flatten(y), 10, name="fc"))
    model = go.compile(go.quantize(graph, "bfloat16").graph, "cpu")
    if "amx_bf16" in (runtime.host_cpu_flags() or ()):
        assert {n.op.conv.algorithm for n in model.graph.nodes
                if n.op_name == "fused_conv2d"} == {"amx"}
    feeds = probe_inputs(graph)
    path = str(tmp_path / "bf16_export.so")
    model.export(path)
    found = run_with_only_the_runtime(path, feeds, tmp_path)
    np.testing.assert_array_equal(found["output"], model.run(feeds)["output"])
    assert go.compare(graph, model, feeds).ok
