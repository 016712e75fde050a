"""The CUDA target on a machine without a GPU: target names, dlight schedules and the report of
naive ones, nvcc's binary for the requested arch inside the exported library, and the load-time
callback that serves it. Running CUDA code needs a GPU and is done by the runtime bundle."""
from __future__ import annotations

import glob
import re
import os
import shutil
import subprocess

import pytest

import graphopt as go
from graphopt import runtime
from graphopt.errors import GraphoptError, ModelFormatError
from graphopt.frontends import dsl
from graphopt.targets.tvm import cuda

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")


def cuobjdump() -> str | None:
    """CUDA's cuobjdump from PATH or from the nvidia-cuda-cuobjdump wheel, if either exists."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import nvidia
    except ImportError:
        return None
    matches = [p for base in nvidia.__path__ for p in glob.glob(os.path.join(base, "*", "bin",
                                                                             "cuobjdump"))]
    return matches[0] if matches else None


def small_net():
    with dsl.Builder("small_cuda", seed=1) as b:
        x = b.input("input", (2, 3, 16, 16))
        x = dsl.relu(dsl.batch_norm(dsl.conv2d(x, 8, kernel=3, padding=1)))
        x = dsl.max_pool2d(x, 2)
        return b.output(dsl.softmax(dsl.linear(dsl.flatten(x), 10)))


@pytest.fixture(scope="module")
def compiled():
    return go.compile(small_net(), target="cuda")


@pytest.fixture(scope="module")
def exported(compiled, tmp_path_factory):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed")
    return compiled.export(str(tmp_path_factory.mktemp("cuda") / "small_cuda.so"))


@pytest.mark.parametrize("name, arch", [("cuda", "sm_90"), ("cuda:sm_80", "sm_80"),
                                        ("cuda:sm_90a", "sm_90a"), ("cuda:sm_120", "sm_120")])
def test_cuda_target_names(name, arch):
    assert cuda.parse_cuda_target(name) == arch


@pytest.mark.parametrize("name", ["cuda:", "cuda:sm_8", "cuda:80", "cuda:compute_90", "gpu"])
def test_bad_cuda_target_names_are_rejected(name):
    with pytest.raises(GraphoptError, match="expected 'cuda' or 'cuda:sm_<NN>'|unknown target"):
        go.compile(small_net(), target=name)


def test_every_kernel_gets_a_dlight_schedule(compiled):
    report = compiled.schedule_report
    assert sorted(report.rules) == compiled.kernels
    assert "none" not in report.rules.values()
    conv = [k for k in report.rules if "conv2d" in k]
    matmul = [k for k in report.rules if "matmul" in k]
    assert conv and matmul
    assert all(report.rules[k] == "Matmul" for k in conv + matmul), report.rules
    assert report.naive_heavy_kernels == []
    assert "Matmul x2" in str(report)


def test_schedule_report_names_convolutions_left_on_the_fallback_rule():
    report = cuda.ScheduleReport({"fused_conv2d_add": "Fallback", "max_pool2d": "Fallback",
                                  "fused_matmul_add": "Matmul", "softmax": "GeneralReduction"})
    assert report.fallback == ["fused_conv2d_add", "max_pool2d"]
    assert report.naive_heavy_kernels == ["fused_conv2d_add"]
    assert "naive Fallback schedule: fused_conv2d_add" in str(report)


def test_schedule_report_names_convolutions_not_scheduled_as_gemm():
    report = cuda.ScheduleReport({"fused_conv2d1_add_relu": "GeneralReduction",
                                  "fused_conv2d_add_relu": "Matmul", "softmax": "GeneralReduction"})
    assert report.convolutions_off_matmul == ["fused_conv2d1_add_relu"]
    assert report.naive_heavy_kernels == []
    assert "not scheduled as GEMM: fused_conv2d1_add_relu (GeneralReduction)" in str(report)


def test_the_kernels_are_gpu_kernels(compiled):
    source = cuda.cuda_source(compiled.executable)
    assert source.count("__global__") >= compiled.kernel_count()
    assert compiled.device_kind == "cuda" and str(compiled.tvm_target.arch) == "sm_90"


@needs_nvcc
def test_export_embeds_a_binary_for_the_requested_arch(compiled, exported):
    metadata, fatbin = runtime.read_export(exported)
    assert metadata["device"] == "cuda" and metadata["cuda_arch"] == "sm_90"
    assert fatbin[:4] == b"\x50\xed\x55\xba", "fatbin magic"
    assert cuda.fatbin_archs(fatbin) == ["sm_90"]
    source = cuda.cuda_source(compiled.executable)
    assert metadata["cuda_source_sha256"] == cuda.source_digest(source)


def test_a_model_of_no_kernels_exports_without_gpu_code(tmp_path):
    """An ONNX model of an Identity compiles to no kernel: nothing to embed."""
    from onnx import TensorProto, helper
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("x", "y")]
    proto = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])],
                                                "no_kernels", io[:1], io[1:]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model = go.compile(go.load_onnx(proto), target="cuda")
    assert model.kernels == []
    metadata, fatbin = runtime.read_export(model.export(str(tmp_path / "no_kernels.so")))
    assert metadata["device"] == "cuda" and metadata["cuda_arch"] == "sm_90"
    assert fatbin is None and "cuda_source_sha256" not in metadata


@needs_nvcc
def test_cuobjdump_sees_sm_90_code_in_the_library(exported):
    tool = cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not available (pip install nvidia-cuda-cuobjdump)")
    listing = subprocess.run([tool, "-lelf", "-lptx", exported], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    assert "sm_90.cubin" in listing.stdout and "sm_90.ptx" in listing.stdout, listing.stdout


@needs_nvcc
def test_nvcc_builds_for_another_arch(compiled):
    fatbin = cuda.compile_cuda_source(cuda.cuda_source(compiled.executable), "sm_80")
    assert cuda.fatbin_archs(fatbin) == ["sm_80"]


@needs_nvcc
def test_loading_serves_the_embedded_binary_to_tvms_compile_callback(exported):
    import tvm_ffi
    metadata, fatbin = runtime.read_export(exported)
    before = tvm_ffi.get_global_func(runtime.CUDA_COMPILE_CALLBACK, allow_missing=True)
    source = "extern \"C\" __global__ void k() {}"
    with runtime.serving_cuda_binary(fatbin, cuda.source_digest(source), exported):
        callback = tvm_ffi.get_global_func(runtime.CUDA_COMPILE_CALLBACK)
        assert bytes(callback(source)) == fatbin
        with pytest.raises(Exception, match="not the one its binary was built from"):
            callback(source + " ")
    after = tvm_ffi.get_global_func(runtime.CUDA_COMPILE_CALLBACK, allow_missing=True)
    assert (before is None) == (after is None)


@needs_nvcc
def test_loading_a_cuda_export_without_a_gpu_says_what_is_missing(exported):
    try:
        import ctypes
        ctypes.CDLL("libcuda.so.1")
        pytest.skip("this machine has a CUDA driver")
    except OSError:
        pass
    with pytest.raises(ModelFormatError, match="libcuda.so.1"):
        go.load(exported)


def test_weights_as_parameters_keep_the_gemm_schedules():
    model = go.compile(small_net(), target="cuda", weights="params")
    assert sorted(name for name, _ in model.weights) == sorted(model.graph.constants)
    conv = [k for k in model.schedule_report.rules if "conv2d" in k]
    assert conv and all(model.schedule_report.rules[k] == "Matmul" for k in conv)
    # the linear layer reads its weight as given, [O, I]: no transpose kernel at every run
    assert not [k for k in model.schedule_report.rules if "transpose" in k]
    dense = [rule for k, rule in model.schedule_report.rules.items() if "dense" in k]
    assert dense == ["Matmul"]   # batch 2 (GEMV at batch 1)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(go.zoo.MODELS))
def test_every_zoo_model_compiles_for_cuda(name, tmp_path):
    graph = go.zoo.MODELS[name](batch=1)
    # weights as parameters: the same kernels, without writing vgg16's 528 MiB into the library
    model = go.compile(graph, target="cuda", weights="params")
    report = model.schedule_report
    assert "none" not in report.rules.values()
    assert report.naive_heavy_kernels == [], str(report)
    if shutil.which("nvcc"):
        metadata, fatbin = runtime.read_export(model.export(str(tmp_path / f"{name}.so")))
        assert cuda.fatbin_archs(fatbin) == ["sm_90"]


@needs_nvcc
def test_small_zoo_model_compiles_and_exports_for_cuda(tmp_path):
    model = go.compile(go.zoo.lenet5(batch=1), target="cuda")
    assert model.schedule_report.naive_heavy_kernels == []
    _, fatbin = runtime.read_export(model.export(str(tmp_path / "lenet5_cuda.so")))
    assert cuda.fatbin_archs(fatbin) == ["sm_90"]


@needs_nvcc
def test_divisions_and_square_roots_are_ieee_despite_fast_math(compiled, monkeypatch):
    """TVM builds with --use_fast_math; graphopt's flags after it restore IEEE division (the
    softmax's here; a quantized model's requantize multiplier when its scales are parameters)
    and keep denormals."""
    from tvm.support import nvcc
    real, built = nvcc.compile_cuda, {}

    def to_ptx(source, target_format, arch, **options):   # what nvcc emits, as PTX text
        built["ptx"] = bytes(real(source, target_format="ptx", arch=["-arch=sm_90"],
                                  **options)).decode()
        return built["ptx"].encode()

    monkeypatch.setattr(nvcc, "compile_cuda", to_ptx)
    monkeypatch.setattr(cuda, "_binaries", {})
    with cuda.cuda_target("sm_90"):
        cuda.compile_cuda_source(cuda.cuda_source(compiled.executable), "sm_90")
    assert "div.rn.f32" in built["ptx"]
    assert "div.approx" not in built["ptx"] and ".ftz" not in built["ptx"]


@needs_nvcc
def test_nvccs_own_message_reaches_the_error(compiled):
    broken = cuda.cuda_source(compiled.executable) + \
        '\nextern "C" __global__ void broken(float* x) { x[0] = undefined_value; }\n'
    with pytest.raises(go.LoweringError) as raised:
        cuda.compile_cuda_source(broken, "sm_90")
    message = str(raised.value)
    assert message.startswith("nvcc failed to build the CUDA kernels for sm_90: tvm_kernels.cu(")
    assert 'error: identifier "undefined_value" is undefined' in message


@needs_nvcc
def test_a_failed_nvcc_says_why_on_the_command_line(monkeypatch, tmp_path, capsys):
    from graphopt import cli
    monkeypatch.setattr(cuda, "_binaries", {})     # nothing cached: nvcc runs
    monkeypatch.setattr(cuda, "nvcc_arch_flags", lambda arch: ["-arch=sm_1"])
    monkeypatch.chdir(tmp_path)
    code = cli.main(["-q", "compile", "lenet5", "--target", "cuda", "-o", "lenet5.so"])
    error = capsys.readouterr().err.strip()
    assert code == cli.EXIT_FAILED and "\n" not in error
    assert "nvcc failed to build the CUDA kernels for sm_90: nvcc fatal : Unsupported gpu " \
           "architecture 'sm_1'" in error, error
    assert not (tmp_path / "lenet5.so").exists()


# ---- thread blocks that fill the GPU ----------------------------------------------------------
def matmul_func(m: int, k: int, n: int, dtype: str = "float32"):
    from tvm import te
    a = te.placeholder((m, k), dtype, name="a")
    b = te.placeholder((k, n), dtype, name="b")
    r = te.reduce_axis((0, k), name="r")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r].astype("float32") *
                                               b[r, j].astype("float32"), axis=r), name="c")
    return te.create_prim_func([a, b, c])


@pytest.mark.parametrize("m, k, n, dtype, fills", [
    (49, 4608, 512, "float32", True),      # ResNet-18's last 3x3 convs at batch 1: 7x7 plane
    (196, 2304, 256, "float32", True),     # its third stage, 14x14
    (12544, 147, 64, "float32", False),    # a 112x112 plane: dlight's tile launches 392 blocks
    # tensor cores (every extent over 64): dlight's tiles; 40 s of dlight's tensorization
    pytest.param(128, 128, 128, "float16", False, marks=pytest.mark.slow)])
def test_small_gemms_get_smaller_thread_tiles(m, k, n, dtype, fills):
    from tvm.s_tir import dlight as dl
    func, target = matmul_func(m, k, n, dtype), cuda.cuda_target("sm_90")
    with target:
        ours = cuda.grid_filling_matmul().apply(func, target, False)
        dlights = dl.gpu.Matmul().apply(func, target, False)
    assert ours is not None and dlights is not None
    if fills:
        assert cuda.launched_blocks(dlights) < cuda.FILL_BLOCKS
        assert cuda.launched_blocks(ours) >= 4 * cuda.launched_blocks(dlights)
    else:
        assert cuda.launched_blocks(ours) == cuda.launched_blocks(dlights)


def test_filled_grids_write_back_only_what_each_thread_summed():
    """dlight's Matmul at 1 x 2 outputs per thread writes its accumulators back as float2 pairs
    of a float[4] of which it summed elements 0 and 2 (NaNs on an H200); the tiles graphopt
    takes never reinterpret the accumulator array as vectors. Convs on a 28x28 plane (2 x 2
    outputs per thread: a float2[2] accumulator), 14x14, 13x13 and 7x7 (1 x 1: a float[1])."""
    with dsl.Builder("small_planes", seed=1) as b:
        x = b.input("input", (1, 64, 28, 28))
        y = dsl.relu(dsl.conv2d(x, 512, kernel=1))                                   # 28x28
        y = dsl.relu(dsl.conv2d(dsl.max_pool2d(y, 2), 128, kernel=3, padding=1))     # 14x14
        y = dsl.conv2d(y, 96, kernel=2, padding=0)                                   # 13x13
        y = dsl.conv2d(dsl.max_pool2d(y, 2, stride=2, padding=1), 64, kernel=1)      # 7x7
        graph = b.output(y)
    model = go.compile(graph, target="cuda", weights="params")
    source = cuda.cuda_source(model.executable)
    accumulators = set(re.findall(r"(float2?) \w+_local_ptr\[(\d+)\]", source))
    assert accumulators == {("float2", "2"), ("float", "1")}, accumulators
    assert not re.search(r"\(float[248]\*\)\(\w+_local_ptr", source)


@pytest.mark.parametrize("epilogue", [dsl.relu, dsl.sigmoid])
def test_a_max_pool_with_an_epilogue_gets_a_schedule_tvm_can_lower(epilogue):
    """Max pools reduce with a NaN-aware maximum, which TVM's cross-thread reduction does not
    recognize: dlight's GeneralReduction bound the window to threads and the build failed. The
    reduction rules now decline it; softmax's sums and maxima keep them."""
    with dsl.Builder("pool_epilogue", seed=1) as b:
        x = b.input("input", (2, 16, 18, 15))
        pooled = epilogue(dsl.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True))
        graph = b.output(dsl.softmax(dsl.flatten(pooled)))
    rules = go.compile(graph, target="cuda").schedule_report.rules
    pool = [k for k in rules if "max_pool2d" in k]
    softmax = [k for k in rules if "softmax" in k]
    assert pool and all(rules[k] == "Fallback" for k in pool), rules
    assert softmax and all(rules[k] in ("Reduction", "GeneralReduction") for k in softmax), rules


