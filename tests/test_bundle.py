"""The runtime bundle, built and run in CPU mode: the runner loads each library with only numpy,
the carried tvm_ffi wheel and the runtime libraries, checks the float64 references and times."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from graphopt.compare import FLOAT_TOLERANCE
from graphopt.tools.bundle import Case, make_bundle, weights_mode
from graphopt.errors import GraphoptError, InputError


def wheel_of_installed_ffi(folder) -> str:
    """The installed tvm_ffi packed as a wheel for this Python, standing in for the cp312 wheel
    a GPU machine gets (the runner unpacks the one whose tag matches its Python)."""
    import tvm_ffi
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    path = os.path.join(folder, f"apache_tvm_ffi-0.0.0-{tag}-{tag}-linux_x86_64.whl")
    package = os.path.dirname(tvm_ffi.__file__)
    with zipfile.ZipFile(path, "w") as wheel:
        for root, _, files in os.walk(package):
            for name in files:
                if "__pycache__" not in root:
                    full = os.path.join(root, name)
                    wheel.write(full, os.path.relpath(full, os.path.dirname(package)))
    return path


def numpy_only_path(folder) -> str:
    """A PYTHONPATH folder with numpy and nothing else."""
    site = os.path.join(folder, "numpy_only")
    os.makedirs(site)
    base = os.path.dirname(os.path.dirname(np.__file__))
    for name in ("numpy", "numpy.libs"):
        if os.path.exists(os.path.join(base, name)):
            os.symlink(os.path.join(base, name), os.path.join(site, name))
    return site


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    work = tmp_path_factory.mktemp("bundle")
    cases = [Case("lenet5", 2, "cpu")]
    if shutil.which("nvcc"):
        cases.append(Case("lenet5", 1, "cuda"))
    folder = str(work / "bundle")
    manifest = make_bundle(folder, cases, wheels=[wheel_of_installed_ffi(str(work))],
                           weights="params", max_mib=64)
    return folder, manifest, numpy_only_path(str(work))


def test_bundle_holds_what_the_runner_needs(bundle):
    folder, manifest, _ = bundle
    for name in ("run_bundle.py", "runtime.py", "typing_extensions.py", "manifest.json",
                 "lib/libtvm_runtime.so"):
        assert os.path.isfile(os.path.join(folder, name)), name
    assert manifest["mib"] < 64
    for case in manifest["cases"]:
        assert os.path.isfile(os.path.join(folder, case["library"]))
        for path in list(case["inputs"].values()) + list(case["references"].values()):
            assert np.load(os.path.join(folder, path)).dtype in (np.float32, np.float64)
    if any(c["device"] == "cuda" for c in manifest["cases"]):
        assert os.path.isfile(os.path.join(folder, "lib", "libtvm_runtime_cuda.so"))
        # the CUDA runtime the TVM library links against travels along (the driver does not)
        assert os.path.isfile(os.path.join(folder, "lib", "libcudart.so.13"))


def test_libraries_hold_code_and_the_runner_rebuilds_the_weights(bundle):
    folder, manifest, _ = bundle
    assert os.path.isfile(os.path.join(folder, "graphopt", "zoo", "__init__.py"))
    for case in manifest["cases"]:
        assert case["weights"] == {"zoo": "lenet5", "batch": case["batch"], "seed": 0,
                                   "passes": "default", "precision": "float32"}
        from graphopt.runtime import read_export
        metadata, _ = read_export(os.path.join(folder, case["library"]))
        assert [w["name"] for w in metadata["weights"]][:2] == ["conv1.weight", "conv1.bias"]


def run_bundle(folder, numpy_site, *options):
    """The runner's CPU cases in a fresh Python with numpy and the bundle's files only: the
    finished process and the results by case."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GRAPHOPT_TVM_RUNTIME_DIR")}
    env["PYTHONPATH"] = numpy_site
    done = subprocess.run([sys.executable, "-S", os.path.join(folder, "run_bundle.py"),
                           "--device", "cpu", *(options or ("--warmup", "1", "--repeat", "3"))],
                          env=env, capture_output=True, text=True, timeout=180)
    with open(os.path.join(folder, "results.json")) as f:
        return done, {r["case"]: r for r in json.load(f)["results"]}


