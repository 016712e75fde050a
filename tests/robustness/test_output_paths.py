"""Outputs go only where the user said: without -o, `graphopt compile` names the library after the
input file (or zoo model), a safe name in the current folder, whatever the graph inside calls
itself; an output path that is a folder, lacks its suffix or lies in a missing folder is a usage
error before any work is done."""
from __future__ import annotations

import os
import subprocess
import sys

import onnx
import pytest

import graphopt as go
from graphopt import cli
from graphopt.files import safe_file_name
from graphopt.frontends import dsl

HOSTILE_GRAPH_NAMES = ["../../x/pwn", "/abs/path", "", ".hidden", "a\x00b", "-rf"]


def onnx_with_graph_name(path, graph_name: str) -> str:
    with dsl.Builder("g", seed=0) as b:
        x = b.input("input", (1, 2, 6, 6))
        graph = b.output(dsl.relu(dsl.conv2d(x, 4, 3, padding=1)))
    model = go.save_onnx(graph)
    model.graph.name = graph_name
    onnx.save(model, str(path))
    return str(path)


def tree(root) -> set[str]:
    return {os.path.relpath(os.path.join(folder, name), root)
            for folder, dirs, names in os.walk(root) for name in dirs + names}


class StubModel:
    """What `compile` needs of a compiled model, without running TVM."""
    schedule_report = None

    def export(self, path):
        with open(path, "wb") as f:
            f.write(b"library")
        return path

    def kernel_count(self):
        return 1


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """tmp/models (inputs) and tmp/deep/cwd (the current folder), compile stubbed out."""
    (tmp_path / "models").mkdir()
    cwd = tmp_path / "deep" / "cwd"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(go, "compile", lambda graph, target, **options: StubModel())
    return tmp_path, cwd


@pytest.mark.parametrize("graph_name", HOSTILE_GRAPH_NAMES)
def test_default_output_is_named_after_the_input_file(workspace, graph_name):
    root, cwd = workspace
    model = onnx_with_graph_name(root / "models" / "net.onnx", graph_name)
    before = tree(root)
    code = cli.main(["-q", "compile", model])
    written = tree(root) - before
    if graph_name == "":   # onnx.checker refuses an unnamed graph: nothing is written
        assert code == cli.EXIT_USAGE and written == set()
    else:
        assert code == cli.EXIT_OK
        assert written == {os.path.join("deep", "cwd", "net_cpu.so")}


@pytest.mark.parametrize("spec, target, name", [
    ("resnet18", "cpu", "resnet18_cpu.so"),
    ("models/resnet.onnx", "cuda:sm_80", "resnet_cuda_sm_80.so"),
    ("../up/.hidden.onnx", "cpu", "hidden_cpu.so"),
    ("x/-rf.onnx", "cpu", "rf_cpu.so"),
    ("x/.onnx", "cpu", "onnx_cpu.so"),
    ("x/...onnx", "cpu", "onnx_cpu.so"),
    ("x/-.onnx", "cpu", "model_cpu.so"),
    ("x/a\x01b c.onnx", "cpu", "a_b_c_cpu.so"),
    ("/abs/net.v2.onnx", "cuda", "net.v2_cuda.so"),
])
def test_default_artifact_names(spec, target, name):
    assert cli.default_artifact_name(spec, target) == name


@pytest.mark.parametrize("name, safe", [
    ("../../x/pwn", "x_pwn"), ("/abs/path", "abs_path"), ("", "model"), (".hidden", "hidden"),
    ("a\x00b", "a_b"), ("..", "model"), ("a..b", "a.b"), ("résumé", "résumé"), ("x" * 300, "x" * 120),
])
def test_safe_file_names(name, safe):
    assert safe_file_name(name) == safe
    assert os.sep not in safe and ".." not in safe and not safe.startswith(".")


@pytest.mark.parametrize("argv, message", [
    (["compile", "lenet5", "-o", "{folder}"], "{folder} is a folder: expected the path of the .so"),
    (["compile", "lenet5", "-o", "missing/lenet5.so"], "the folder missing does not exist"),
    (["compile", "lenet5", "-o", "lenet5.onnx"], "expected an output path ending in .so"),
    (["convert", "lenet5", "{folder}"], "{folder} is a folder"),
    (["optimize", "lenet5", "-o", "{folder}"], "{folder} is a folder"),
    (["run", "stub.so", "--save", "{folder}"], "{folder} is a folder"),
    (["run", "stub.so", "--save", "outputs"], "expected an output path ending in .npz"),
])
def test_bad_output_paths_are_usage_errors_before_any_work(workspace, monkeypatch, capsys, argv,
                                                          message):
    root, cwd = workspace
    (cwd / "out.so").mkdir()
    (cwd / "stub.so").write_bytes(b"")   # never loaded: the output path is checked first
    folder = str(cwd / "out.so") if argv[0] == "compile" else str(cwd)
    monkeypatch.setattr(go, "compile", None)   # the path is checked before compiling
    before = tree(root)
    code = cli.main(["-q"] + [a.format(folder=folder) for a in argv])
    assert code == cli.EXIT_USAGE
    assert message.format(folder=folder) in capsys.readouterr().err
    assert tree(root) == before


def test_compile_writes_only_into_the_current_folder(tmp_path):
    """The real thing, once: a graph named '../../x/pwn' compiled with TVM and exported."""
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    model = onnx_with_graph_name(tmp_path / "evil.onnx", "../../x/pwn")
    before = tree(tmp_path)
    done = subprocess.run([sys.executable, "-m", "graphopt.cli", "-q", "compile", model],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path) - before == {os.path.join("a", "b", "evil_cpu.so")}
    assert go.load(str(cwd / "evil_cpu.so")).inputs[0][0] == "input"
