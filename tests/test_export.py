"""Export / load round trips: in this process (full TVM install) and in a subprocess whose
import path holds no `tvm` compiler package, only tvm_ffi, numpy and graphopt."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphopt as go
from graphopt import runtime
from graphopt.errors import GraphoptError, InputError, ModelFormatError
from graphopt.frontends import dsl
from graphopt.signature import Signature, probe_inputs


def two_output_net():
    """conv-bn-relu-pool-linear with two outputs (logits and their softmax), batch 2."""
    with dsl.Builder("two_heads", seed=3) as b:
        x = b.input("image", (2, 3, 12, 12))
        x = dsl.relu(dsl.batch_norm(dsl.conv2d(x, 6, kernel=3, padding=1)))
        logits = dsl.linear(dsl.flatten(dsl.max_pool2d(x, 2)), 5)
        return b.output(logits, dsl.softmax(logits), names=["logits", "probs"])


@pytest.fixture(scope="module")
def graph():
    return two_output_net()


@pytest.fixture(scope="module")
def feeds(graph):
    return {"image": np.random.default_rng(0).standard_normal((2, 3, 12, 12), dtype=np.float32)}


@pytest.fixture(scope="module")
def compiled(graph):
    return go.compile(graph, target="cpu")


@pytest.fixture(scope="module")
def exported(compiled, tmp_path_factory):
    return compiled.export(str(tmp_path_factory.mktemp("export") / "two_heads_cpu.so"))


def test_loaded_model_matches_compiled_bit_for_bit(compiled, exported, feeds):
    loaded = go.load(exported)
    expected, found = compiled.run(feeds), loaded.run(feeds)
    assert list(found) == ["logits", "probs"]
    for name in expected:
        np.testing.assert_array_equal(found[name], expected[name])


def test_loaded_model_carries_its_signature(exported):
    loaded = go.load(exported)
    assert loaded.inputs == [("image", (2, 3, 12, 12), "float32")]
    assert loaded.outputs == [("logits", (2, 5), "float32"), ("probs", (2, 5), "float32")]
    assert loaded.target == "cpu" and loaded.graph_name == "two_heads"


def test_compare_accepts_a_loaded_model(graph, exported, feeds):
    report = go.compare(graph, go.load(exported), feeds)
    assert report.ok, str(report)
    assert report.reference_dtype == "float64"
    assert [o.name for o in report.outputs] == ["logits", "probs"]


def test_compare_flags_a_loaded_model_of_other_weights(exported, feeds):
    other = two_output_net()
    other.constants[next(iter(other.constants))].data[...] += 1.0   # perturb the first weight
    assert not go.compare(other, go.load(exported), feeds).ok


@pytest.mark.parametrize("bad, message", [
    ({}, "expected inputs"),
    ({"image": np.zeros((1, 3, 12, 12), np.float32)}, "expected float32[2,3,12,12]"),
    ({"image": np.zeros((2, 3, 12, 12), np.float64)}, "found float64"),
    ({"image": np.zeros((2, 3, 12, 12), np.float32), "extra": np.zeros(1)}, "expected inputs"),
])
def test_loaded_model_rejects_bad_inputs(exported, bad, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        go.load(exported).run(bad)


def test_runs_after_the_first_check_and_copy_each_call_s_inputs(compiled, exported, feeds):
    """After a thread's first run, a model whose inputs are all small runs through the call it
    keeps for that thread (`runtime.staged_call`): each call's values are used (the results of
    a fresh model on the same inputs), other layouts give the same results, bad inputs are
    still refused with the general path's errors, and another thread gets its own call."""
    import threading
    other = {"image": (feeds["image"] * 2 + 1).astype(np.float32)}
    bad = [({"image": np.zeros((1, 3, 12, 12), np.float32)}, "expected float32[2,3,12,12]"),
           ({"image": np.zeros((2, 3, 12, 12), np.float64)}, "found float64"),
           ({"image": feeds["image"], "extra": np.zeros(1)}, "expected inputs"),
           ({}, "expected inputs")]
    for model, fresh in ((compiled, lambda: go.compile(compiled.graph, passes=())),
                         (go.load(exported), lambda: go.load(exported))):
        expected = {name: fresh().run(f) for name, f in (("feeds", feeds), ("other", other))}
        model.run(feeds)
        assert "staged_call" in model._per_thread.__dict__
        strided = {"image": np.asfortranarray(other["image"])}
        readonly = {"image": other["image"].copy()}
        readonly["image"].flags.writeable = False
        for inputs, name in ((other, "other"), (feeds, "feeds"), (strided, "other"),
                             (readonly, "other"), (dict(feeds.items()), "feeds")):
            for output, found in model.run(inputs).items():
                np.testing.assert_array_equal(found, expected[name][output])
        for inputs, message in bad:
            with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
                model.run(inputs)
        found = {}
        thread = threading.Thread(target=lambda: found.update(model.run(other)))
        thread.start()
        thread.join()
        for output, array in found.items():
            np.testing.assert_array_equal(array, expected["other"][output])
        assert set(found) == set(expected["other"])


