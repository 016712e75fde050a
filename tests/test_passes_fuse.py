"""fuse_conv_epilogue: conv + bias / residual add / activation into one fused_conv2d (hits and
near misses), and the fused node compiling to ONE TVM kernel."""
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
    "sigmoid": lambda b, x: [dsl.sigmoid(conv(x))],
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
