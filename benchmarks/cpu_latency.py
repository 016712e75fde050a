"""CPU latency of graphopt's compiled models (its own TVM schedules, and with kernels="onednn"
its convolutions through oneDNN) against the default TVM compile, ONNX Runtime and torch eager,
all with the same thread count, measured side by side in one process. The "graphopt default"
row is a model compiled with no thread setting at all: what a user gets.

    .venv/bin/python benchmarks/cpu_latency.py                 # the issue's model table
    .venv/bin/python benchmarks/cpu_latency.py --models resnet18 --batches 1 --repeat 30
    .venv/bin/python benchmarks/cpu_latency.py --conv 64,64,56,3,1   # one conv: C,OC,HW,K,stride

Prints a table of median/min milliseconds and ratios to ONNX Runtime (by the median: the median
over rounds of the ratio within a round, `Blocks.ratio`; by the minimum: the fastest calls'),
achieved GFLOP/s and the machine's measured fp32 GEMM peak (numpy/OpenBLAS, one and all
threads)."""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

import as_avx2

DEFAULT_MODELS = [("resnet18", 1), ("resnet18", 8), ("vgg11", 1), ("lenet5", 1), ("lenet5", 64)]


# ---------------------------------------------------------------- timing
def measure(fn, repeat: int, warmup: int = 3, budget_s: float = 20.0) -> tuple[float, float]:
    """(median, min) milliseconds of `fn()` over `repeat` runs (fewer if over `budget_s`)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat and (time.perf_counter() - start < budget_s or len(times) < 3):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), min(times)


def gemm_peak_gflops(threads: int, n: int = 1024) -> float:
    """Best fp32 GEMM rate of numpy's BLAS at `threads` threads (a subprocess, since OpenBLAS reads
    its thread count at load time)."""
    import subprocess
    code = ("import numpy as np, time\n"
            f"a = np.random.default_rng(0).standard_normal(({n}, {n})).astype(np.float32)\n"
            "best = 1e9\n"
            "for _ in range(12):\n"
            "    t = time.perf_counter(); a @ a; best = min(best, time.perf_counter() - t)\n"
            f"print(2 * {n} ** 3 / best / 1e9)")
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return float(out.stdout.strip() or "nan")


# ---------------------------------------------------------------- runners: feeds -> first output
def ort_runner(graph, threads: int):
    import onnxruntime as ort
    from graphopt.frontends.onnx_export import to_onnx
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(to_onnx(graph).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return lambda feeds: sess.run(None, feeds)[0]


def tvm_runner(compiled):
    """What a user's call costs: `CompiledModel.run` (input check, inputs passed without a copy
    where aligned, outputs copied to numpy), as ORT's `run` takes numpy in and out."""
    first = compiled.signature.output_names[0]
    return lambda feeds: compiled.run(feeds)[first]


def default_tvm_compile(graph, threads: int):
    """What plain `tvm.compile` gives the same Relax module: legalization and lowering only."""
    import tvm
    from graphopt.signature import Signature
    from graphopt.targets.tvm.compile import CompiledModel
    from graphopt.targets.tvm.cpu import host_target
    from graphopt.targets.tvm.lower import to_relax
    from graphopt.targets.tvm.options import CompileOptions
    target = host_target()
    return CompiledModel(tvm.compile(to_relax(graph), target=target), Signature.of(graph), "cpu",
                         target, "cpu", graph.name, options=CompileOptions(threads=threads))