def test_runs_after_the_first_take_the_model_s_thread_count(compiled, exported, feeds):
    """The call a thread keeps runs on the thread count of the model it runs now: copies of a
    model (which share its per-thread state) and a changed `threads` each get theirs."""
    import copy
    for model in (compiled, go.load(exported)):
        model.run(feeds)
        for threads in (1, 2, 1, 2):
            other = copy.copy(model)
            other.threads = threads
            other.run(feeds)
            assert runtime._thread_config.count == threads
        kept = model.threads
        for threads in (2, 1):
            model.threads = threads
            model.run(feeds)
            assert runtime._thread_config.count == threads
        model.threads = kept


def test_load_rejects_files_that_are_not_graphopt_exports(compiled, tmp_path):
    with pytest.raises(ModelFormatError, match="no such file"):
        go.load(str(tmp_path / "missing.so"))
    text = tmp_path / "not_a_library.so"
    text.write_text("hello")
    with pytest.raises(ModelFormatError, match="not a graphopt export"):
        go.load(str(text))
    plain = str(tmp_path / "plain_tvm.so")
    compiled.executable.export_library(plain)     # TVM's export, without graphopt's metadata
    with pytest.raises(ModelFormatError, match="not a graphopt export"):
        go.load(plain)


def test_export_and_load_keep_stderr_clean(compiled, tmp_path, capfd):
    """TVM logs a warning line per constant when its VM executable is saved or loaded; export
    and load leave those out of stderr (fd 2, where C++ writes)."""
    path = compiled.export(str(tmp_path / "quiet.so"))
    go.load(path)
    assert "Scope" not in capfd.readouterr().err


def test_the_scope_filter_passes_other_stderr_output_through(capfd):
    with runtime.without_scope_log():
        os.write(2, b"[03:00:18] /project/src/runtime/vm/executable.cc:340: Warning: Scope "
                    b"Loaded:\nkeep this\n[03:00:18] executable.cc:276: Warning: Scope Saving:")
        os.write(2, b"\nand this\n")
    assert capfd.readouterr().err == "keep this\nand this\n"
    os.write(2, b"after\n")   # stderr is fd 2 again
    assert capfd.readouterr().err == "after\n"


def test_export_path_must_be_a_shared_library(compiled, tmp_path):
    with pytest.raises(GraphoptError, match="must end in .so"):
        compiled.export(str(tmp_path / "model.tar"))


def test_metadata_is_readable_without_loading_the_model(compiled, exported):
    metadata, fatbin = runtime.read_export(exported)
    assert fatbin is None
    assert metadata["format"] == runtime.FORMAT and metadata["device"] == "cpu"
    assert [d["name"] for d in metadata["outputs"]] == ["logits", "probs"]
    json.dumps(metadata)
    # The runtime reads the signature on its own (it runs without graphopt): both agree.
    signature = Signature.from_dict(metadata)
    assert signature == compiled.signature
    loaded = go.load(exported)
    assert loaded.inputs == [(n, t.shape, t.dtype) for n, t in signature.inputs]
    assert loaded.outputs == [(n, t.shape, t.dtype) for n, t in signature.outputs]


