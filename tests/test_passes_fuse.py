"""fuse_conv_epilogue: conv + bias / residual add / activation (relu, relu6, leaky_relu, tanh,
sigmoid, hard_sigmoid, hard_swish, silu) into one fused_conv2d (hits and near misses), and the
fused node compiling to ONE TVM kernel that computes what the interpreter does."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt import dsl
from graphopt.passes import probe_inputs
from test_passes_cleanup import build as build_case
from test_passes_cleanup import op_names, run_pass


def fuse(graph):
    return run_pass("fuse_conv_epilogue", graph)


def build(fn, shape=(1, 4, 6, 6)):
    return build_case(fn, shape)


def conv(x, name="conv", **kw):
    return dsl.conv2d(x, 4, 3, padding=1, name=name, **kw)


HITS = {   # case -> (fused op string, provenance of the fused node)
    "relu": (lambda b, x: [dsl.relu(conv(x), name="act")],
             "fused_conv2d[conv2d(padding=(1, 1, 1, 1)) + relu]", ("conv", "act")),
    "relu6": (lambda b, x: [dsl.relu6(conv(x), name="act")],
              "fused_conv2d[conv2d(padding=(1, 1, 1, 1)) + clip(min=0.0, max=6.0)]",
              ("conv", "act")),
    "leaky_relu": (lambda b, x: [dsl.leaky_relu(conv(x, bias=False), 0.2, name="act")],
                   "fused_conv2d[conv2d(padding=(1, 1, 1, 1)) + leaky_relu(alpha=0.2)]",
                   ("conv", "act")),
    "residual + relu": (lambda b, x: [dsl.relu(dsl.add(x, conv(x), name="add"), name="act")],
                        "fused_conv2d[conv2d(padding=(1, 1, 1, 1)) + add + relu]",
                        ("conv", "add", "act")),
    "bias constant + relu": (
        lambda b, x: [dsl.relu(dsl.add(conv(x, bias=False),
                                       b.constant("c", np.arange(4.0, dtype="f4")[:, None, None]),
                                       name="bias"), name="act")],
        "fused_conv2d[conv2d(padding=(1, 1, 1, 1)) + relu]", ("conv", "bias", "act")),
    "tanh": (lambda b, x: [dsl.tanh(conv(x), name="act")],
             "fused_conv2d[conv2d(padding=(1, 1, 1, 1)) + tanh]", ("conv", "act")),
    "sigmoid": (lambda b, x: [dsl.sigmoid(conv(x), name="act")],
                "fused_conv2d[conv2d(padding=(1, 1, 1, 1)) + sigmoid]", ("conv", "act")),
    "hard_sigmoid": (lambda b, x: [dsl.hard_sigmoid(conv(x), 0.25, 0.4, name="act")],
                     "fused_conv2d[conv2d(padding=(1, 1, 1, 1)) + hard_sigmoid(alpha=0.25, "
                     "beta=0.4)]", ("conv", "act")),
    "hard_swish": (lambda b, x: [dsl.hard_swish(conv(x), name="act")],
                   "fused_conv2d[conv2d(padding=(1, 1, 1, 1)) + hard_swish]", ("conv", "act")),
    "silu": (lambda b, x: [dsl.silu(conv(x), name="act")],
             "fused_conv2d[conv2d(padding=(1, 1, 1, 1)) + silu]", ("conv", "act")),
    "silu, sigmoid first": (
        lambda b, x: (lambda c: [dsl.mul(dsl.sigmoid(c), c, name="act")])(conv(x)),
        "fused_conv2d[conv2d(padding=(1, 1, 1, 1)) + silu]", ("conv", "act")),
    "residual + silu": (lambda b, x: [dsl.silu(dsl.add(x, conv(x), name="add"), name="act")],
                        "fused_conv2d[conv2d(padding=(1, 1, 1, 1)) + add + silu]",
                        ("conv", "add", "act")),
    "depthwise + hard_swish": (
        lambda b, x: [dsl.hard_swish(dsl.conv2d(x, 4, 3, padding=1, groups=4, name="conv"),
                                     name="act")],
        "fused_conv2d[conv2d(padding=(1, 1, 1, 1), groups=4) + hard_swish]", ("conv", "act")),
    "two convs into one add": (
        lambda b, x: [dsl.relu(dsl.add(conv(x), conv(x, "conv2"), name="add"), name="act")],
        "fused_conv2d[conv2d(padding=(1, 1, 1, 1)) + add + relu]", ("conv", "add", "act")),
}


@pytest.mark.parametrize("case", HITS)
def test_fuse_conv_epilogue(case):
    fn, op_string, provenance = HITS[case]
    result = fuse(build(fn))
    fused = [n for n in result.graph.nodes if n.op_name == "fused_conv2d"]
    assert len(fused) == 1 and str(fused[0].op) == op_string
    assert fused[0].provenance == provenance
    assert result.graph.output_names == ["output"]


MISSES = {
    # The conv's output has a second user: fusing would lose it or compute the conv twice.
    "conv used twice": lambda b, x: (lambda c: [dsl.relu(c) + c])(conv(x)),
    "conv is a graph output": lambda b, x: (lambda c: [c, dsl.relu(c)])(conv(x)),
    "broadcasting residual": lambda b, x: [conv(x) + b.constant("r", np.ones((2, 4, 6, 6), "f4"))],
    "gelu (not an epilogue activation)": lambda b, x: [dsl.gelu(conv(x))],
    # silu needs both factors to read the same conv output, and no third use of it
    "conv times sigmoid of the input": lambda b, x: [conv(x) * dsl.sigmoid(x)],
    "silu with the conv used again": lambda b, x: (lambda c: [dsl.silu(c) + c])(conv(x)),
    "silu of a graph output": lambda b, x: (lambda c: [c, dsl.silu(c)])(conv(x)),
    "sigmoid used twice": lambda b, x: (lambda c: (lambda s: [c * s + s])(dsl.sigmoid(c)))(
        conv(x)),
    "conv_transpose": lambda b, x: [dsl.relu(dsl.conv_transpose2d(x, 4, 3))],
    "wrong bias shape": lambda b, x: [conv(x) + b.constant("c", np.ones((1, 1, 6, 6), "f4"))],
}


@pytest.mark.parametrize("case", MISSES)
def test_fuse_conv_epilogue_near_misses(case):
    g = build(MISSES[case])
    result = fuse(g)
    assert "fused_conv2d" not in op_names(result.graph)
    assert op_names(result.graph) == op_names(g)


def test_activation_before_the_residual_add_fuses_only_the_activation():
    g = build(lambda b, x: [dsl.add(dsl.relu(conv(x)), x)])
    result = fuse(g)
    assert op_names(result.graph) == ["fused_conv2d", "add"]
    assert str(result.graph.topological_order()[0].op).endswith("+ relu]")


def test_resnet_blocks_fuse_to_one_node_each():
    g = go.zoo.resnet18(image_size=32, num_classes=10)
    res = go.passes.optimize(g, ["fold_batch_norm", "fuse_conv_epilogue"], check=True)
    counts = {}
    for n in res.graph.nodes:
        counts[n.op_name] = counts.get(n.op_name, 0) + 1
    # 17 conv+bn+relu (stem and first convs) with 8 of them ending blocks with a residual add;
    # the 3 downsample conv+bn stay plain convolutions.
    assert counts == {"fused_conv2d": 17, "conv2d": 3, "max_pool2d": 1, "global_avg_pool2d": 1,
                      "flatten": 1, "linear": 1}
    residual = [n for n in res.graph.nodes if n.op_name == "fused_conv2d" and n.op.has_residual]
    assert len(residual) == 8
    assert residual[0].provenance == ("layer1.0.conv2", "layer1.0.bn2", "layer1.0.add",
                                      "layer1.0.relu2")


def test_fused_conv_compiles_to_one_kernel():
    """compile runs the fusion pass itself: conv + add + relu6 as written becomes one kernel.
    Without the fusion pass the same graph compiles to two kernels (the conv is opaque to TVM's
    fusion: graphopt decides what a conv kernel computes)."""
    g = build(lambda b, x: [dsl.relu6(dsl.add(conv(x), x))])
    assert op_names(fuse(g).graph) == ["fused_conv2d"]
    model = go.compile(g)
    assert model.kernel_count() == 1, model.kernels
    assert [n.op_name for n in model.graph.nodes] == ["fused_conv2d"]
    without_fusion = [p for p in go.passes.DEFAULT_PIPELINE if p != "fuse_conv_epilogue"]
    unfused = go.compile(g, passes=without_fusion)
    assert unfused.kernel_count() == 2, unfused.kernels
    x = probe_inputs(g)
    assert go.compare(g, model, x).ok and go.compare(g, unfused, x).ok


def test_compile_report_lists_the_passes():
    g = build(lambda b, x: [dsl.relu(conv(x))])
    model = go.compile(g)
    assert "fuse_conv_epilogue" in model.report and "select_conv_algorithm" in model.report
    bare = go.compile(g, passes=()).report
    assert "fuse_conv_epilogue" not in bare and "select_conv_algorithm" in bare
    no_passes = go.compile(g, passes=(), target_passes=False)
    assert no_passes.report.count("\n") == 1   # title and header: no pass ran
    assert no_passes.schedules == {"fused_conv2d": "generic", "relu": "generic"}   # plain
    assert go.compare(g, no_passes, probe_inputs(g)).ok


def test_a_pass_reaches_the_compiled_code():
    """A pass given to compile changes what is compiled: doubling the conv weight doubles the
    compiled model's output (a relu commutes with the positive scale)."""
    def double_conv_weights(graph):
        result = graph.copy()
        for node in result.nodes:
            if node.op_name == "conv2d":
                weight = node.inputs[1]
                doubled = result.add_constant(f"{weight.name}.doubled", weight.data * 2)
                bias = result.add_constant(f"{node.inputs[2].name}.doubled",
                                           node.inputs[2].data * 2)
                node.inputs[1].users.remove(node)
                node.inputs[2].users.remove(node)
                node.inputs[1:3] = [doubled, bias]
                doubled.users.append(node)
                bias.users.append(node)
        result.remove_unused_constants()
        return go.passes.PassResult(result, True)

    g = build(lambda b, x: [dsl.relu(conv(x))])
    x = probe_inputs(g)
    plain = go.compile(g).run(x)["output"]
    doubled = go.compile(g, passes=[double_conv_weights, *go.passes.DEFAULT_PIPELINE]).run(x)
    np.testing.assert_allclose(doubled["output"], 2 * plain, rtol=1e-5, atol=1e-6)
    assert np.abs(plain).max() > 0