def torch_runner(graph, threads: int):
    """torch eager running the graph node by node with torch.nn.functional (same weights);
    None when torch is missing or the graph has an op outside the table."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(threads)

    def pad_args(padding):
        top, left, bottom, right = padding
        if top == bottom and left == right:
            return (top, left), None
        return (0, 0), (left, right, top, bottom)

    def conv(op, x, w, b=None):
        sym, asym = pad_args(op.padding)
        if asym:
            x = F.pad(x, asym)
        return F.conv2d(x, w, b, op.stride, sym, op.dilation, op.groups)

    def pool(fn, op, x, **extra):
        sym, asym = pad_args(op.padding)
        if asym:
            x = F.pad(x, asym, value=-float("inf") if fn is F.max_pool2d else 0.0)
        return fn(x, op.kernel, op.stride or op.kernel, sym, ceil_mode=op.ceil_mode, **extra)

    table = {
        "conv2d": conv,
        "batch_norm": lambda op, x, g, b, m, v: F.batch_norm(x, m, v, g, b, False, 0.0, op.epsilon),
        "relu": lambda op, x: F.relu(x), "tanh": lambda op, x: torch.tanh(x),
        "sigmoid": lambda op, x: torch.sigmoid(x), "dropout": lambda op, x: x,
        "max_pool2d": lambda op, x: pool(F.max_pool2d, op, x),
        "avg_pool2d": lambda op, x: pool(F.avg_pool2d, op, x,
                                         count_include_pad=op.count_include_pad),
        "global_avg_pool2d": lambda op, x: x.mean((2, 3), keepdim=True),
        "add": lambda op, a, b: a + b, "mul": lambda op, a, b: a * b,
        "flatten": lambda op, x: torch.flatten(x, op.axis),
        "linear": lambda op, x, w, b=None: F.linear(x, w, b),
        "softmax": lambda op, x: torch.softmax(x, op.axis),
    }
    order = graph.topological_order()
    if any(n.op_name not in table for n in order):
        return None
    consts = {id(c): torch.from_numpy(np.ascontiguousarray(c.data)) for c in graph.constants.values()}

    def run(feeds):
        env = dict(consts)
        env.update({id(v): torch.from_numpy(feeds[v.name]) for v in graph.inputs})
        with torch.inference_mode():
            for node in order:
                env[id(node.outputs[0])] = table[node.op_name](node.op, *(env[id(v)] for v in node.inputs))
        return env[id(graph.outputs[0])].numpy()
    return run


def tuned_compile(graph, threads: int):
    """graphopt's compile with the MetaSchedule records `graphopt tune` kept in the user's cache,
    or None without any."""
    from graphopt.targets.tvm import tuning
    if not tuning.has_records():
        return None
    return tuning.compile_tuned(graph, threads=threads)


def onednn_available() -> bool:
    from graphopt.targets.tvm import onednn
    return onednn.available()


# ---------------------------------------------------------------- the table
# Seconds each block waits first: runtimes leave their worker threads spinning after a call
# (measured on the 2-vCPU Xeon, CPU time the process used while its caller slept: ONNX Runtime's
# ~45 ms, TVM's ~90 ms, a whole vCPU each), and a block run meanwhile shares the CPUs with them,
# as no process running only one of the runtimes does (DCGAN's generator, 2 threads: 2.0-3.0 ms
# right after ORT's block).
SETTLE_S = 0.2
# Seconds of untimed calls that start each block, after the sleep: the first calls after it run
# slower while the vCPUs wake and the caches refill (2 threads, DQN, microseconds per call after
# 0.2 s asleep: 1745, 459, 347, 350, 310, ... then ~180; ORT 1017, 368, 228, ... ~170), so a
# block of a few timed calls of a sub-millisecond model measured mostly that.
WARM_S = 0.05
# Seconds of timed calls a block lasts at least: a block of repeat/rounds calls of a model of
# a few hundred microseconds is over in a few milliseconds, and its median moved with whatever
# else ran in them (DeepConvNet's ratio to ORT by the zoo's 10-call blocks, three runs in one
# hour: 1.10-1.40 at one thread; with 300-call blocks 1.19-1.27).
BLOCK_S = 0.1


class Blocks(dict):
    """{runner: (median, min) ms over all its timed calls}, and each round's median per runner
    (`rounds`) for ratios taken round by round (`ratio`)."""

    def __init__(self, times: dict, rounds: dict):
        super().__init__({n: (statistics.median(t), min(t)) for n, t in times.items()})
        self.rounds = rounds

    def ratio(self, name: str, reference: str) -> float:
        """The median over rounds of `name`'s median / `reference`'s median in that round.
        Runners alternate within a round, seconds apart; a shared host's speed can change
        between rounds (the 2-vCPU Xeon model 207 ran the same code at 32 and at 21 us a call
        for minutes each), so a ratio of medians pooled over rounds can compare one runner's
        slow rounds with another's fast ones."""
        return statistics.median(a / b for a, b in zip(self.rounds[name],
                                                       self.rounds[reference]))