def test_an_int8_convolution_of_single_products_builds():
    """A 1x1 int8 conv over one input channel, with its requantize epilogue and a relu."""
    import numpy as np
    with dsl.Builder("single_products", seed=0) as b:
        x = b.input("input", (4, 1, 8, 12))
        graph = b.output(dsl.relu(dsl.conv2d(x, 24, kernel=1, stride=2)))
    feed = {"input": np.random.default_rng(0).standard_normal((4, 1, 8, 12)).astype(np.float32)}
    quantized = go.quantize(graph, go.calibrate(graph, [feed])).graph
    rules = go.compile(quantized, target="cuda").schedule_report.rules
    assert any("conv2d" in k or "multiply" in k for k in rules), rules


def test_an_int8_squeeze_excite_whose_scale_is_fused_into_its_conv_builds():
    """TVM fuses the excite conv, its hard-sigmoid and the scale of the whole map into one
    kernel; dlight's Matmul cannot inline that broadcasting consumer and asserted, which failed
    the build. The next rule schedules the kernel, and the report names the conv on it."""
    import numpy as np
    with dsl.Builder("squeeze_excite", seed=0) as b:
        x = b.input("input", (4, 13, 7, 7))
        squeezed = dsl.relu(dsl.conv2d(dsl.global_avg_pool2d(x), 3, kernel=1))
        graph = b.output(x * dsl.hard_sigmoid(dsl.conv2d(squeezed, 13, kernel=1)))
    feed = {"input": np.random.default_rng(0).standard_normal((4, 13, 7, 7)).astype(np.float32)}
    quantized = go.quantize(graph, go.calibrate(graph, [feed])).graph
    report = go.compile(quantized, target="cuda").schedule_report
    fused = [k for k in report.rules if "conv2d" in k and "multiply" in k]
    assert fused and report.naive_heavy_kernels == fused, report.rules


def test_fallback_inlining_stops_at_the_cpu_rules_limits():
    """Clips and relus alternating, six: dlight inlined them into one block of selects nested
    nine deep, which took TVM's simplifiers 39 s. The bounded Fallback leaves the move past
    INLINE_MAX_SELECT_DEPTH undone (`within_inline_limits`): the fused kernel launches as
    two, built in under a second."""
    with dsl.Builder("clips", seed=0) as b:
        y = b.input("input", (1, 8, 17, 31))
        for k in range(6):
            y = dsl.clip(y, -1.0 + 0.1 * k, 2.0 - 0.1 * k) if k % 2 == 0 else dsl.relu(y)
        graph = b.output(y)
    model = go.compile(graph, target="cuda")
    [kernel] = model.kernels
    launched = re.findall(rf"__global__ void __launch_bounds__\(\d+\) ({kernel}\w*)\(",
                          cuda.cuda_source(model.executable))
    assert sorted(set(launched)) == [f"{kernel}_kernel", f"{kernel}_kernel_1"], launched