def runtime_only_path(tmp_path) -> str:
    """A folder for sys.path holding tvm_ffi (and its one dependency, typing_extensions), numpy
    and graphopt, but no `tvm` package."""
    import numpy
    import tvm_ffi
    import typing_extensions
    folder = tmp_path / "runtime_only_site"
    folder.mkdir()
    packages = [os.path.dirname(tvm_ffi.__file__), os.path.dirname(numpy.__file__),
                os.path.dirname(go.__file__), typing_extensions.__file__]
    numpy_libs = os.path.join(os.path.dirname(os.path.dirname(numpy.__file__)), "numpy.libs")
    if os.path.isdir(numpy_libs):
        packages.append(numpy_libs)
    for package in packages:
        os.symlink(package, folder / os.path.basename(package))
    return str(folder)


def run_with_only_the_runtime(path: str, feeds: dict, tmp_path, threads: int = 1) -> dict:
    """The outputs of the exported library `path` on `feeds`, run in a fresh Python process
    that has numpy, tvm_ffi, graphopt and libtvm_runtime.so but no `tvm` package."""
    import tvm
    folder = tmp_path / "fresh_process"
    folder.mkdir(parents=True)
    libs = folder / "runtime_libs"
    libs.mkdir()
    os.symlink(os.path.join(os.path.dirname(tvm.__file__), "lib", "libtvm_runtime.so"),
               libs / "libtvm_runtime.so")
    np.savez(folder / "inputs.npz", **feeds)
    script = textwrap.dedent(f"""
        import sys
        sys.path[:] = ([{runtime_only_path(folder)!r}]
                       + [p for p in sys.path if "site-packages" not in p])
        import numpy as np
        from graphopt.runtime import load
        with np.load({str(folder / "inputs.npz")!r}) as inputs:
            out = load({path!r}, threads={threads}).run(dict(inputs))
        np.savez({str(folder / "out.npz")!r}, **out)
        assert "tvm" not in sys.modules, "the compiler package was imported"
    """)
    done = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True,
                          env={**os.environ, runtime.RUNTIME_DIR_ENV: str(libs)}, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    with np.load(folder / "out.npz") as found:
        return dict(found)


