"""The `graphopt` command, run as users run it: the installed console script in a subprocess.
Checks outputs, exit codes (0 ok, 1 mismatch, 2 bad input, 3 failure) and one-line errors."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import graphopt as go
from graphopt import cli


def graphopt_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "graphopt")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "graphopt.cli"]


def graphopt(*args: str, cwd=None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(graphopt_command() + list(args), capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def assert_one_line_error(done: subprocess.CompletedProcess, code: int, fragment: str) -> None:
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and fragment in errors[0], done.stderr


@pytest.fixture(scope="module")
def lenet_library(tmp_path_factory):
    """`graphopt compile lenet5` into a fresh folder; returns (folder, library path)."""
    folder = tmp_path_factory.mktemp("cli")
    done = graphopt("compile", "lenet5", "-o", "lenet5_cpu.so", cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "compiling 'lenet5' for cpu ... done" in done.stderr     # progress on stderr
    assert "lenet5_cpu.so: 'lenet5' for cpu" in done.stdout
    return folder, str(folder / "lenet5_cpu.so")


def test_help_names_every_command_and_the_exit_codes():
    done = graphopt("--help")
    assert done.returncode == 0
    for name in ("list", "show", "compile", "compare", "run", "bench"):
        assert name in done.stdout
    assert "exit codes: 0 ok, 1 comparison found a mismatch" in done.stdout
    sub = graphopt("compile", "--help")
    assert sub.returncode == 0 and "--target" in sub.stdout and "cuda:sm_<NN>" in sub.stdout


def test_list_and_show_a_zoo_model():
    listed = graphopt("list")
    assert listed.returncode == 0 and set(go.zoo.MODELS) == set(listed.stdout.split())
    shown = graphopt("show", "lenet5", "--batch", "4")
    assert shown.returncode == 0, shown.stderr
    assert "float32[4,10]" in shown.stdout and "61,706 params" in shown.stdout


def test_show_an_onnx_file(tmp_path):
    from graphopt.frontends.onnx import save_onnx
    save_onnx(go.zoo.lenet5(batch=1), str(tmp_path / "lenet5.onnx"))
    shown = graphopt("show", str(tmp_path / "lenet5.onnx"))
    assert shown.returncode == 0, shown.stderr
    assert "61,706 params" in shown.stdout


@pytest.fixture(scope="module")
def torch_dynamic_batch(tmp_path_factory):
    """A small CNN exported by torch.onnx.export with a dynamic batch (dynamic_axes), as users'
    files are: input 'input' [batch, 3, 16, 16], output 'logits' [batch, 5]."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(8, 5)).eval()
    path = tmp_path_factory.mktemp("dynamic") / "net.onnx"
    # The TorchScript exporter: the dynamo one needs onnxscript, which is not installed.
    torch.onnx.export(net, (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return str(path)


@pytest.mark.parametrize("options, shape", [
    (["--batch", "4"], "float32[4,5]"),
    (["--input-shape", "input=2,3,16,16"], "float32[2,5]"),
])
def test_an_onnx_file_with_a_dynamic_batch_takes_batch_or_input_shape(torch_dynamic_batch,
                                                                      options, shape, capsys):
    assert cli.main(["-q", "show", torch_dynamic_batch, *options]) == cli.EXIT_OK
    assert shape in capsys.readouterr().out


def test_a_dynamic_onnx_file_compiles_and_compares_at_the_batch_given(torch_dynamic_batch,
                                                                     capsys):
    code = cli.main(["-q", "compare", torch_dynamic_batch, "--batch", "3", "--json"])
    import json
    captured = capsys.readouterr()
    assert code == cli.EXIT_OK and json.loads(captured.out)["report"]["ok"], captured


@pytest.mark.parametrize("options", [[], ["--library", "LIBRARY"]])
def test_compare_with_onnxruntime_as_the_reference(torch_dynamic_batch, options, tmp_path,
                                                  capsys):
    if options:
        options = ["--library", str(tmp_path / "net.so")]
        assert cli.main(["-q", "compile", torch_dynamic_batch, "--batch", "2", "-o",
                         options[1]]) == cli.EXIT_OK
    code = cli.main(["-q", "compare", torch_dynamic_batch, "--batch", "2", "--reference", "ort",
                     "--json", *options])
    import json
    captured = capsys.readouterr()
    body = json.loads(captured.out[captured.out.index("{"):])
    assert code == cli.EXIT_OK, captured
    assert body["reference"] == body["report"]["reference"] == "onnxruntime"
    assert body["report"]["reference_dtype"] == "float32" and body["report"]["ok"]
    cli.main(["-q", "compare", torch_dynamic_batch, "--batch", "2", "--reference", "ort",
              *options])
    assert "compare against onnxruntime (float32): all outputs ok" in capsys.readouterr().out


def test_onnxruntime_as_the_reference_sees_what_the_interpreter_cannot(torch_dynamic_batch):
    """ONNX Runtime runs the file itself: a model whose import had gone wrong (here the graph
    of another file, with the weights doubled) differs from it, not from the interpreter."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(torch_dynamic_batch)
    weight = model.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(2 * numpy_helper.to_array(weight), weight.name))
    graph = go.load_onnx(model, input_shapes={"input": (2, 3, 16, 16)})
    feeds = go.passes.probe_inputs(graph, seed=0)
    assert go.compare(graph, graph, feeds).ok
    report = go.compare(graph, graph, feeds, ort_model=torch_dynamic_batch)
    assert report.reference == "onnxruntime" and not report.ok
    assert go.compare(graph, graph, feeds, ort_model=model).ok
    with pytest.raises(go.GraphoptError, match="per-layer compare needs the interpreter"):
        go.compare(graph, graph, feeds, ort_model=model, per_layer=True)


@pytest.mark.parametrize("options, fragment", [
    ([], "input 'input' has dynamic dimensions ['batch', 3, 16, 16]: give its shape with "
         "--input-shape input=N,3,16,16 (or --batch N)"),
    (["--input-shape", "image=1,3,16,16"],
     "--input-shape image=...: no graph input named 'image'; inputs are ['input']"),
    (["--input-shape", "input=1,3,x"], "argument --input-shape: expected NAME=D0,D1,..."),
    (["--input-shape", "1,3,16,16"], "argument --input-shape: expected NAME=D0,D1,..."),
])
def test_dynamic_dimensions_left_open_or_named_wrongly_exit_2(torch_dynamic_batch, options,
                                                              fragment):
    assert_one_line_error(graphopt("show", torch_dynamic_batch, *options), 2, fragment)


def test_compile_names_its_output_after_the_file_and_keeps_an_existing_one(torch_dynamic_batch,
                                                                          tmp_path):
    shutil.copy(torch_dynamic_batch, tmp_path / "net.onnx")     # its graph: torch's main_graph
    first = graphopt("compile", "net.onnx", "--batch", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx", "net_cpu.so"]
    written = (tmp_path / "net_cpu.so").stat().st_mtime_ns
    again = graphopt("compile", "net.onnx", "--batch", "1", cwd=tmp_path)
    assert_one_line_error(again, 2, "net_cpu.so exists: pass --force to overwrite it")
    assert "compiling" not in again.stderr                       # refused before any work
    assert (tmp_path / "net_cpu.so").stat().st_mtime_ns == written
    forced = graphopt("compile", "net.onnx", "--batch", "1", "--force", cwd=tmp_path)
    assert forced.returncode == 0 and (tmp_path / "net_cpu.so").stat().st_mtime_ns != written
    wrong = graphopt("compile", "net.onnx", "--target", "cuda:sm_1x", "-o", "x.so", cwd=tmp_path)
    assert_one_line_error(wrong, 2, "cuda:sm_1x")
    assert "compiling" not in wrong.stderr                       # the target, checked first


def test_input_shape_is_for_onnx_files():
    assert_one_line_error(graphopt("show", "lenet5", "--input-shape", "input=1,1,32,32"), 2,
                          "--input-shape is for .onnx files; the zoo model 'lenet5' takes --batch")


@pytest.mark.parametrize("args, code, fragment", [
    (["show", "nosuchnet"], 2, "unknown model 'nosuchnet'"),
    (["show", "missing/model.onnx"], 2, "no such file: missing/model.onnx"),
    (["show", "missing.so"], 2, "no such file: missing.so"),
    (["run", "missing.so"], 2, "no such file: missing.so"),
    (["compile", "lenet5", "--target", "cuda:sm_8"], 2, "bad CUDA target 'cuda:sm_8'"),
    (["compile", "lenet5", "--target", "tpu"], 2, "unknown target 'tpu'"),
    (["compare", "lenet5", "--input", "nothere.npy"], 2, "no such file: nothere.npy"),
    (["compare", "lenet5", "--target", "cuda"], 2, "needs a GPU"),
    (["compare", "lenet5", "--reference", "ort"], 2,
     "--reference ort runs an .onnx file in ONNX Runtime; 'lenet5' is not one"),
    (["compare", "x.onnx", "--reference", "ort", "--per-layer"], 2,
     "--per-layer compares every layer with the interpreter; ONNX Runtime"),
    (["compare", "lenet5", "--reference", "torch"], 2, "argument --reference: invalid choice"),
    (["compile", "lenet5", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["optimize", "lenet5", "--passes", "fold_bn"], 2,
     "no pass named 'fold_bn'; did you mean 'fold_batch_norm'? known passes:"),
    (["optimize", "lenet5", "--passes", "fold_pad,dce"], 2,
     "no pass named 'dce'; did you mean 'eliminate_dead_code'?"),
])
def test_bad_requests_give_one_line_and_exit_2(args, code, fragment):
    assert_one_line_error(graphopt(*args), code, fragment)


@pytest.mark.parametrize("command", [graphopt_command(), [sys.executable, "-m", "graphopt"]])
def test_version_is_the_package_version(command):
    from importlib.metadata import version
    done = subprocess.run(command + ["--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"graphopt {go.__version__}"
    assert version("graphopt") == go.__version__    # pyproject.toml reads it from graphopt


def graphopt_into_a_closed_pipe(*args: str) -> subprocess.CompletedProcess:
    """`graphopt ARGS | head` where head has already gone: stdout's reader is closed."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(graphopt_command() + list(args), stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [["show", "resnet18"], ["list"], ["--help"], ["--version"],
                                  ["show", "lenet5", "--target", "cpu"]])
