"""`graphopt quantize`: int8 calibrated on an .npz of samples, float16 and bfloat16; written as
ONNX (which onnxruntime runs) or compiled to a library (which `go.load` runs); bad requests exit 2
with one line."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt import cli
from graphopt.compare import onnxruntime_outputs

pytest.importorskip("tvm")


@pytest.fixture
def samples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez("calib.npz", input=rng.standard_normal((6, 1, 32, 32)).astype(np.float32))
    return tmp_path


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_int8_onnx_runs_in_onnxruntime_as_the_interpreter_does(samples, capsys):
    code, out, err = run(["quantize", "lenet5", "--calib", "calib.npz", "--method", "entropy",
                          "-o", "lenet5_int8.onnx"], capsys)
    assert code == 0, err
    assert "quantize_int8" in out and "all outputs ok" in out
    assert "calibrating (entropy) ... done in" in err    # progress (bars only on a terminal)
    graph = go.load_onnx("lenet5_int8.onnx")
    assert "qlinear_conv2d" in {n.op_name for n in graph.nodes}
    x = np.random.default_rng(1).standard_normal((1, 1, 32, 32)).astype(np.float32)
    expected = go.interpret(graph, {"input": x})["output"]
    # int8 operands run unsigned in ONNX Runtime: exact on CPUs without VNNI too
    found = onnxruntime_outputs("lenet5_int8.onnx", {"input": x})["output"]
    np.testing.assert_allclose(found, expected, atol=1e-2)


def test_int8_library_loads_and_runs(samples, capsys):
    code, _, err = run(["quantize", "lenet5", "--calib", "calib.npz", "--per-tensor",
                        "--keep", "fc3", "-o", "lenet5_int8.so"], capsys)
    assert code == 0, err
    model = go.load("lenet5_int8.so")
    out = model.run({"input": np.zeros((1, 1, 32, 32), np.float32)})["output"]
    assert out.shape == (1, 10) and np.isfinite(out).all()


def test_reduce_range_writes_7_bit_weights(samples, capsys):
    """--reduce-range reaches the quantizer on both routes (the sensitivity table's and the
    model's): every integer weight in [-64, 64]."""
    code, out, err = run(["quantize", "lenet5", "--calib", "calib.npz", "--reduce-range",
                          "--sensitivity", "-o", "lenet5_int7.onnx"], capsys)
    assert code == 0, err
    assert "int8 sensitivity of 'lenet5'" in out
    weights = [n.inputs[3].data for n in go.load_onnx("lenet5_int7.onnx").nodes
               if n.op_name == "qlinear_conv2d"]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == 64


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_needs_no_calibration(samples, capsys, dtype):
    code, out, err = run(["quantize", "lenet5", "--dtype", dtype, "-o", f"l_{dtype}.onnx"],
                         capsys)
    assert code == 0, err
    assert f"convert_{dtype}" in out and "all outputs ok" in out


def test_sensitivity_and_budget_on_labelled_samples(samples, capsys):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 1, 32, 32)).astype(np.float32)
    lenet = go.zoo.lenet5()
    labels = np.array([go.interpret(lenet, {"input": x[i:i + 1]})["output"].argmax()
                       for i in range(8)])
    np.savez("eval.npz", input=x, labels=labels)
    code, out, err = run(["quantize", "lenet5", "--calib", "calib.npz", "--eval", "eval.npz",
                          "--sensitivity", "--budget", "0", "-o", "lenet5_int8.onnx"], capsys)
    assert code == 0, err
    assert "int8 sensitivity of 'lenet5' on 8 samples" in out and "drop" in out
    assert "int8 sensitivity, layer by layer ... done in" in err    # no bar: not a terminal
    assert "\r" not in err
    assert "budget: metric drop <= 0: met" in out
    assert "top-1 on 8 samples of eval.npz: float32 100.00%, int8 100.00%" in out
    # without labels the budget bounds the relative output error
    np.savez("eval.npz", input=x)
    code, out, err = run(["quantize", "lenet5", "--calib", "calib.npz", "--eval", "eval.npz",
                          "--budget", "0.5", "-o", "lenet5_int8.onnx"], capsys)
    assert code == 0, err
    assert "budget: error <= 0.5: met" in out and "top-1" not in out


@pytest.mark.parametrize("argv, fragment", [
    (["quantize", "lenet5", "-o", "x.onnx"], "--dtype int8 needs --calib"),
    (["quantize", "lenet5", "--calib", "missing.npz", "-o", "x.onnx"], "no such file"),
    (["quantize", "lenet5", "--calib", "calib.npz", "-o", "x.txt"], "ending in .onnx"),
    (["quantize", "lenet5", "--calib", "wrong.npz", "-o", "x.onnx"],
     "expected samples of shape (1, 32, 32)"),
    (["quantize", "lenet5", "--calib", "other.npz", "-o", "x.onnx"],
     "expected arrays named ['input']"),
    (["quantize", "lenet5", "--dtype", "float16", "--budget", "0.1", "-o", "x.onnx"],
     "--budget apply to --dtype int8"),
    (["quantize", "lenet5", "--calib", "calib.npz", "--eval", "labelled.npz", "-o", "x.onnx"],
     "expected 'labels' as 3 integer class indices"),
    (["quantize", "lenet5", "--calib", "calib.npz", "--budget", "-1", "-o", "x.onnx"],
     "expected a finite number >= 0"),
])
def test_bad_requests_exit_2(samples, capsys, argv, fragment):
    np.savez("wrong.npz", input=np.zeros((3, 2, 32, 32), np.float32))
    np.savez("labelled.npz", input=np.zeros((3, 1, 32, 32), np.float32), labels=np.zeros(2))
    np.savez("other.npz", image=np.zeros((3, 1, 32, 32), np.float32))
    code, _, err = run(argv, capsys)
    assert code == 2 and fragment in err, err
    assert not list(samples.glob("x.*"))