# conv(+ residual) + each activation the epilogue table adds, on a plain and a depthwise conv
GATED = {"sigmoid": dsl.sigmoid, "hard_sigmoid": lambda y: dsl.hard_sigmoid(y, 0.2, 0.5),
         "hard_swish": dsl.hard_swish, "silu": dsl.silu}


def _activation_chains(b, x):
    outs = []
    for make in GATED.values():
        outs.append(make(dsl.batch_norm(dsl.conv2d(x, 6, 3, padding=1, bias=False))))
        outs.append(make(dsl.conv2d(x, 8, 3, padding=1, groups=8) + x))
    return outs


def test_new_epilogues_fuse_compile_to_one_kernel_each_and_match_the_interpreter():
    g = build(_activation_chains, shape=(1, 8, 9, 9))
    model = go.compile(g)
    fused = [n for n in model.graph.nodes if n.op_name == "fused_conv2d"]
    assert sorted(n.op.activation.name for n in fused) == sorted(list(GATED) * 2)
    assert len(model.graph.nodes) == len(fused) and model.kernel_count() == len(fused)
    rng = np.random.default_rng(1)
    x = {"input": 4 * rng.standard_normal((1, 8, 9, 9)).astype(np.float32)}   # both tails
    report = go.compare(g, model, x)
    assert report.ok, str(report)