def test_runner_checks_and_times_the_cpu_cases_with_only_numpy(bundle):
    folder, manifest, numpy_site = bundle
    done, results = run_bundle(folder, numpy_site, "--warmup", "2", "--repeat", "5")
    assert done.returncode == 0, done.stdout + done.stderr
    cpu = results["lenet5_b2_cpu"]   # weights rebuilt from the bundled zoo, digests checked
    assert cpu["status"] == "ran" and cpu["ok"] and cpu["max_rel_error"] < 1e-4
    assert cpu["median_ms"] > 0 and cpu["runs"] == 5
    if "lenet5_b1_cuda" in results:
        assert results["lenet5_b1_cuda"]["status"] == "skipped"
    assert os.path.isdir(os.path.join(folder, "site", "tvm_ffi")), "the wheel was unpacked"


def test_an_archived_bundle_unpacks_and_runs(bundle, tmp_path):
    """FOLDER.tar.xz holds the whole bundle; unpacked elsewhere, its runner checks the cases."""
    import tarfile
    from graphopt.tools.bundle import archive_bundle
    folder, manifest, numpy_site = bundle
    archive = archive_bundle(folder)
    assert archive == folder + ".tar.xz" and os.path.getsize(archive) > 0
    with tarfile.open(archive) as packed:
        packed.extractall(tmp_path, filter="data")
    unpacked = str(tmp_path / os.path.basename(folder))
    done, results = run_bundle(unpacked, numpy_site)
    assert done.returncode == 0, done.stdout + done.stderr
    assert results["lenet5_b2_cpu"]["ok"]