def test_cpu_export_runs_with_only_the_tvm_runtime(exported, compiled, feeds, tmp_path):
    import tvm
    libs = tmp_path / "runtime_libs"
    libs.mkdir()
    wheel_lib = os.path.join(os.path.dirname(tvm.__file__), "lib", "libtvm_runtime.so")
    os.symlink(wheel_lib, libs / "libtvm_runtime.so")
    np.save(tmp_path / "x.npy", feeds["image"])
    script = textwrap.dedent(f"""
        import sys
        sys.path[:] = ([{runtime_only_path(tmp_path)!r}]
                       + [p for p in sys.path if "site-packages" not in p])
        try:
            import tvm
            raise SystemExit("tvm must not be importable here")
        except ImportError:
            pass
        import numpy as np
        from graphopt.runtime import load
        model = load({exported!r})
        out = model.run({{"image": np.load({str(tmp_path / "x.npy")!r})}})
        np.savez({str(tmp_path / "out.npz")!r}, **out)
        assert "tvm" not in sys.modules, "the compiler package was imported"
        print("modules:", sorted(m for m in sys.modules if m.startswith(("tvm", "graphopt"))))
    """)
    env = {**os.environ, runtime.RUNTIME_DIR_ENV: str(libs)}
    done = subprocess.run([sys.executable, "-S", "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Scope Loaded" not in done.stderr, done.stderr   # see runtime.without_scope_log
    with np.load(tmp_path / "out.npz") as found:
        expected = compiled.run(feeds)
        for name in expected:
            np.testing.assert_array_equal(found[name], expected[name])


def test_weights_as_parameters_round_trip(graph, feeds, compiled, tmp_path):
    """compile(weights="params"): the library holds code only; the weights (those of the graph
    graphopt's passes built: batch norms folded) are bound at load time and checked against the
    digests recorded at export."""
    model = go.compile(graph, target="cpu", weights="params")
    assert go.compare(graph, model, feeds).ok
    path = model.export(str(tmp_path / "code_only.so"))
    loaded = go.load(path)
    assert [name for name, _, _ in loaded.weights] == [n for n, _ in model.weights]
    with pytest.raises(InputError, match="call bind_weights"):
        loaded.run(feeds)
    assert model.graph is not graph and "conv.weight_bn" in model.graph.constants
    constants = {name: c.data for name, c in go.optimize(graph).graph.constants.items()}
    with pytest.raises(InputError, match="missing weights"):
        loaded.bind_weights({})
    wrong = {**constants, model.weights[0][0]: constants[model.weights[0][0]] + 1.0}
    with pytest.raises(InputError, match="differs from the one the library was exported with"):
        loaded.bind_weights(wrong)
    loaded.bind_weights(constants)
    expected = compiled.run(feeds)
    for name, found in loaded.run(feeds).items():
        np.testing.assert_allclose(found, expected[name], rtol=1e-5, atol=1e-6)
    # weights bound again are the ones the next runs take
    loaded.bind_weights(wrong, check_content=False)
    assert not np.allclose(loaded.run(feeds)["logits"], expected["logits"], rtol=1e-3)
    loaded.bind_weights(constants)
    np.testing.assert_allclose(loaded.run(feeds)["logits"], expected["logits"], rtol=1e-5,
                               atol=1e-6)


def test_unknown_weights_mode_is_rejected(graph):
    with pytest.raises(GraphoptError, match="weights must be 'embedded' or 'params'"):
        go.compile(graph, target="cpu", weights="somewhere")


def test_device_copies_used_for_gpu_models_work_on_the_cpu_device(exported, compiled, feeds):
    """The copy path a CUDA model takes (allocate on the device, copy in, run, copy out),
    exercised with the CPU as the device."""
    import tvm_ffi
    loaded = go.load(exported)
    on_device = runtime.copy_to_device(feeds["image"], tvm_ffi.device("cpu", 0))
    outputs = [runtime.copy_to_host(t) for t in loaded.run_device([on_device])]
    expected = compiled.run(feeds)
    for name, found in zip(loaded.output_names, outputs):
        np.testing.assert_array_equal(found, expected[name])
    assert len(loaded.latencies(feeds, warmup=1, repeat=3)) == 3


@pytest.mark.parametrize("offset", [4, 16, 32])
def test_loaded_model_takes_unaligned_inputs(exported, compiled, feeds, offset):
    """Inputs at any offset from the kernels' 64-byte alignment run (an aligned copy is made,
    into a buffer each thread reuses) and give the same outputs as aligned ones, call after
    call."""
    from graphopt.runtime import ALIGNMENT, aligned
    loaded = go.load(exported)

    def shifted(arrays):
        views = {}
        for name, array in arrays.items():
            raw = np.empty(array.nbytes + 2 * ALIGNMENT, np.uint8)
            start = (-raw.ctypes.data % ALIGNMENT) + offset
            view = raw[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
            view[...] = array
            assert view.ctypes.data % ALIGNMENT == offset
            assert aligned(view).ctypes.data % ALIGNMENT == 0
            views[name] = view
        return views

    for arrays in (feeds, {name: a * 0.5 + 1 for name, a in feeds.items()}, feeds):
        expected = compiled.run(arrays)
        for model in (loaded, compiled):
            for name, found in model.run(shifted(arrays)).items():
                np.testing.assert_array_equal(found, expected[name])


@pytest.mark.parametrize("shape, offset, passed", [
    ((1, 1, 32, 32), 0, False),        # 4 KiB: copied, though aligned
    ((1, 3, 64, 64), 0, True),         # 48 KiB, aligned: passed as it is
    ((1, 3, 64, 64), 16, False)])      # 48 KiB at a 16-byte offset: copied
def test_run_input_passes_large_aligned_arrays_and_copies_the_rest(shape, offset, passed):
    """A run's CPU input is the caller's array where it is larger than COPIED_INPUT_BYTES and
    aligned, else an aligned copy in the thread's staging buffer for that input (the same
    buffer call after call), holding the array's values."""
    import threading
    import tvm_ffi
    from graphopt.runtime import ALIGNMENT, COPIED_INPUT_BYTES, run_input
    nbytes = int(np.prod(shape)) * 4

    def at_offset(values):
        """`values` in a new array `offset` bytes past a 64-byte boundary."""
        raw = np.empty(nbytes + 2 * ALIGNMENT, np.uint8)
        start = (-raw.ctypes.data % ALIGNMENT) + offset
        array = raw[start:start + nbytes].view(np.float32).reshape(shape)
        array[...] = values
        return array

    array = at_offset(np.random.default_rng(0).standard_normal(shape))
    assert (nbytes > COPIED_INPUT_BYTES) == (shape != (1, 1, 32, 32))
    staging = threading.local().__dict__
    cpu = tvm_ffi.device("cpu", 0)
    tensor = run_input(array, cpu, staging, 0)
    assert (tensor.data_ptr() == array.ctypes.data) == passed
    assert tensor.data_ptr() % ALIGNMENT == 0
    np.testing.assert_array_equal(np.from_dlpack(tensor), array)
    doubled = at_offset(array * 2)    # at the same offset: a bare `array * 2` may be aligned
    again = run_input(doubled, cpu, staging, 0)
    np.testing.assert_array_equal(np.from_dlpack(again), doubled)
    if not passed:
        assert again.data_ptr() == tensor.data_ptr()


def test_run_inputs_copies_small_inputs_into_the_buffer_made_for_them():
    """`run_inputs` copies a small input straight into the staging buffer `run_input` made for
    that slot (the same tensor, the new values), and makes a new one where the shape or dtype
    changed."""
    import threading
    import tvm_ffi
    from graphopt.runtime import run_inputs
    cpu, per_thread = tvm_ffi.device("cpu", 0), threading.local()
    rng = np.random.default_rng(0)
    first = [rng.standard_normal((1, 1, 32, 32)).astype(np.float32)]
    second = [rng.standard_normal((1, 1, 32, 32)).astype(np.float32)]
    (tensor,) = run_inputs(first, cpu, per_thread)
    (again,) = run_inputs(second, cpu, per_thread)
    assert again.data_ptr() == tensor.data_ptr()
    np.testing.assert_array_equal(np.from_dlpack(again), second[0])
    for changed in (second[0].astype(np.float64), second[0][..., :16].copy()):
        (other,) = run_inputs([changed], cpu, per_thread)
        assert other.dtype == str(changed.dtype) and tuple(other.shape) == changed.shape
        np.testing.assert_array_equal(np.from_dlpack(other), changed)


def test_compiled_run_takes_any_numpy_layout_and_returns_its_own_arrays(compiled, feeds):
    """`CompiledModel.run` passes large aligned inputs without a copy: non-contiguous and read-only
    inputs give the same outputs, the outputs are fresh arrays (a later run does not change
    them) and the caller's inputs are left as they were."""
    expected = compiled.run(feeds)
    kept = {name: a.copy() for name, a in feeds.items()}
    strided = {name: np.asfortranarray(a) for name, a in feeds.items()}
    readonly = {name: a.copy() for name, a in feeds.items()}
    for array in readonly.values():
        array.flags.writeable = False
    for variant in (strided, readonly):
        for name, found in compiled.run(variant).items():
            np.testing.assert_array_equal(found, expected[name])
    first = compiled.run(feeds)
    compiled.run({name: a + 1 for name, a in feeds.items()})
    for name, found in first.items():
        np.testing.assert_array_equal(found, expected[name])
    for name, array in feeds.items():
        np.testing.assert_array_equal(array, kept[name])


def test_a_library_for_instructions_this_cpu_lacks_is_refused_before_it_runs(tmp_path,
                                                                           monkeypatch):
    """The export records the CPU flags its code may use; loading on a CPU without one of them
    is a ModelFormatError naming it (running would be SIGILL), not a crash."""
    graph = go.zoo.lenet5()
    path = str(tmp_path / "lenet5_haswell.so")
    go.compile(graph, "cpu", mcpu="haswell").export(path)
    metadata = runtime.read_export(path)[0]
    assert metadata["cpu_features"] == ["avx2", "fma"]
    flags = runtime.host_cpu_flags()
    if flags is not None and {"avx2", "fma"} <= flags:
        assert go.load(path).run(probe_inputs(graph))["output"].shape == (1, 10)
    monkeypatch.setattr(runtime, "host_cpu_flags", lambda: {"sse4_2", "fma"})
    with pytest.raises(go.ModelFormatError, match="built for a CPU with avx2, which this CPU "
                                                  "lacks"):
        go.load(path)
    monkeypatch.setattr(runtime, "host_cpu_flags", lambda: None)   # not Linux: no check
    if flags is not None and {"avx2", "fma"} <= flags:
        go.load(path)


def test_a_model_compiled_for_another_cpu_is_refused_before_it_runs(monkeypatch):
    """In process too: a compile for instructions this CPU lacks succeeds (for export) but
    cannot run here."""
    graph = go.zoo.lenet5()
    monkeypatch.setattr(runtime, "host_cpu_flags", lambda: {"sse4_2"})
    model = go.compile(graph, "cpu", mcpu="haswell")
    with pytest.raises(go.ModelFormatError, match="compiled for haswell: built for a CPU with "
                                                  "avx2, fma, which this CPU lacks"):
        model.run(probe_inputs(graph))


@pytest.mark.parametrize("mcpu, own", [("znver3", "sse4a"), ("sapphirerapids", "avx512_fp16"),
                                       ("icelake-server", "gfni")])
def test_a_build_for_one_vendor_s_cpu_names_its_vendor_only_instructions(mcpu, own,
                                                                        monkeypatch):
    """An AVX2 build for AMD's Zen 3 may hold SSE4A's insertq (LLVM emits it for the zoo's
    int8 LeNet-5), which Intel's CPUs lack; a Sapphire Rapids build AVX512-FP16, an Ice Lake
    one GFNI, which AMD's Zen 3 and Zen 4 lack: each is a flag the build requires, so a CPU
    without it gets a ModelFormatError naming it instead of SIGILL."""
    from graphopt.targets.tvm.cpu import host_target
    from graphopt.targets.tvm.export import cpu_features
    required = set(cpu_features(host_target(mcpu)))
    assert own in required
    monkeypatch.setattr(runtime, "host_cpu_flags", lambda: frozenset(required - {own}))
    graph = go.zoo.lenet5()
    model = go.compile(graph, "cpu", mcpu=mcpu)
    with pytest.raises(go.ModelFormatError, match=f"{own}, which this CPU lacks"):
        model.run(probe_inputs(graph))


def test_read_only_bfloat16_inputs_run(tmp_path):
    """A read-only bfloat16 input (numpy's DLPack exports neither bfloat16 nor read-only
    arrays) is copied to the device and runs, compiled and loaded alike."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    with go.dsl.Builder("bf16_relu", seed=0) as b:
        graph = b.output(go.dsl.relu(b.input("x", (2, 17), dtype="bfloat16")))
    x = np.linspace(-2, 2, 34, dtype=np.float32).reshape(2, 17).astype(ml_dtypes.bfloat16)
    x.flags.writeable = False
    compiled = go.compile(graph, "cpu")
    path = str(tmp_path / "bf16_relu.so")
    compiled.export(path)
    expected = np.maximum(x.astype(np.float32), 0)
    for model in (compiled, go.load(path)):
        (found,) = model.run({"x": x}).values()
        np.testing.assert_array_equal(found.astype(np.float32), expected)
