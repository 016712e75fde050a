"""kernels="onednn": convolutions sent to oneDNN agree with the float64 interpreter over a table
of shapes and epilogues, a table of layouts passed between calls (NHWC between oneDNN calls,
NCHW wherever TVM or the caller reads), a zoo model, and an exported library loaded in a fresh
process; what oneDNN cannot take stays on TVM; misuse gives GraphoptErrors."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphopt as go
from graphopt import ops
from graphopt.errors import GraphoptError
from graphopt.frontends import dsl
from graphopt.passes import probe_inputs

pytest.importorskip("tvm")
from graphopt.targets.tvm import onednn  # noqa: E402

pytestmark = pytest.mark.skipif(not onednn.available(),
                                reason="oneDNN not installed (pip install -e '.[onednn]')")

# name: (input shape, layer builder, convolutions oneDNN must take)
CASES = {
    "conv3x3_odd": ((1, 5, 9, 11), lambda x: dsl.conv2d(x, 16, 3, padding=1), 1),
    "conv3x3_s2_asym_pad": ((2, 8, 13, 13), lambda x: dsl.conv2d(x, 24, 3, stride=2,
                                                                  padding=(1, 0, 1, 2)), 1),
    "conv1x1_no_bias": ((1, 16, 7, 7), lambda x: dsl.conv2d(x, 32, 1, bias=False), 1),
    "conv1x1_s2": ((1, 8, 15, 15), lambda x: dsl.conv2d(x, 16, 1, stride=2), 1),
    "conv7x7_stem_relu": ((1, 3, 23, 23), lambda x: dsl.relu(dsl.conv2d(x, 16, 7, stride=2,
                                                                         padding=3)), 1),
    "conv_dilated": ((1, 4, 12, 12), lambda x: dsl.conv2d(x, 8, 3, padding=2, dilation=2), 1),
    "conv_grouped": ((1, 8, 10, 10), lambda x: dsl.conv2d(x, 32, 3, padding=1, groups=2), 1),
    "conv_depthwise_relu6": ((1, 8, 10, 10), lambda x: dsl.relu6(dsl.conv2d(x, 8, 3, padding=1,
                                                                              groups=8)), 1),
    "conv_oc21_leaky": ((1, 13, 9, 9), lambda x: dsl.leaky_relu(dsl.conv2d(x, 21, 3), 0.1), 1),
    "conv_oc6_tanh": ((1, 3, 12, 12), lambda x: dsl.tanh(dsl.conv2d(x, 6, 5)), 1),
    "conv_bn_residual_relu": ((1, 16, 9, 9), lambda x: dsl.relu(
        dsl.batch_norm(dsl.conv2d(x, 16, 3, padding=1, bias=False)) + x), 1),
    "residual_first_no_relu": ((1, 12, 6, 6), lambda x: x + dsl.conv2d(x, 12, 3, padding=1), 1),
    "conv_used_twice": ((1, 8, 6, 6), lambda x: _used_twice(x), 1),
    "two_convs_added": ((1, 8, 7, 7), lambda x: dsl.relu(dsl.conv2d(x, 8, 3, padding=1)
                                                         + dsl.conv2d(x, 8, 1)), 2),
}


# Layouts between oneDNN calls. name: (input shape, outputs builder, each call's layouts as
# "input[+residual]>output", sorted)
LAYOUT_CASES = {
    "chain": ((2, 5, 9, 9), lambda x: [dsl.relu(dsl.conv2d(dsl.conv2d(
        dsl.relu(dsl.conv2d(x, 8, 3, padding=1)), 16, 1), 8, 3, stride=2, padding=1))],
        ["nchw>nhwc", "nhwc>nchw", "nhwc>nhwc"]),
    "identity_residual_from_conv": ((1, 8, 7, 7), lambda x: [dsl.conv2d(
        _block(dsl.relu(dsl.conv2d(x, 8, 3, padding=1))), 4, 1)],
        ["nchw>nhwc", "nhwc+nhwc>nhwc", "nhwc>nchw", "nhwc>nhwc"]),
    "residual_is_an_nchw_value": ((1, 8, 7, 7), lambda x: [_block(x)],
                                  ["nchw>nhwc", "nhwc+nchw>nchw"]),
    "downsample_residual_to_pool": ((1, 8, 10, 10), lambda x: [dsl.global_avg_pool2d(dsl.relu(
        dsl.conv2d(dsl.relu(dsl.conv2d(x, 16, 3, stride=2, padding=1)), 16, 3, padding=1)
        + dsl.conv2d(x, 16, 1, stride=2)))],
        ["nchw>nhwc", "nchw>nhwc", "nhwc+nhwc>nchw"]),
    "feeds_onednn_and_tvm": ((1, 6, 8, 8), lambda x: [_feeds_conv_and_tanh(x)],
                             ["nchw>nchw", "nchw>nhwc", "nhwc+nchw>nchw"]),
    "graph_outputs": ((1, 6, 8, 8), lambda x: _conv_and_its_chain(x),
                      ["nchw>nchw", "nchw>nhwc", "nhwc>nchw"]),
}


def _block(x):
    """A residual block with an identity shortcut: relu(conv(relu(conv(x))) + x)."""
    y = dsl.relu(dsl.conv2d(x, x.shape[1], 3, padding=1))
    return dsl.relu(dsl.conv2d(y, x.shape[1], 3, padding=1) + x)


def _feeds_conv_and_tanh(x):
    y = dsl.relu(dsl.conv2d(x, 6, 3, padding=1))
    return dsl.conv2d(dsl.relu(dsl.conv2d(y, 6, 3, padding=1)), 6, 1) + dsl.tanh(y)


def _conv_and_its_chain(x):
    """Two outputs: a conv's result, and two more convs applied to it."""
    y = dsl.relu(dsl.conv2d(x, 6, 3, padding=1))
    return [y, dsl.conv2d(dsl.conv2d(y, 6, 3, padding=1), 4, 1)]