def in_blocks(runners: dict, feeds, repeat: int, rounds: int = 3, warm_s: float = WARM_S,
              block_s: float = BLOCK_S) -> Blocks:
    """(median, min) ms per runner, with each round's medians for `Blocks.ratio`. Each round
    runs every runner for a block of at least repeat/rounds timed calls and `block_s` seconds,
    each block after the previous runtime's spinning worker threads went to sleep (`SETTLE_S`)
    and after untimed calls for `warm_s` seconds (at least two); rounds so that slow drifts in
    machine load hit every runner."""
    times = {name: [] for name in runners}
    by_round = {name: [] for name in runners}
    per_block = max(2, repeat // rounds)
    for _ in range(rounds):
        for name, fn in runners.items():
            time.sleep(SETTLE_S)
            start, calls = time.perf_counter(), 0
            while calls < 2 or time.perf_counter() - start < warm_s:
                fn(feeds)
                calls += 1
            start, block = time.perf_counter(), []
            while len(block) < per_block or time.perf_counter() - start < block_s:
                t = time.perf_counter()
                fn(feeds)
                block.append((time.perf_counter() - t) * 1e3)
            times[name] += block
            by_round[name].append(statistics.median(block))
    return Blocks(times, by_round)


def bench_graph(graph, threads: int, repeat: int, slow_runs: int, skip: set[str]) -> list[dict]:
    import graphopt as go
    from graphopt.analysis import count_macs
    rng = np.random.default_rng(0)
    feeds = {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in graph.inputs}
    fast, slow, notes = {}, {}, {}
    start = time.perf_counter()
    fast["graphopt scheduled"] = tvm_runner(go.compile(graph, threads=threads))
    notes["graphopt scheduled"] = f"compile {time.perf_counter() - start:.1f} s"
    default = go.compile(graph)
    fast["graphopt default"] = tvm_runner(default)
    notes["graphopt default"] = f"no thread setting: ran on {default.threads}"
    if "onednn" not in skip and onednn_available():
        fast["graphopt (onednn)"] = tvm_runner(go.compile(graph, kernels="onednn",
                                                          threads=threads))
    tuned = None if "tuned" in skip else tuned_compile(graph, threads)
    if tuned is not None:
        fast["graphopt tuned"] = tvm_runner(tuned)
    fast["onnxruntime"] = ort_runner(graph, threads)
    torch_fn = None if "torch" in skip else torch_runner(graph, threads)
    if torch_fn is not None:
        fast["torch eager"] = torch_fn
    if "default" not in skip:
        slow["tvm default"] = tvm_runner(default_tvm_compile(graph, threads))
    if "interpreter" not in skip:
        slow["interpreter"] = lambda f: go.interpret(graph, f)[graph.outputs[0].name]
    reference = fast["onnxruntime"](feeds)
    for name, fn in {**fast, **slow}.items():
        err = float(np.abs(fn(feeds) - reference).max())
        notes[name] = (notes.get(name, "") + f" max|diff| vs ORT {err:.1e}").strip()
    timed = in_blocks(fast, feeds, repeat)
    results = dict(timed)
    for name, fn in slow.items():
        results[name] = measure(lambda: fn(feeds), slow_runs, warmup=1, budget_s=120)
    flops = 2 * count_macs(graph)
    ort_med, ort_min = results["onnxruntime"]
    return [{"runner": name, "median": med, "min": best,
             "ratio_median": timed.ratio(name, "onnxruntime") if name in timed else med / ort_med,
             "ratio_min": best / ort_min, "gflops": flops / (best * 1e-3) / 1e9,
             "note": notes.get(name, "")} for name, (med, best) in results.items()]


def conv_graph(spec: str):
    """One conv + bias + ReLU from 'C,OC,HW,K,stride[,batch]'."""
    from graphopt.frontends import dsl
    c, oc, hw, k, stride, *rest = (int(v) for v in spec.split(","))
    with dsl.Builder(f"conv_{spec.replace(',', '_')}", 0) as b:
        x = b.input("input", (rest[0] if rest else 1, c, hw, hw))
        return b.output(dsl.relu(dsl.conv2d(x, oc, k, stride=stride, padding=k // 2)))


def machine() -> str:
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
                 platform.processor())
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    hidden = as_avx2.hidden_flags()
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "amx_int8")
            if f in flags and f not in hidden]
    return (f"{model}, {os.cpu_count()} logical CPUs, {'/'.join(simd)}"
            f"{' (CPUID hides AVX-512: --as-avx2)' if hidden else ''}, "
            f"load average {os.getloadavg()[0]:.1f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None,
                        help="model:batch pairs (default: the issue's table)")
    parser.add_argument("--conv", nargs="*", default=[], help="single convs 'C,OC,HW,K,stride[,N]'")
    parser.add_argument("--threads", type=int, default=None, help="threads for every runtime")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--slow-runs", type=int, default=3,
                        help="runs of the interpreter and the default TVM compile")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["default", "interpreter", "torch", "tuned", "onednn"])
    parser.add_argument("--as-avx2", action="store_true",
                        help="hide AVX-512 from CPUID: ORT's, torch's and graphopt's AVX2 code "
                             "on this host (benchmarks/as_avx2.py)")
    args = parser.parse_args(argv)
    if args.as_avx2:
        as_avx2.reexec()
    from graphopt.runtime import available_cores
    threads = args.threads or available_cores()
    # oneDNN's OpenMP workers would spin after each call and starve TVM's pool (see
    # graphopt/targets/tvm/onednn): this process asks libgomp, before it loads, to wait passively.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import graphopt as go

    pairs = ([tuple(p.split(":")) for p in args.models] if args.models is not None
             else [(m, str(b)) for m, b in DEFAULT_MODELS])
    graphs = [go.zoo.MODELS[m](batch=int(b)) for m, b in pairs] + [conv_graph(c) for c in args.conv]
    print(f"# {machine()}; {threads} threads for every runtime")
    print(f"# numpy/OpenBLAS fp32 GEMM peak: {gemm_peak_gflops(1):.0f} GFLOP/s (1 thread), "
          f"{gemm_peak_gflops(threads):.0f} GFLOP/s ({threads} threads)")
    print("| model | batch | runner | median ms | min ms | / ORT (median) | / ORT (min) | GFLOP/s | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for graph in graphs:
        batch = graph.inputs[0].shape[0]
        for row in bench_graph(graph, threads, args.repeat, args.slow_runs, set(args.skip)):
            print(f"| {graph.name} | {batch} | {row['runner']} | {row['median']:.2f} | {row['min']:.2f} "
                  f"| {row['ratio_median']:.2f} | {row['ratio_min']:.2f} | {row['gflops']:.1f} "
                  f"| {row['note']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
