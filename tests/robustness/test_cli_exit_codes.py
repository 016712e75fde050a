"""The CLI's exit codes, exactly as documented: 2 and one line for a bad argument, model, file or
input (found before any work where argparse can see it), 3 and one line for a valid request
that failed (any exception graphopt did not foresee included), 130 for Ctrl-C, even when TVM
turns the KeyboardInterrupt into another error."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from graphopt import cli, errors
from graphopt.passes import PASSES

# Ctrl-C as an interactive shell delivers it (`interruptible` in tests/conftest.py)
pytestmark = pytest.mark.usefixtures("interruptible")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh current folder holding good and damaged files for the commands to read."""
    monkeypatch.chdir(tmp_path)
    np.save("x.npy", np.zeros((1, 1, 32, 32), "float32"))
    good = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "truncated.npy").write_bytes(good[:len(good) // 2])
    (tmp_path / "text.npy").write_text("not an array")
    np.savez_compressed("good.npz", input=np.arange(1024, dtype="float32"))
    archive = bytearray((tmp_path / "good.npz").read_bytes())
    archive[60:90] = bytes(30)
    (tmp_path / "corrupt.npz").write_bytes(bytes(archive))
    (tmp_path / "cut.npz").write_bytes(bytes(archive[:40]))
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "garbage.so").write_bytes(b"\x7fELF not really" * 64)
    (tmp_path / "garbage.onnx").write_bytes(b"not a protobuf" * 16)
    return tmp_path


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


def assert_one_line(err: str, fragment: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and "usage:" not in err, err
    errors_ = [line for line in lines if "error" in line]
    assert len(errors_) == 1 and fragment in errors_[0], err


USAGE = [
    # numbers out of range or not numbers
    (["show", "lenet5", "--seed", "-1"], "--seed: expected an integer >= 0, found '-1'"),
    (["show", "lenet5", "--batch", "0"], "--batch: expected an integer >= 1, found '0'"),
    (["show", "lenet5", "--batch", "two"], "--batch: expected an integer >= 1, found 'two'"),
    (["bench", "lenet5", "--repeat", "0"], "--repeat: expected an integer >= 1, found '0'"),
    (["run", "garbage.so", "--repeat", "-5"], "--repeat: expected an integer >= 0, found '-5'"),
    (["compile", "lenet5", "--threads", "0"], "--threads: expected an integer >= 1"),
    (["run", "garbage.so", "--threads", "-1"], "--threads: expected an integer >= 1"),
    (["tune", "lenet5", "--trials", "0"], "--trials: expected an integer >= 1"),
    (["run", "garbage.so", "--tolerance", "nan"], "--tolerance: expected a finite number >= 0"),
    (["run", "garbage.so", "--tolerance=-1e-3"], "--tolerance: expected a finite number >= 0"),
    (["compare", "lenet5", "--tolerance", "inf"], "--tolerance: expected a finite number >= 0"),
    # files and folders that must exist
    (["run", "missing.so"], "no such file: missing.so"),
    (["compare", "lenet5", "--library", "missing.so"], "no such file: missing.so"),
    (["compare", "lenet5", "--input", "missing.npy"], "no such file: missing.npy"),
    (["compare", "lenet5", "--input", "input=missing.npy"], "no such file: missing.npy"),
    (["run", "garbage.so", "--expect", "missing.npz"], "no such file: missing.npz"),
    (["compile", "lenet5", "--tuning", "no_records"], "no such folder: no_records"),
    # files that must parse
    (["compare", "lenet5", "--input", "corrupt.npz"], "cannot read corrupt.npz as a numpy array"),
    (["compare", "lenet5", "--input", "cut.npz"], "cannot read cut.npz as a numpy array"),
    (["compare", "lenet5", "--input", "empty.npz"], "cannot read empty.npz as a numpy array"),
    (["compare", "lenet5", "--input", "truncated.npy"], "cannot read truncated.npy"),
    (["compare", "lenet5", "--input", "text.npy"], "cannot read text.npy"),
    (["show", "garbage.onnx"], "'garbage.onnx' is not a valid ONNX model"),
    (["run", "garbage.so"], "garbage.so is not a graphopt export"),
    (["show", "garbage.so"], "garbage.so is not a graphopt export"),
    # models, passes, targets and commands graphopt does not know
    (["show", "nosuchnet"], "unknown model 'nosuchnet'"),
    (["show", "missing.onnx"], "no such file: missing.onnx"),
    (["optimize", "lenet5", "--passes", "fold_everything"],
     "no pass named 'fold_everything'; known passes: "),
    (["convert", "lenet5", "out.onnx", "--passes", "fold_pad,nope"], "no pass named 'nope'"),
    (["compile", "lenet5", "--passes", "fold_everything"], "no pass named 'fold_everything'"),
    (["compile", "lenet5", "--target", "cuda", "--passes", "select_conv_algorithm"],
     "'select_conv_algorithm' is a cpu target pass; compiling for cuda"),
    (["show", "lenet5", "--target", "tpu"], "unknown target 'tpu'"),
    (["show", "lenet5", "--target", "cuda:sm_1"], "bad CUDA target 'cuda:sm_1'"),
    (["show", "lenet5", "--kernels", "mkl"], "--kernels: invalid choice: 'mkl'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: COMMAND"),
]


@pytest.mark.parametrize("argv, fragment", USAGE, ids=[" ".join(a) or "none" for a, _ in USAGE])
def test_bad_requests_exit_2_with_one_line(workdir, capsys, argv, fragment):
    code, err = run_cli(argv, capsys)
    assert code == cli.EXIT_USAGE, err
    assert_one_line(err, fragment)
    assert not (workdir / "out.onnx").exists()


def test_help_and_a_pass_list_of_none_exit_0(workdir, capsys):
    assert cli.main(["show", "--help"]) == cli.EXIT_OK
    code, err = run_cli(["-q", "optimize", "lenet5", "--passes", "none"], capsys)
    assert code == cli.EXIT_OK, err


def explode(graph):
    raise ZeroDivisionError("the pass divided by zero")


def test_a_failing_pass_exits_3_naming_it(workdir, capsys, monkeypatch):
    monkeypatch.setitem(PASSES, "explode", explode)
    code, err = run_cli(["optimize", "lenet5", "--passes", "explode"], capsys)
    assert code == cli.EXIT_FAILED
    assert_one_line(err, "pass 'explode' failed: ZeroDivisionError: the pass divided by zero")


def replace_command(monkeypatch, run) -> None:
    """Make `graphopt list` call `run(args)`."""
    monkeypatch.setitem(cli.COMMANDS, "list", cli.Command("list", "test", (), run))


def test_an_unforeseen_exception_is_one_line_and_exit_3(workdir, capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("something graphopt did not foresee\nsecond line")
    replace_command(monkeypatch, broken)
    code, err = run_cli(["list"], capsys)
    assert code == cli.EXIT_FAILED
    assert_one_line(err, "graphopt list: error (RuntimeError): something graphopt did not "
                         "foresee (rerun with --debug for the traceback)")
    assert len(err.strip().splitlines()) == 1
    code, err = run_cli(["--debug", "list"], capsys)
    assert code == cli.EXIT_FAILED and "Traceback" in err


def interrupt_inside_tvm(args):
    """What TVM's FFI does with a KeyboardInterrupt raised in a Python callback: it comes back
    as a RuntimeError (and graphopt's compile wraps that in a LoweringError)."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    except KeyboardInterrupt:
        raise errors.LoweringError("TVM failed to compile: RuntimeError: RuntimeError") from None
    return cli.EXIT_OK


def interrupt_swallowed(args):
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    except KeyboardInterrupt:
        pass
    return cli.EXIT_OK


def interrupt_plain(args):
    raise KeyboardInterrupt


@pytest.mark.parametrize("run", [interrupt_inside_tvm, interrupt_swallowed, interrupt_plain])
def test_an_interrupt_exits_130_however_it_surfaces(workdir, capsys, monkeypatch, run):
    replace_command(monkeypatch, run)
    code, err = run_cli(["list"], capsys)
    assert code == cli.EXIT_INTERRUPTED == 130
    assert err.strip() == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("error, code", [
    (errors.OptionError("x"), cli.EXIT_USAGE), (errors.InputError("x"), cli.EXIT_USAGE),
    (errors.ModelFormatError("x"), cli.EXIT_USAGE), (errors.ShapeError("x"), cli.EXIT_USAGE),
    (errors.VerifyError("x"), cli.EXIT_USAGE), (errors.UnsupportedOpError("x"), cli.EXIT_USAGE),
    (errors.GraphoptError("x"), cli.EXIT_USAGE),
    (errors.PassError("x"), cli.EXIT_FAILED), (errors.LoweringError("x"), cli.EXIT_FAILED),
    (errors.WriteError("x"), cli.EXIT_FAILED), (RuntimeError("x"), cli.EXIT_FAILED),
    (MemoryError(), cli.EXIT_FAILED), (OSError("x"), cli.EXIT_FAILED),
])
def test_exit_code_for_each_error_class(error, code):
    assert cli.exit_code_for(error) == code


def test_ctrl_c_during_a_compile_exits_130(tmp_path):
    """SIGINT a second into `graphopt compile resnet18` (several seconds of TVM work)."""
    script = shutil.which("graphopt", path=os.path.dirname(sys.executable))
    command = [script] if script else [sys.executable, "-m", "graphopt.cli"]
    child = subprocess.Popen(command + ["compile", "resnet18", "-o", "resnet18.so"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(iter(lambda: child.stderr.read(1), "")),
                              daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while "compiling 'resnet18'" not in "".join(stderr) and child.poll() is None:
        assert time.monotonic() < deadline, "".join(stderr)
        time.sleep(0.02)
    time.sleep(1.0)
    if child.poll() is not None:
        pytest.skip("the compile finished before the interrupt")
    child.send_signal(signal.SIGINT)
    child.wait(timeout=120)
    reader.join(timeout=10)
    err = "".join(stderr)
    assert child.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err and "graphopt compile: error" not in err
    assert not (tmp_path / "resnet18.so").exists()