def _used_twice(x):
    """A conv whose output also feeds another op: its ReLU must not be folded into it."""
    y = dsl.conv2d(x, 8, 3, padding=1)
    return dsl.relu(y) * y


def _feeds(graph, seed=0):
    rng = np.random.default_rng(seed)
    return {v.name: rng.standard_normal(v.shape).astype(v.dtype) for v in graph.inputs}


def _case_graph(name):
    shape, layer, _ = CASES[name]
    with dsl.Builder(name, seed=3) as b:
        return b.output(layer(b.input("x", shape)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_conv_matches_interpreter(name):
    graph = _case_graph(name)
    model = go.compile(graph, "cpu", kernels="onednn")
    assert len(model.offloaded) == CASES[name][2], model.offloaded
    feeds = _feeds(graph)
    report = go.compare(graph, model, feeds)
    assert report.ok, str(report)
    # a second call reuses the cached primitive and reordered weight
    np.testing.assert_array_equal(model.run(feeds)["output"], model.run(feeds)["output"])


def _layouts(graph) -> list[str]:
    """Each oneDNN call's layouts after the CPU pipeline's Relax rewrites, as in LAYOUT_CASES."""
    import tvm
    from graphopt.targets.tvm.compile import optimize_for_target
    from graphopt.targets.tvm.cpu import pre_schedule_passes
    from graphopt.targets.tvm.lower import to_relax
    from graphopt.targets.tvm.onednn.lowering import OneDnnConv
    from graphopt.targets.tvm.options import CompileOptions
    optimized, target = optimize_for_target(graph, "cpu", CompileOptions(kernels="onednn"))
    with target:
        mod = tvm.transform.Sequential(pre_schedule_passes(target, onednn=True))(
            to_relax(optimized.graph))
    calls = [OneDnnConv.from_relax(binding.value) for block in mod["main"].body.blocks
             for binding in block.bindings]
    return sorted(f"{c.x_layout}{'+' + c.residual_layout if c.residual is not None else ''}"
                  f">{c.out_layout}".lower() for c in calls if c is not None)


@pytest.mark.parametrize("name", sorted(LAYOUT_CASES))
def test_layouts_between_calls(name):
    shape, layer, expected = LAYOUT_CASES[name]
    with dsl.Builder(name, seed=5) as b:
        outputs = layer(b.input("x", shape))
        graph = b.output(*outputs, names=[f"y{i}" for i in range(len(outputs))])
    assert _layouts(graph) == expected
    model = go.compile(graph, "cpu", kernels="onednn")
    feeds = _feeds(graph)
    report = go.compare(graph, model, feeds)
    assert report.ok, str(report)
    first, second = model.run(feeds), model.run(feeds)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


def test_fused_conv2d_nodes():
    """fuse_conv_epilogue's fused_conv2d (conv + bias + residual + relu) lowers to one call."""
    graph = go.optimize(_case_graph("conv_bn_residual_relu")).graph
    assert [n.op_name for n in graph.topological_order()] == ["fused_conv2d"]
    model = go.compile(graph, "cpu", kernels="onednn")
    assert len(model.offloaded) == 1 and model.kernels == []
    assert go.compare(graph, model, _feeds(graph)).ok


def test_what_onednn_cannot_take_stays_on_tvm():
    """A weight that is a graph input, and a float16 conv, compile and run on TVM."""
    with dsl.Builder("unsupported", seed=1) as b:
        x = b.input("x", (1, 4, 8, 8))
        w = b.input("w", (8, 4, 3, 3))
        y = b.apply(ops.Conv2d(padding=1), [x, w], "conv_of_input_weight")
        x16 = b.input("x16", (1, 4, 8, 8), "float16")
        graph = b.output(y, dsl.conv2d(x16, 8, 3), names=["y", "y16"])
    model = go.compile(graph, "cpu", kernels="onednn")
    assert model.offloaded == []
    assert go.compare(graph, model, _feeds(graph)).ok


def test_weights_as_parameters_stay_on_tvm():
    graph = _case_graph("conv3x3_odd")
    model = go.compile(graph, "cpu", kernels="onednn", weights="params")
    assert model.offloaded == []
    assert go.compare(graph, model, _feeds(graph)).ok


@pytest.fixture(scope="module")
def resnet():
    graph = go.zoo.resnet18(image_size=64)
    return graph, go.compile(graph, "cpu", kernels="onednn")


def test_resnet18_matches_interpreter(resnet):
    graph, model = resnet
    assert len(model.offloaded) == 20   # every conv, downsample convs included
    assert not any("conv" in k for k in model.kernels)
    # NCHW only where the stem meets max pool, max pool meets layer1 (input and residual) and
    # layer4 meets global average pool; NHWC everywhere else.
    layouts = _layouts(graph)
    assert sum(layout.count("nchw") for layout in layouts) == 2 + 3, layouts
    report = go.compare(graph, model, _feeds(graph))
    assert report.ok, str(report)


def _load_in_subprocess(path, feeds_path):
    script = textwrap.dedent(f"""
        import numpy as np
        import graphopt as go
        model = go.load({str(path)!r})
        out = model.run({{"input": np.load({str(feeds_path)!r})}})
        np.save({str(feeds_path)!r}.replace("input", "output"), out["output"])
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)


def test_export_and_load_in_a_fresh_process(resnet, tmp_path):
    graph, model = resnet
    feeds = _feeds(graph)
    path = model.export(str(tmp_path / "resnet18_onednn.so"))
    np.save(tmp_path / "input.npy", feeds["input"])
    done = _load_in_subprocess(path, tmp_path / "input.npy")
    assert done.returncode == 0, done.stdout + done.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "output.npy"), model.run(feeds)["output"])


def test_load_without_the_kernel_library(tmp_path, monkeypatch):
    """An export whose kernel library is gone names it instead of failing inside TVM."""
    graph = _case_graph("conv3x3_odd")
    model = go.compile(graph, "cpu", kernels="onednn")
    built = onednn.build()
    monkeypatch.setenv(onednn.CACHE_ENV, str(tmp_path / "cache"))
    moved = onednn.library_path()
    moved.parent.mkdir(parents=True)
    shutil.copy(built, moved)
    shutil.copy(built.with_name(built.name + ".sha256"), moved.parent)   # a sound cache entry
    path = model.export(str(tmp_path / "model.so"))
    os.remove(moved)
    done = subprocess.run([sys.executable, "-c", f"import graphopt as go; go.load({path!r})"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("graphopt.errors.ModelFormatError") and onednn.LIBRARY in last, \
        done.stderr


def test_unknown_kernels_option():
    with pytest.raises(GraphoptError, match="kernels must be one of 'tvm', 'onednn'"):
        go.compile(_case_graph("conv1x1_s2"), "cpu", kernels="mkl")


def test_onednn_is_cpu_only():
    with pytest.raises(GraphoptError, match="kernels='onednn' is for the cpu target"):
        go.compile(_case_graph("conv1x1_s2"), "cuda", kernels="onednn")


def test_missing_package_is_named():
    with pytest.raises(onednn.OneDnnUnavailableError, match="no-such-onednn-package"):
        onednn._installed_file("no-such-onednn-package", "dnnl.hpp")


def test_a_second_build_in_one_process_is_refused(monkeypatch):
    """Two builds register the same function names; loading both would abort the process."""
    onednn.load()
    monkeypatch.setattr(onednn, "_loaded", {"/elsewhere/libgraphopt_onednn.so": None})
    with pytest.raises(onednn.OneDnnUnavailableError, match="already loaded"):
        onednn.load()


def test_epilogue_codes_match_the_kernel_library():
    """The epilogue table's oneDNN codes are conv2d.cc's `Activation` enum; an activation
    without one (sigmoid, hard_sigmoid, hard_swish, silu) keeps its conv off oneDNN
    (`test_activation_without_a_onednn_code_keeps_tvms_kernel`)."""
    import re
    from graphopt.ops.epilogue import EPILOGUE, ONEDNN_NO_ACTIVATION
    from graphopt.passes.fuse_conv_epilogue import ACTIVATIONS
    enum = re.search(r"enum Activation \{([^}]*)\}", onednn.SOURCE.read_text()).group(1)
    codes = {name.strip(): int(value) for name, value in
             (item.split("=") for item in enum.split(","))}
    camel = lambda name: "k" + "".join(part.title() for part in name.split("_"))
    assert codes.pop("kNone") == ONEDNN_NO_ACTIVATION
    assert codes == {camel(name): entry.onednn for name, entry in EPILOGUE.items()
                     if entry.onednn is not None}
    assert set(ACTIVATIONS) <= set(EPILOGUE)


def test_activation_without_a_onednn_code_keeps_tvms_kernel():
    """kernels="onednn" computes a conv ending in hard_swish with graphopt's own kernel (the
    epilogue fused there), and a relu-ended one with oneDNN."""
    with dsl.Builder("no_code", seed=0) as b:
        x = b.input("input", (1, 8, 10, 10))
        graph = b.output(dsl.hard_swish(dsl.conv2d(x, 16, 3, padding=1)),
                         dsl.relu(dsl.conv2d(x, 16, 3, padding=1)), names=["out_hard_swish", "out_relu"])
    model = go.compile(graph, kernels="onednn")
    algorithms = {n.op.activation.name: n.op.conv.algorithm for n in model.graph.nodes
                  if n.op_name == "fused_conv2d"}
    assert algorithms == {"hard_swish": "direct", "relu": "onednn"}
    assert go.compare(graph, model, probe_inputs(graph)).ok
