"""Concatenations computed in place on the CPU (`targets/tvm/concat_in_place.py`): which ones
lose their copy kernel, which keep it, and that every one computes what the interpreter does,
bounds-checked, on one thread and two."""
from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest

import graphopt as go
from graphopt.frontends import dsl
from graphopt.zoo.squeezenet import fire

pytest.importorskip("tvm")


def _copies(model) -> list[str]:
    """The compiled kernels that concatenate (alone or fused with what follows)."""
    return [name for name in model.schedules if "concatenate" in name]


def _fire_net(b):
    x = b.input("x", (1, 16, 20, 20))
    return b.output(dsl.relu(dsl.conv2d(fire(x, 8, 32, 32), 16, 1)))


def _nested_net(b):
    """A concatenation of a concatenation and a conv (the inner one computed into the outer)."""
    x = b.input("x", (1, 16, 12, 12))
    inner = dsl.concat([dsl.relu(dsl.conv2d(x, 16, 1)), dsl.relu(dsl.conv2d(x, 32, 3, padding=1))])
    both = dsl.concat([inner, dsl.relu(dsl.conv2d(x, 16, 3, padding=1))])
    return b.output(dsl.conv2d(both, 8, 1))


def _input_net(b):
    """The model's input is one of the inputs: it cannot be placed, the copy stays."""
    x = b.input("x", (1, 16, 12, 12))
    return b.output(dsl.conv2d(dsl.concat([x, dsl.relu(dsl.conv2d(x, 16, 3, padding=1))]), 8, 1))


def _unaligned_net(b):
    """3 channels of 5x5 float32 are 300 bytes: the second slice would start unaligned."""
    x = b.input("x", (1, 4, 5, 5))
    parts = [dsl.relu(dsl.conv2d(x, 3, 3, padding=1)), dsl.relu(dsl.conv2d(x, 5, 1))]
    return b.output(dsl.conv2d(dsl.concat(parts), 8, 1))


def _batch_net(b):
    """With two images, each input is two slices of the output, not one."""
    x = b.input("x", (2, 16, 12, 12))
    return b.output(dsl.conv2d(fire(x, 8, 16, 16), 8, 1))


def _output_net(b):
    """The concatenation is the model's output (left to TVM's allocation of outputs)."""
    x = b.input("x", (1, 16, 12, 12))
    return b.output(fire(x, 8, 16, 16))


def _twice_net(b):
    """One tensor twice in a concatenation: it has one place, the copy stays."""
    x = b.input("x", (1, 16, 12, 12))
    y = dsl.relu(dsl.conv2d(x, 16, 3, padding=1))
    return b.output(dsl.conv2d(dsl.concat([y, y]), 8, 1))


def _shared_net(b):
    """A conv feeding two concatenations and a conv: one concatenation computes it in place,
    the other copies it from there."""
    x = b.input("x", (1, 16, 12, 12))
    y = dsl.relu(dsl.conv2d(x, 16, 3, padding=1))
    first = dsl.concat([y, dsl.relu(dsl.conv2d(x, 16, 1))])
    second = dsl.concat([dsl.relu(dsl.conv2d(x, 16, 1, bias=False)), y])
    return b.output(dsl.add(dsl.conv2d(first, 8, 1), dsl.add(dsl.conv2d(second, 8, 1),
                                                             dsl.conv2d(y, 8, 1))))


def _view_net(b):
    """An input that is a reshape of the model's input (a view of memory the model does not
    own): the copy stays."""
    x = b.input("x", (1, 16, 144))
    image = dsl.reshape(x, (1, 16, 12, 12))
    return b.output(dsl.conv2d(dsl.concat([image, dsl.relu(dsl.conv2d(image, 16, 1))]), 8, 1))


CASES = [  # (builder, concatenations marked in place, concatenation kernels left)
    (_fire_net, 1, 0), (_nested_net, 2, 0), (_input_net, 0, 1), (_unaligned_net, 0, 1),
    (_batch_net, 0, 1), (_output_net, 0, 1), (_twice_net, 0, 1), (_shared_net, 1, 1),
    (_view_net, 0, 1)]


