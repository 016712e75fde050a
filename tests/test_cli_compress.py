"""`graphopt prune` and `graphopt factorize`: the per-layer table, the result written as ONNX
(smaller, and what the interpreter computes) or compiled to a library; --data with labels adds
top-1; bad requests exit 2 with one line. One run goes through a real subprocess."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import graphopt as go
from graphopt import cli


@pytest.fixture
def samples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez("data.npz", input=rng.standard_normal((4, 1, 28, 28)).astype(np.float32),
             labels=rng.integers(0, 10, 4))
    return tmp_path


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_prune_writes_a_smaller_onnx_model(samples, capsys):
    code, out, err = run(["prune", "deep_convnet", "--ratio", "0.5", "-o", "pruned.onnx"], capsys)
    assert code == 0, err
    assert "conv1  conv2d  channels 16 -> 8" in out
    assert "output 'output' vs the original" in out
    pruned = go.load_onnx("pruned.onnx")
    assert pruned.num_params() < 0.4 * go.zoo.deep_convnet().num_params()
    assert pruned.node("conv1").output.shape[1] == 8


def test_prune_with_labelled_data_reports_top1(samples, capsys):
    code, out, err = run(["prune", "deep_convnet", "--criterion", "activation", "--data",
                          "data.npz", "--layers", "conv3,conv4", "-o", "p.onnx"], capsys)
    assert code == 0, err
    assert "top-1 on the data.npz samples: original" in out
    assert "conv3" in out and "conv1 " not in out.split("optimize")[0]


def test_factorize_compiles_to_a_library(samples, capsys):
    code, out, err = run(["factorize", "lenet5", "--rank-ratio", "0.5", "-o", "f.so"], capsys)
    assert code == 0, err
    assert "rank" in out and "insert_bottleneck" in out
    model = go.load("f.so")
    x = np.zeros((1, 1, 32, 32), np.float32)
    assert model.run({"input": x})["output"].shape == (1, 10)


@pytest.mark.parametrize("argv, message", [
    (["prune", "lenet5", "--ratio", "1.5", "-o", "p.onnx"], "pruning ratio in [0, 1)"),
    (["prune", "lenet5", "--criterion", "activation", "-o", "p.onnx"], "needs data"),
    (["prune", "lenet5", "--budget", "0.1", "-o", "p.onnx"], "--budget needs --data"),
    (["factorize", "lenet5", "--energy", "2", "-o", "f.onnx"], "in (0, 1]"),
    (["prune", "lenet5", "--layers", "nope", "-o", "p.onnx"], "no conv or linear layer"),
])
def test_bad_requests_exit_2_with_one_line(samples, capsys, argv, message):
    code, out, err = run(argv, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_prune_runs_as_a_command(samples):
    done = subprocess.run([sys.executable, "-m", "graphopt", "prune", "lenet5", "--ratio", "0.3",
                           "-o", "p.onnx"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "prune 'lenet5'" in done.stdout
    assert go.load_onnx("p.onnx").num_params() < go.zoo.lenet5().num_params()