def test_fusing_twice_changes_nothing():
    once = fuse(build(_activation_chains, shape=(1, 8, 9, 9)))
    assert once.changed
    assert not fuse(once.graph).changed


def test_fused_activations_round_trip_through_onnx():
    """A fused conv exports as Conv (+ Add) and its activation (silu as Sigmoid and Mul,
    HardSwish at opset 14); onnxruntime runs it, and it imports back to the same values."""
    ort = pytest.importorskip("onnxruntime")
    from graphopt.frontends.onnx_export import to_onnx
    g = build(_activation_chains, shape=(1, 8, 9, 9))
    fused = fuse(go.passes.optimize(g, ["fold_batch_norm"]).graph).graph
    model = to_onnx(fused)
    assert model.opset_import[0].version >= 14
    types = [n.op_type for n in model.graph.node]
    assert {"HardSwish", "HardSigmoid", "Sigmoid", "Mul"} <= set(types)
    x = probe_inputs(g)
    expected = go.interpret(g, x)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for name, got in zip(g.output_names, session.run(None, x)):
        np.testing.assert_allclose(got, expected[name], rtol=1e-5, atol=1e-5)
    back = go.load_onnx(model)
    again = go.interpret(back, x)
    for name in g.output_names:
        np.testing.assert_allclose(again[name], expected[name], rtol=1e-5, atol=1e-5)