def test_runner_reports_a_wrong_reference_as_a_mismatch(bundle, tmp_path):
    folder, manifest, numpy_site = bundle
    copy = str(tmp_path / "copy")
    shutil.copytree(folder, copy, symlinks=True)
    case = next(c for c in manifest["cases"] if c["device"] == "cpu")
    reference = os.path.join(copy, next(iter(case["references"].values())))
    np.save(reference, np.load(reference) * 2.0)
    done, _ = run_bundle(copy, numpy_site, "--warmup", "0", "--repeat", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert " NO" in done.stdout


@pytest.mark.parametrize("spec, case", [
    ("resnet18:8:cuda", Case("resnet18", 8, "cuda")),
    ("vgg16:1:cuda:sm_80", Case("vgg16", 1, "cuda:sm_80")),
    ("lenet5:1:cpu", Case("lenet5", 1, "cpu")),
    ("lenet5:1:cpu:int8", Case("lenet5", 1, "cpu", "int8")),
    ("vgg11:2:cuda:sm_80:bfloat16", Case("vgg11", 2, "cuda:sm_80", "bfloat16"))])
def test_case_specs(spec, case):
    assert Case.parse(spec) == case
    assert case.name.startswith(f"{case.model}_b{case.batch}_")


@pytest.mark.parametrize("spec", ["resnet18", "resnet18:x:cuda", "resnet18:8", "resnet18:8:int8"])
def test_bad_case_specs(spec):
    with pytest.raises(InputError, match="expected MODEL:BATCH:TARGET"):
        Case.parse(spec)


def test_bundles_over_the_size_limit_are_refused_before_compiling(tmp_path):
    with pytest.raises(GraphoptError, match="over the 0.1 MiB limit"):
        make_bundle(str(tmp_path / "b"), [Case("lenet5", 1, "cpu")], weights="embedded",
                    max_mib=0.1)
    with pytest.raises(InputError, match="unknown models"):
        make_bundle(str(tmp_path / "c"), [Case("nosuchnet", 1, "cpu")])


def test_runner_times_torch_eager_on_the_same_device(bundle, tmp_path):
    pytest.importorskip("torch")
    folder, _, _ = bundle
    done = subprocess.run([sys.executable, os.path.join(folder, "run_bundle.py"), "--device",
                           "cpu", "--warmup", "1", "--repeat", "3", "--torch",
                           "--results", str(tmp_path / "torch.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ours/torch" in done.stdout
    with open(tmp_path / "torch.json") as f:
        cpu = next(r for r in json.load(f)["results"] if r["device"] == "cpu")
    assert cpu["torch_max_rel_error"] < 1e-4 and cpu["torch_median_ms"] > 0


def test_torch_runs_in_ieee_float32_without_tf32_and_restores_its_settings():
    """cuDNN convolutions take TF32 by default on sm_80+; the IEEE column turns that off (and
    matmuls' TF32) for the run only. A CPU table has nan where torch ran one way only."""
    torch = pytest.importorskip("torch")
    from graphopt.tools import bundle_runner
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with bundle_runner.ieee_float32():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
    columns = bundle_runner.torch_columns({"median_ms": 1.0, "torch_median_ms": 4.0}).split()
    assert columns[0] == "4.000" and columns[3] == "0.25" and columns[1:3] == ["nan", "nan"]
    assert bundle_runner.torch_header().split()[-3:] == ["ours/torch", "ours/ieee", "ours/fp16"]


@pytest.mark.parametrize("target, weights, mode", [
    ("cuda", "auto", "params"), ("cuda:sm_80", "auto", "params"), ("cpu", "auto", "embedded"),
    ("cpu", "params", "params"), ("cuda", "embedded", "embedded")])
def test_weights_travel_by_default_only_for_cpu_cases(target, weights, mode):
    assert weights_mode(Case("resnet18", 1, target), weights) == mode


@pytest.mark.parametrize("target, weights, mode", [
    ("cuda", "auto", "params"), ("cpu", "auto", "embedded"), ("cpu", "params", "params")])
def test_int8_and_float16_weights_travel_as_float32_ones(target, weights, mode):
    for precision in ("int8", "float16"):
        assert weights_mode(Case("resnet18", 1, target, precision), weights) == mode


def test_bfloat16_cases_embed_their_weights():
    assert weights_mode(Case("resnet18", 1, "cuda", "bfloat16"), "auto") == "embedded"
    with pytest.raises(InputError, match="a bfloat16 library embeds its weights"):
        weights_mode(Case("resnet18", 1, "cuda", "bfloat16"), "params")


def test_int8_weights_as_parameters_travel_once_and_float16_ones_are_rebuilt(tmp_path):
    """int8 LeNet-5 at batch 1 and 2 with weights as parameters: the runner reads them from the
    bundle (calibration could not rebuild them there), each distinct array stored once. The
    float16 case's are rebuilt from the zoo, with only numpy, to the digests taken at export."""
    folder = str(tmp_path / "bundle")
    manifest = make_bundle(folder, [Case("lenet5", 1, "cpu", "int8"),
                                    Case("lenet5", 2, "cpu", "int8"),
                                    Case("lenet5", 1, "cpu", "float16")],
                           wheels=[wheel_of_installed_ffi(str(tmp_path))], weights="params")
    assert manifest["cases"][2]["weights"] == {"zoo": "lenet5", "batch": 1, "seed": 0,
                                               "passes": "default", "precision": "float16"}
    one, two = (case["weights"]["arrays"] for case in manifest["cases"][:2])
    assert one["conv1.weight.int8"] == two["conv1.weight.int8"], "the int8 weights travel once"
    stored = os.listdir(os.path.join(folder, "weights"))
    assert len(stored) == len(set(one.values()) | set(two.values())) < len(one) + len(two)
    done, results = run_bundle(folder, numpy_only_path(str(tmp_path)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(r["status"] == "ran" and r["ok"] for r in results.values()), results


# ---- quantized cases -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lowbit_bundle(tmp_path_factory):
    """LeNet-5 quantized to int8 (go.quantize with a calibration) and converted to bfloat16."""
    work = tmp_path_factory.mktemp("lowbit_bundle")
    folder = str(work / "bundle")
    manifest = make_bundle(folder, [Case("lenet5", 2, "cpu", "int8"),
                                    Case("lenet5", 2, "cpu", "bfloat16")],
                           wheels=[wheel_of_installed_ffi(str(work))], max_mib=64)
    return folder, {c["precision"]: c for c in manifest["cases"]}, numpy_only_path(str(work))


def test_quantized_cases_hold_the_quantized_graphs_and_their_tolerances(lowbit_bundle):
    """The references are the quantized graph's (float64 interpreter): int8 within one step of
    the output's dequantize scale, bfloat16 within bfloat16's relative tolerance."""
    import graphopt as go
    from graphopt.runtime import read_export
    from graphopt.tools.bundle import quantized
    folder, cases, _ = lowbit_bundle
    assert cases["int8"]["name"] == "lenet5_b2_cpu_int8" and cases["int8"]["weights"] is None
    graph = go.zoo.lenet5(batch=2, seed=0)
    q = quantized(graph, "int8", seed=0)
    assert "qlinear_conv2d" in {n.op_name for n in q.nodes}
    last = q.value("output").producer
    assert last.op_name == "dequantize_linear"
    assert cases["int8"]["tolerances"]["output"] == {"relative": 1e-4,
                                                     "absolute": float(last.inputs[1].data)}
    assert cases["bfloat16"]["tolerances"]["output"] == {"relative": FLOAT_TOLERANCE["bfloat16"],
                                                         "absolute": 0.0}
    feeds = {"input": np.load(os.path.join(folder, cases["int8"]["inputs"]["input"]))}
    reference = np.load(os.path.join(folder, cases["int8"]["references"]["output"]))
    np.testing.assert_array_equal(reference,
                                  go.interpret(q, feeds, dtype=np.float64)["output"])
    for case in cases.values():
        metadata, _ = read_export(os.path.join(folder, case["library"]))
        assert not metadata.get("weights"), "quantized libraries embed their weights"


def test_runner_checks_int8_and_bfloat16_cases_with_only_numpy(lowbit_bundle):
    folder, cases, numpy_site = lowbit_bundle
    done, results = run_bundle(folder, numpy_site)
    assert done.returncode == 0, done.stdout + done.stderr
    for precision, bound in (("int8", 1e-4), ("bfloat16", 2e-2)):
        result = results[cases[precision]["name"]]
        assert result["status"] == "ran" and result["ok"], result
        assert result["max_rel_error"] < bound and result["runs"] == 3


def test_an_int8_output_two_steps_off_is_a_mismatch(lowbit_bundle, tmp_path):
    """One step of the output's scale is allowed (a rounding tie), with float32's rounding of
    it (a dequantized float32 output one step off reads a hair over a float64 step), not two."""
    folder, cases, numpy_site = lowbit_bundle
    copy = str(tmp_path / "copy")
    shutil.copytree(folder, copy, symlinks=True)
    case = cases["int8"]
    reference = os.path.join(copy, case["references"]["output"])
    expected = np.load(reference)
    shifted = expected.copy()
    shifted.flat[0] += 2 * case["tolerances"]["output"]["absolute"]
    np.save(reference, shifted)
    done, results = run_bundle(copy, numpy_site)
    assert done.returncode == 1 and not results[case["name"]]["ok"], done.stdout + done.stderr
    assert results[cases["bfloat16"]["name"]]["ok"]
    shifted.flat[0] = expected.flat[0] + (1 + 1e-6) * case["tolerances"]["output"]["absolute"]
    np.save(reference, shifted)
    done, results = run_bundle(copy, numpy_site)
    assert done.returncode == 0 and results[case["name"]]["ok"], done.stdout + done.stderr


def test_runner_rebuilds_the_weights_graphopt_passes_folded():
    """A library compiled with weights as parameters takes the weights of the optimized graph
    (batch norms folded): the runner rebuilds exactly those from the zoo graph."""
    import graphopt as go
    from graphopt import dsl
    from graphopt.tools.bundle_runner import compiled_weights
    with dsl.Builder("bn_net", seed=3) as b:
        x = b.input("input", (1, 3, 8, 8))
        graph = b.output(dsl.relu(dsl.batch_norm(dsl.conv2d(x, 8, 3, padding=1))))
    model = go.compile(graph, "cpu", weights="params")
    rebuilt = compiled_weights(graph, {"passes": "default"})
    assert [name for name, _ in model.weights] != sorted(graph.constants)
    for name, array in model.weights:
        np.testing.assert_array_equal(rebuilt[name], array)