def test_a_reader_that_stops_early_ends_the_command_quietly(args):
    done = graphopt_into_a_closed_pipe(*args)
    assert done.returncode == cli.EXIT_CLOSED_OUTPUT == 141
    assert "rror" not in done.stderr, done.stderr      # no error line, no BrokenPipeError


def test_a_closed_output_does_not_hide_an_error():
    assert_one_line_error(graphopt_into_a_closed_pipe("show", "nosuchnet"), 2,
                          "unknown model 'nosuchnet'")


def test_debug_shows_the_traceback():
    done = graphopt("--debug", "show", "nosuchnet")
    assert done.returncode == 2 and "Traceback" in done.stderr


def test_wrong_input_shape_is_reported(lenet_library, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((1, 1, 28, 28), np.float32))
    code = cli.main(["-q", "run", lenet_library[1], "--input", str(tmp_path / "bad.npy")])
    error = capsys.readouterr().err.strip()
    assert code == cli.EXIT_USAGE and "\n" not in error
    assert "input 'input': expected float32[1,1,32,32], found float32[1,1,28,28]" in error


def test_run_with_only_the_runtime_saves_and_checks_outputs(lenet_library, tmp_path):
    folder, library = lenet_library
    x = np.random.default_rng(5).standard_normal((1, 1, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = go.interpret(go.zoo.lenet5(batch=1), {"input": x})["output"]

    np.savez(tmp_path / "good.npz", output=expected)
    done = graphopt("run", library, "--input", str(tmp_path / "x.npy"), "--save",
                    str(tmp_path / "out.npz"), "--repeat", "5", "--expect", str(tmp_path / "good.npz"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1x10" in done.stdout and "latency: median" in done.stdout
    assert "expected outputs: all match" in done.stdout
    with np.load(tmp_path / "out.npz") as saved:
        np.testing.assert_allclose(saved["output"], expected, rtol=1e-4, atol=1e-5)

    np.save(tmp_path / "wrong.npy", expected + 1.0)
    checked = graphopt("run", library, "--input", f"input={tmp_path / 'x.npy'}",
                       "--expect", str(tmp_path / "wrong.npy"))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "MISMATCH" in checked.stdout


def test_compare_a_library_with_the_interpreter(lenet_library):
    done = graphopt("compare", "lenet5", "--library", lenet_library[1])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "float64 reference: all outputs ok" in done.stdout


@pytest.mark.slow
def test_compare_exits_1_on_a_mismatch(lenet_library):
    # float32 can never equal the float64 reference exactly: tolerance 0 must report a mismatch
    strict = graphopt("compare", "lenet5", "--library", lenet_library[1], "--tolerance", "0")
    assert strict.returncode == 1 and "MISMATCH" in strict.stdout


def test_show_an_exported_library(lenet_library):
    done = graphopt("show", lenet_library[1])
    assert done.returncode == 0, done.stderr
    assert "'lenet5' exported for cpu" in done.stdout and "float32[1,1,32,32]" in done.stdout


def test_main_returns_exit_codes_in_process(lenet_library, capsys):
    assert cli.main(["show", "lenet5"]) == cli.EXIT_OK
    assert cli.main(["show", "nosuchnet"]) == cli.EXIT_USAGE
    assert "unknown model" in capsys.readouterr().err
    library = lenet_library[1]
    assert cli.main(["-q", "compare", "lenet5", "--library", library]) == cli.EXIT_OK
    assert cli.main(["-q", "compare", "lenet5", "--library", library,
                     "--tolerance", "0"]) == cli.EXIT_MISMATCH
    assert "MISMATCH" in capsys.readouterr().out


@pytest.mark.slow
def test_compare_compiles_and_matches():
    done = graphopt("compare", "lenet5", "--batch", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all outputs ok" in done.stdout


def test_compare_with_onednn_kernels():
    from graphopt.targets.tvm import onednn
    if not onednn.available():
        pytest.skip("oneDNN is not installed (the 'onednn' extra)")
    done = graphopt("compare", "lenet5", "--kernels", "onednn", "--batch", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all outputs ok" in done.stdout


@pytest.mark.slow
def test_bench_reports_ratios_to_the_compiled_model():
    done = graphopt("bench", "lenet5", "--repeat", "5")
    assert done.returncode == 0, done.stdout + done.stderr
    for engine in ("compiled", "interpreter", "onnxruntime"):
        assert engine in done.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_compile_for_cuda_writes_a_library_with_the_gpu_binary(tmp_path):
    done = graphopt("compile", "lenet5", "--target", "cuda:sm_80", "-o", "lenet5.so", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dlight schedules:" in done.stdout
    shown = graphopt("show", str(tmp_path / "lenet5.so"))
    assert "GPU binary:" in shown.stdout and "for sm_80" in shown.stdout


def test_show_for_a_target_lists_the_decisions_and_the_passes():
    shown = graphopt("show", "resnet18", "--target", "cpu")
    assert shown.returncode == 0, shown.stderr
    assert "computed as" in shown.stdout and "separable" in shown.stdout
    assert "fuse_conv_epilogue" in shown.stdout and "select_conv_algorithm" in shown.stdout
    assert "fused_conv2d" in shown.stdout and "batch_norm" not in shown.stdout.split("optimize")[0]


@pytest.mark.slow    # two compiles in fresh processes (~30 s); the default suite stays under 10 min
def test_compile_passes_and_threads(tmp_path):
    """--passes none lowers the graph as written (more kernels); --threads is accepted by
    compile and run; an unknown pass is a one-line usage error."""
    fused = graphopt("compile", "deep_convnet", "-o", "fused.so", cwd=tmp_path)
    plain = graphopt("compile", "deep_convnet", "--passes", "none", "--threads", "1", "-o", "plain.so",
                     cwd=tmp_path)
    assert fused.returncode == 0 and plain.returncode == 0, fused.stderr + plain.stderr
    kernels = lambda done: int(done.stdout.split(" kernels")[0].rsplit(" ", 1)[-1])
    assert kernels(plain) > kernels(fused)
    ran = graphopt("run", str(tmp_path / "plain.so"), "--threads", "2")
    assert ran.returncode == 0, ran.stderr
    assert_one_line_error(graphopt("compile", "lenet5", "--passes", "no_such_pass"), 2,
                          "no pass named 'no_such_pass'")
