"""A runtime bundle: one small folder that runs graphopt's exported models on a machine that has
only Python + numpy (e.g. a lent GPU machine), and checks them against interpreter references.

    bundle/
      run_bundle.py            the runner (graphopt/tools/bundle_runner.py)
      runtime.py               graphopt/runtime.py, used on its own
      typing_extensions.py     the one dependency of tvm_ffi
      graphopt/                graphopt's source (pure Python + numpy): zoo weights, --torch
      lib/                     libtvm_runtime.so (+ libtvm_runtime_cuda.so)
      wheels/                  apache-tvm-ffi wheel(s) for the target Python, unpacked on first run
      models/<case>.so         exported libraries
      weights/<digest>.npy     an int8 case's weights, when they are parameters
      data/<model>_b<batch>/   inputs and float64-interpreter references as .npy
      manifest.json            the cases: library, inputs, references, tolerances

By default CUDA libraries take their weights as parameters (`compile(..., weights="params")`) and
the runner rebuilds them from the zoo with the recorded seed, checking each against the digest
taken at export: vgg16's 528 MiB of weights never travel, only its code does. CPU libraries embed
their weights by default, because the CPU pipeline prepacks constant weights (10x faster).

A case may compute in a lower precision (`go.quantize`): int8, calibrated on seeded probe inputs
(the bundle checks kernels, not accuracy), or float16 / bfloat16. Its references are the float64
interpretation of the quantized graph. As parameters, float16 weights are rebuilt from the zoo
like float32 ones; int8 ones would need the calibration, so the runner reads them from
weights/, one file per distinct array (most are shared by a model's batch sizes). bfloat16
cases embed theirs: numpy alone cannot read them.

`tools/make_bundle.py` is the command-line front end.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

from .. import runtime
from ..compare import tolerance_for
from ..errors import GraphoptError, InputError, WriteError
from ..files import atomic_output, temporary_directory
from ..signature import probe_inputs

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.dirname(HERE)   # graphopt's source, for runners that rebuild the weights
RUNNER = os.path.join(HERE, "bundle_runner.py")
RUNTIME = os.path.join(PACKAGE, "runtime.py")
# Bytes per weight element: what an embedded case's weights take in its library.
PRECISIONS = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
# Weights as parameters the runner rebuilds from the zoo (a float16 case's are the float32
# ones converted); int8 ones come from calibration and travel in the bundle.
REBUILT_PRECISIONS = ("float32", "float16")
CALIBRATION_BATCHES = 8   # int8 cases: seeded probe inputs the activation ranges are taken from


@dataclass(frozen=True)
class Case:
    model: str       # zoo name
    batch: int
    target: str      # graphopt target: cpu, cuda, cuda:sm_80, ...
    precision: str = "float32"   # what the model computes in: a key of PRECISIONS

    @property
    def name(self) -> str:
        suffix = "" if self.precision == "float32" else f"_{self.precision}"
        return f"{self.model}_b{self.batch}_{self.target.replace(':', '_')}{suffix}"

    @classmethod
    def parse(cls, spec: str) -> "Case":
        """MODEL:BATCH:TARGET[:PRECISION], e.g. resnet18:8:cuda, lenet5:1:cpu:int8 or
        vgg11:1:cuda:sm_80:bfloat16 (the target may hold a colon)."""
        parts = spec.split(":", 2)
        if len(parts) != 3 or not parts[1].isdigit() or parts[2] in PRECISIONS:
            raise InputError(f"bad case {spec!r}: expected MODEL:BATCH:TARGET[:PRECISION], "
                             "e.g. resnet18:8:cuda or lenet5:1:cpu:int8")
        target, _, last = parts[2].rpartition(":")
        if target and last in PRECISIONS:
            return cls(parts[0], int(parts[1]), target, last)
        return cls(parts[0], int(parts[1]), parts[2])


def weights_mode(case: Case, weights: str) -> str:
    """"params" or "embedded" for `case`; "auto" means params for CUDA cases, embedded for CPU
    ones. bfloat16 weights are always embedded (a numpy-only machine cannot read them)."""
    if case.precision == "bfloat16":
        if weights == "params":
            raise InputError(f"case {case.name}: a bfloat16 library embeds its weights (numpy "
                             "alone cannot read bfloat16 arrays); bundle it with weights 'auto' "
                             "or 'embedded'")
        return "embedded"
    if weights != "auto":
        return weights
    return "params" if case.target.startswith("cuda") else "embedded"


def quantized(graph, precision: str, seed: int):
    """`graph` computing in `precision`: as it is for float32, else `go.quantize`d (int8
    calibrated on CALIBRATION_BATCHES probe inputs seeded after the case's own)."""
    import graphopt as go
    if precision == "float32":
        return graph
    if precision == "int8":
        batches = [probe_inputs(graph, seed + 1 + i) for i in range(CALIBRATION_BATCHES)]
        return go.quantize(graph, go.calibrate(graph, batches)).graph
    return go.quantize(graph, precision).graph


def output_tolerance(graph, name: str) -> tuple[float, float]:
    """(relative, absolute) error allowed for output `name` of a library compiled from `graph`
    against the float64 interpretation of `graph` itself; it passes within their sum. A float
    output a dequantize_linear makes comes from integers that the compiled kernels compute
    as the interpreter does but for a value at a rounding tie (compare.steps_for): one step
    of its scale, and float32's tolerance. Any other output: its dtype's tolerance over the
    dtypes `graph` computes in (compare.tolerance_for)."""
    value = graph.value(name)
    node = value.producer
    if node is not None and node.op_name == "dequantize_linear" and node.inputs[1].is_constant:
        step = float(np.max(np.abs(node.inputs[1].data)))
        return tolerance_for(value.dtype), step
    return tolerance_for(value.dtype, graph), 0.0


def runtime_libraries(device_kinds: set[str]) -> list[str]:
    """libtvm_runtime.so, and for CUDA libtvm_runtime_cuda.so and the CUDA runtime it links
    against (where this machine has it), so the target needs only the NVIDIA driver."""
    import tvm
    folder = os.path.join(os.path.dirname(tvm.__file__), "lib")
    libraries = [os.path.join(folder, "libtvm_runtime.so")]
    if "cuda" in device_kinds:
        cuda_lib = os.path.join(folder, "libtvm_runtime_cuda.so")
        libraries.append(cuda_lib)
        linked = subprocess.run(["ldd", cuda_lib], capture_output=True, text=True).stdout
        for line in linked.splitlines():
            name, _, where = line.strip().partition(" => ")
            if name == runtime.CUDA_RUNTIME and where.startswith("/"):
                libraries.append(where.split(" (")[0])
    return libraries


def download_ffi_wheel(folder: str, python_version: str = "3.12") -> str:
    """The apache-tvm-ffi wheel matching the installed version, for another CPython (pip)."""
    from importlib.metadata import version
    pinned = f"apache-tvm-ffi=={version('apache-tvm-ffi')}"
    done = subprocess.run([sys.executable, "-m", "pip", "download", pinned, "--no-deps",
                           "--only-binary=:all:", "--python-version", python_version,
                           "--platform", "manylinux_2_28_x86_64", "-d", folder, "-q"],
                          capture_output=True, text=True)
    wheels = [f for f in os.listdir(folder) if f.startswith("apache_tvm_ffi") and f.endswith(".whl")]
    if done.returncode != 0 or not wheels:
        raise GraphoptError(f"could not download {pinned} for Python {python_version}: "
                            f"{(done.stderr.strip().splitlines() or ['no wheel'])[-1]}")
    return os.path.join(folder, wheels[0])


def folder_mib(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(folder)
               for f in files) / 2**20


def make_bundle(folder: str, cases: Sequence[Case], *, wheels: Sequence[str] = (), seed: int = 0,
                weights: str = "auto", max_mib: float = 64.0, keep_going: bool = False,
                progress: Callable[[str], None] = lambda _: None) -> dict:
    """Build the bundle in `folder` (created, complete or not at all; must not exist) and
    return its manifest. `weights`: "params" (as parameters: rebuilt from the zoo on the
    target machine, or stored for quantized cases), "embedded", or "auto" (params for CUDA
    cases, embedded for CPU ones). `keep_going`: a case that fails to build is listed in the
    manifest's "not_built" and the bundle holds the others."""
    from .. import zoo
    if os.path.exists(folder):
        raise InputError(f"{folder} already exists; give a new folder for the bundle")
    unknown = [c.model for c in cases if c.model not in zoo.MODELS]
    if unknown:
        raise InputError(f"unknown models {unknown}; expected zoo names ({', '.join(zoo.MODELS)})")
    if weights not in ("params", "embedded", "auto"):
        raise InputError(f"weights must be 'params', 'embedded' or 'auto', found {weights!r}")
    unknown = [c.precision for c in cases if c.precision not in PRECISIONS]
    if unknown:
        raise InputError(f"unknown precisions {unknown}; expected {', '.join(PRECISIONS)}")
    mode = {c: weights_mode(c, weights) for c in cases}
    # Embedded weights travel once per library, an int8 case's parameters once per model:
    # refuse early what cannot fit.
    travelling = [(c.model, c.precision) for c in cases if mode[c] == "embedded"]
    travelling += {(c.model, c.precision) for c in cases
                   if mode[c] == "params" and c.precision not in REBUILT_PRECISIONS}
    sizes = {m: sum(c.data.nbytes for c in zoo.MODELS[m](batch=1, seed=seed).constants.values())
             for m in {m for m, _ in travelling}}
    estimate = sum(sizes[m] * PRECISIONS[p] / 4 for m, p in travelling) / 2**20
    if estimate > max_mib:
        raise GraphoptError(f"the cases' weights alone take {estimate:.1f} MiB, over the "
                            f"{max_mib:g} MiB limit; bundle fewer or smaller cases per run")
    # Built in a hidden folder beside `folder` and renamed at the end: the bundle appears
    # complete or not at all (a failed or interrupted build leaves nothing behind).
    parent, name = os.path.split(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    with temporary_directory(f".{name}.", dir=parent) as staging:
        built = os.path.join(staging, name)
        manifest = _fill_bundle(built, cases, mode, wheels, seed, keep_going, progress)
        size = folder_mib(built)
        if size > max_mib:
            raise GraphoptError(f"the bundle for {folder} holds {size:.1f} MiB, over the "
                                f"{max_mib:g} MiB limit: bundle fewer or smaller cases per run "
                                "(or raise the limit and carry it compressed)")
        try:
            os.rename(built, folder)
        except OSError as e:
            raise WriteError(f"cannot write {folder}: {e.strerror}") from e
    manifest["mib"] = round(size, 2)
    return manifest


def _fill_bundle(folder: str, cases: Sequence[Case], mode: dict, wheels: Sequence[str],
                 seed: int, keep_going: bool, progress: Callable[[str], None]) -> dict:
    """Write the bundle's files into the new `folder`; returns the manifest."""
    for sub in ("lib", "wheels", "models", "data", "weights"):
        os.makedirs(os.path.join(folder, sub))
    shutil.copy(RUNNER, os.path.join(folder, "run_bundle.py"))
    shutil.copy(RUNTIME, os.path.join(folder, "runtime.py"))
    import typing_extensions
    shutil.copy(typing_extensions.__file__, folder)
    shutil.copytree(PACKAGE, os.path.join(folder, "graphopt"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for wheel in wheels:
        shutil.copy(wheel, os.path.join(folder, "wheels"))

    manifest = {"seed": seed, "cases": [], "not_built": []}
    graphs, references = {}, {}
    for case in cases:
        try:
            manifest["cases"].append(_add_case(folder, case, mode[case], seed, graphs,
                                               references, progress))
        except GraphoptError as e:
            if not keep_going:
                raise
            progress(f"{case.name} not built: {e}")
            manifest["not_built"].append({"case": case.name, "error": str(e)})
    if not manifest["cases"]:
        raise GraphoptError("no case of the bundle could be built: "
                            + "; ".join(f"{f['case']}: {f['error']}"
                                        for f in manifest["not_built"]))
    for library in runtime_libraries({c["device"] for c in manifest["cases"]}):
        shutil.copy(library, os.path.join(folder, "lib"))
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def _add_case(folder: str, case: Case, mode: str, seed: int, graphs: dict, references: dict,
              progress: Callable[[str], None]) -> dict:
    """Write `case`'s inputs, references, library (and stored weights) into `folder`; returns
    its manifest entry. `graphs` and `references` hold what cases of one model share."""
    import graphopt as go
    from .. import zoo
    key = (case.model, case.batch)
    if key not in graphs:
        progress(f"building {case.model} batch {case.batch}")
        graph = zoo.MODELS[case.model](batch=case.batch, seed=seed)
        feeds = probe_inputs(graph, seed)
        os.makedirs(os.path.join(folder, data_folder(case)))
        graphs[key] = (graph, feeds, save_arrays(folder, case, "input", feeds))
    graph, feeds, inputs = graphs[key]
    if key + (case.precision,) not in references:
        compiled = quantized(graph, case.precision, seed)
        progress(f"float64 reference for {case.model} batch {case.batch} {case.precision}")
        expected = go.interpret(compiled, feeds, dtype=np.float64)
        references[key + (case.precision,)] = (compiled, save_arrays(
            folder, case, f"reference_{case.precision}", expected))
    compiled, files = references[key + (case.precision,)]
    tolerances = {name: output_tolerance(compiled, name) for name in files}
    progress(f"compiling and exporting {case.name}")
    library = os.path.join("models", case.name + ".so")
    model = go.compile(compiled, target=case.target, weights=mode)
    model.export(os.path.join(folder, library))
    weights = None
    if mode == "params":
        weights = ({"zoo": case.model, "batch": case.batch, "seed": seed, "passes": "default",
                    "precision": case.precision} if case.precision in REBUILT_PRECISIONS else
                   {"arrays": save_weights(folder, dict(model.weights))})
    return {**asdict(case), "name": case.name, "library": library,
            "device": model.device_kind, "inputs": inputs, "references": files,
            "tolerances": {name: {"relative": rel, "absolute": step}
                           for name, (rel, step) in tolerances.items()},
            "weights": weights}


def data_folder(case: Case) -> str:
    """Where a model and batch's inputs and references lie (shared by its targets and
    precisions)."""
    return os.path.join("data", f"{case.model}_b{case.batch}")


def save_arrays(folder: str, case: Case, kind: str, arrays: dict) -> dict[str, str]:
    """Each array as data/<model>_b<batch>/<kind>_<name>.npy; their paths by name."""
    paths = {}
    for name, array in arrays.items():
        path = os.path.join(data_folder(case), f"{kind}_{name}.npy".replace("/", "_"))
        np.save(os.path.join(folder, path), array)
        paths[name] = path
    return paths


def save_weights(folder: str, weights: dict[str, np.ndarray]) -> dict[str, str]:
    """Each of `weights` as weights/<digest>.npy, written once per distinct content (the int8
    weights of a model's batch sizes are the same; their calibrated scales differ); the paths
    by name."""
    paths = {}
    for name, array in weights.items():
        paths[name] = os.path.join("weights", f"{runtime.content_key(array)[:24]}.npy")
        if not os.path.exists(os.path.join(folder, paths[name])):
            np.save(os.path.join(folder, paths[name]), array)
    return paths


def archive_bundle(folder: str) -> str:
    """`folder` packed as `folder`.tar.xz beside it (written whole or not at all), for a
    machine that takes files up to a size: a CUDA bundle's code and references shrink 2-3x
    (the libraries hold their CUDA source), random weights hardly. There: `tar xJf`."""
    import tarfile
    path = os.path.abspath(folder).rstrip(os.sep) + ".tar.xz"
    with atomic_output(path) as partial:
        with tarfile.open(partial, "w:xz", preset=6) as archive:
            archive.add(folder, arcname=os.path.basename(os.path.abspath(folder)))
    return path