@pytest.mark.parametrize("build, placed, copies", CASES, ids=[c[0].__name__[1:] for c in CASES])
def test_concatenations_in_place_match_the_interpreter(build, placed, copies):
    """The target pass's decisions (recorded on the nodes, as `graphopt show --target cpu`
    prints them), the copy kernels left, and the values, bounds-checked, at 1 and 2 threads."""
    with dsl.Builder(build.__name__[1:], seed=0) as b:
        graph = build(b)
    rng = np.random.default_rng(0)
    feeds = {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in graph.inputs}
    for threads in (1, 2):
        model = go.compile(graph, threads=threads, bounds_check=True)
        choices = [n.op.target_choice() for n in model.graph.nodes if n.op_name == "concat"]
        assert choices.count("in place") == placed, choices
        assert len(_copies(model)) == copies, model.schedules
        assert go.compare(graph, model, feeds).ok


def test_in_place_is_what_removes_the_copy():
    """With the pass switched off, the fire module keeps its concatenation kernel, and both
    builds compute the same values."""
    placement = importlib.import_module("graphopt.targets.tvm.passes.place_concatenations")
    with dsl.Builder("fire", seed=0) as b:
        graph = _fire_net(b)
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 16, 20, 20)).astype(np.float32)}
    in_place = go.compile(graph)
    placement.IN_PLACE = False
    try:
        copied = go.compile(graph)
    finally:
        placement.IN_PLACE = True
    assert _copies(in_place) == [] and len(_copies(copied)) == 1
    (name,) = [v.name for v in graph.outputs]
    np.testing.assert_array_equal(in_place.run(feeds)[name], copied.run(feeds)[name])


@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
def test_low_precision_concatenations_in_place_match_the_interpreter(dtype):
    """A quantized fire module (uint8 or bfloat16 slices, the convs on the integer or bfloat16
    kernels) computed in place, against the interpreter running the quantized graph."""
    with dsl.Builder("fire", seed=0) as b:
        graph = _fire_net(b)
    rng = np.random.default_rng(2)
    samples = [{"x": rng.standard_normal((1, 16, 20, 20)).astype(np.float32)} for _ in range(4)]
    calibration = go.calibrate(graph, samples) if dtype == "int8" else None
    quantized = go.quantize(graph, calibration, dtype=dtype).graph
    model = go.compile(quantized, bounds_check=True)
    assert [n.op.in_place for n in model.graph.nodes if n.op_name == "concat"] == [True]
    assert _copies(model) == []
    assert go.compare(quantized, model, samples[0]).ok


def test_nothing_is_placed_with_onednn_kernels():
    """oneDNN's calls write their outputs outside graphopt's kernels: the concatenations stay as
    TVM builds them, and the model still matches the interpreter."""
    from graphopt.targets.tvm import onednn
    if not onednn.available():
        pytest.skip("oneDNN not installed (pip install -e '.[onednn]')")
    with dsl.Builder("fire", seed=0) as b:
        graph = _fire_net(b)
    feeds = {"x": np.random.default_rng(3).standard_normal((1, 16, 20, 20)).astype(np.float32)}
    model = go.compile(graph, kernels="onednn")
    assert not any(n.op.in_place for n in model.graph.nodes if n.op_name == "concat")
    assert go.compare(graph, model, feeds).ok


def test_exported_model_loads_in_a_fresh_process(tmp_path):
    """The views and the dropped copy live in the exported VM code: `go.load` in a new process
    computes what the compiled model does."""
    with dsl.Builder("fire", seed=0) as b:
        graph = _fire_net(b)
    (name,) = [v.name for v in graph.outputs]
    feeds = {"x": np.random.default_rng(4).standard_normal((1, 16, 20, 20)).astype(np.float32)}
    model = go.compile(graph)
    assert _copies(model) == []
    path = model.export(str(tmp_path / "fire.so"))
    np.save(tmp_path / "x.npy", feeds["x"])
    script = (f"import numpy as np, graphopt as go; out = go.load({path!r}).run("
              f"{{'x': np.load({str(tmp_path / 'x.npy')!r})}}); "
              f"np.save({str(tmp_path / 'out.npy')!r}, out[{name!r}])")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), model.run(feeds)[name])
