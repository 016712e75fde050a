"""Every zoo model at batch 1: graphopt's CPU compile against ONNX Runtime running the same
weights (graphopt's ONNX export), at 1 thread and at each runtime's default thread count,
measured side by side in one process (issue 14, part 4).

    .venv/bin/python benchmarks/model_zoo.py                      # the whole zoo
    .venv/bin/python benchmarks/model_zoo.py --quick              # a few models, fewer calls
    .venv/bin/python benchmarks/model_zoo.py --models mobilenet_v2 squeezenet1_1 --threads 1
    .venv/bin/python benchmarks/model_zoo.py --layers mobilenet_v2 --threads 1   # per conv layer

Prints one row per model and thread setting (median ms of graphopt and ORT, their ratio as
the median over rounds of the ratio within a round, the largest output difference), then the
geometric mean of the ratios over the models run and the models above the issue's 1.3x bound.
"default" threads: graphopt compiled with no thread setting (every core the process may use)
and ORT with intra_op_num_threads=0 (its own choice).
--layers times each convolution of a model alone (as graphopt optimized it, exported to ONNX
for ORT), slowest first, with the algorithm and schedule each got: where the time goes.
--precision bfloat16 (or float16, or int8; `--half` is the same option) times each model's
low-precision graph (`go.quantize(graph, "bfloat16")`; for int8, `go.quantize` calibrated on
the timed input) beside its float32 graph and ORT float32, and names the models that run
slower in low precision than in float32:

    .venv/bin/python benchmarks/model_zoo.py --precision bfloat16 --threads 1"""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import as_avx2  # noqa: E402
from cpu_latency import in_blocks, machine, ort_runner, tvm_runner  # noqa: E402

QUICK = ["mobilenet_v2", "squeezenet1_1", "shufflenet_v2_x1_0", "efficientnet_b0"]
# The issue's bound: no model above this many times ONNX Runtime's latency.
BOUND = 1.3


def with_threads(compiled, threads: int):
    """The same compiled model run on `threads` threads (the thread count is a run-time
    setting: the kernels do not depend on it), sparing a second compile."""
    other = copy.copy(compiled)
    other.threads = threads
    return other


def bench_model(name: str, thread_settings, repeat: int, rounds: int) -> list[dict]:
    import graphopt as go
    graph = go.zoo.MODELS[name](batch=1)
    rng = np.random.default_rng(0)
    feeds = {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in graph.inputs}
    start = time.perf_counter()
    compiled = go.compile(graph)   # no thread setting: what a user gets
    compiled.vm                    # build the VM before timing anything
    compile_s = time.perf_counter() - start
    rows = []
    for setting in thread_settings:
        threads = compiled.threads if setting == "default" else int(setting)
        runners = {"graphopt": tvm_runner(with_threads(compiled, threads)),
                   "onnxruntime": ort_runner(graph, 0 if setting == "default" else threads)}
        reference = runners["onnxruntime"](feeds)
        diff = float(np.abs(runners["graphopt"](feeds) - reference).max())
        times = in_blocks(runners, feeds, repeat, rounds)
        ours, ort = times["graphopt"][0], times["onnxruntime"][0]
        rows.append({"model": name, "threads": setting, "graphopt": ours, "onnxruntime": ort,
                     "ratio": times.ratio("graphopt", "onnxruntime"), "diff": diff,
                     "compile_s": compile_s})
    return rows


def bench_half(name: str, dtype: str, thread_settings, repeat: int, rounds: int) -> list[dict]:
    """graphopt's `dtype` graph of the model (bfloat16, float16 or int8) against its float32
    graph and ORT float32."""
    import graphopt as go
    graph = go.zoo.MODELS[name](batch=1)
    rng = np.random.default_rng(0)
    feeds = {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in graph.inputs}
    low = go.quantize(graph, go.calibrate(graph, [feeds]) if dtype == "int8" else dtype).graph
    builds = {"float32": go.compile(graph), dtype: go.compile(low)}
    rows = []
    for setting in thread_settings:
        threads = builds["float32"].threads if setting == "default" else int(setting)
        runners = {key: tvm_runner(with_threads(build, threads)) for key, build in builds.items()}
        runners["onnxruntime"] = ort_runner(graph, 0 if setting == "default" else threads)
        full, half = runners["float32"](feeds), runners[dtype](feeds)
        error = float(np.abs(half - full).max() / max(float(np.abs(full).max()), 1e-30))
        times = in_blocks(runners, feeds, repeat, rounds)
        rows.append({"model": name, "threads": setting, "float32": times["float32"][0],
                     "half": times[dtype][0], "onnxruntime": times["onnxruntime"][0],
                     "ratio": times.ratio(dtype, "float32"),
                     "ratio_ort": times.ratio(dtype, "onnxruntime"), "error": error})
    return rows


def half_table(names, dtype: str, threads, repeat: int, rounds: int) -> None:
    print(f"| model | threads | {dtype} ms | float32 ms | ORT float32 ms | {dtype} / float32 "
          f"| {dtype} / ORT | max abs diff / max abs |")
    print("|---|---|---|---|---|---|---|---|")
    ratios: dict[str, list[float]] = {t: [] for t in threads}
    slower = []
    for name in names:
        for row in bench_half(name, dtype, threads, repeat, rounds):
            ratio = row["ratio"]
            ratios[row["threads"]].append(ratio)
            if ratio > 1:
                slower.append(f"{name} ({row['threads']}: {ratio:.2f})")
            print(f"| {name} | {row['threads']} | {row['half']:.2f} | {row['float32']:.2f} | "
                  f"{row['onnxruntime']:.2f} | {ratio:.2f} | "
                  f"{row['ratio_ort']:.2f} | {row['error']:.1e} |", flush=True)
    for t in threads:
        print(f"# geometric mean {dtype} / float32, {t} thread(s), {len(ratios[t])} models: "
              f"{geometric_mean(ratios[t]):.2f}")
    print(f"# slower in {dtype} than in float32: {', '.join(slower) or 'none'}")


def conv_layers(name: str, threads: int, repeat: int, top: int) -> None:
    """Each convolution of `name` (after graphopt's passes) compiled and timed alone against ORT
    running the same one-node graph; the slowest `top` by graphopt's time."""
    import graphopt as go
    from graphopt.ir import Graph
    graph = go.zoo.MODELS[name](batch=1)
    optimized = go.compile(graph, threads=threads).graph
    rows = []
    seen = {}
    for node in optimized.topological_order():
        if node.op_name not in ("conv2d", "fused_conv2d"):
            continue
        conv = getattr(node.op, "conv", node.op)
        key = (str(node.op), tuple(v.shape for v in node.inputs))
        if key in seen:
            seen[key]["count"] += 1
            continue
        layer = Graph(f"{name}.{node.name}")
        x = layer.add_input("input", node.inputs[0].type)
        args = [x] + [layer.add_constant(v.name, v.data) if v.is_constant
                      else layer.add_input(f"in{i}", v.type)
                      for i, v in enumerate(node.inputs[1:], 1)]
        out = layer.add_node(_without_decisions(node.op), args, name="conv").output
        layer.set_outputs([out])
        rng = np.random.default_rng(0)
        feeds = {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in layer.inputs}
        compiled = go.compile(layer, threads=threads)
        runners = {"graphopt": tvm_runner(compiled), "onnxruntime": ort_runner(layer, threads)}
        times = in_blocks(runners, feeds, repeat)
        chosen = compiled.graph.nodes[-1].op
        row = {"layer": node.name, "op": str(node.op), "x": node.inputs[0].shape,
               "graphopt": times["graphopt"][0], "onnxruntime": times["onnxruntime"][0],
               "ratio": times.ratio("graphopt", "onnxruntime"),
               "choice": getattr(chosen, "target_choice", lambda: "-")(),
               "schedule": ",".join(sorted(set(compiled.schedules.values()))), "count": 1,
               "groups": conv.groups}
        seen[key] = row
        rows.append(row)
    total = sum(r["graphopt"] * r["count"] for r in rows)
    total_ort = sum(r["onnxruntime"] * r["count"] for r in rows)
    print(f"# {name}: {len(rows)} distinct convs, sum of layer medians graphopt {total:.2f} ms, "
          f"ORT {total_ort:.2f} ms ({threads} threads)")
    print("| layer | x | op | times | graphopt ms | ORT ms | ratio | share | choice | schedules |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["graphopt"] * r["count"])[:top]:
        print(f"| {r['layer']} | {'x'.join(map(str, r['x']))} | {r['op']} | {r['count']} "
              f"| {r['graphopt']:.3f} | {r['onnxruntime']:.3f} "
              f"| {r['ratio']:.2f} "
              f"| {r['graphopt'] * r['count'] / total:.0%} | {r['choice']} | {r['schedule']} |",
              flush=True)


def _without_decisions(op):
    """The op as the user wrote it: target decisions (algorithm, weight block) are re-made by the
    layer's own compile."""
    import dataclasses
    if op.name == "conv2d":
        return op.plain
    return dataclasses.replace(op, conv=op.conv.plain)


def geometric_mean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None, help="zoo names (default: all)")
    parser.add_argument("--skip-models", nargs="*", default=[], help="zoo names to leave out")
    parser.add_argument("--quick", action="store_true",
                        help=f"only {', '.join(QUICK)}, fewer calls")
    parser.add_argument("--threads", nargs="*", default=["1", "default"],
                        help="thread settings: numbers and/or 'default'")
    parser.add_argument("--repeat", type=int, default=30, help="timed calls per runner")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", nargs="*", default=[],
                        help="time each conv of these models alone instead")
    parser.add_argument("--top", type=int, default=15, help="--layers: rows shown per model")
    parser.add_argument("--precision", "--half", choices=["bfloat16", "float16", "int8"],
                        default=None, dest="half",
                        help="time each model's low-precision graph against its float32 graph "
                             "and ORT float32 instead")
    parser.add_argument("--as-avx2", action="store_true",
                        help="hide AVX-512 from CPUID: ORT's and graphopt's AVX2 code on this "
                             "host (benchmarks/as_avx2.py)")
    args = parser.parse_args(argv)
    if args.as_avx2:
        as_avx2.reexec()
    import graphopt as go
    unknown = sorted((set(args.models or []) | set(args.skip_models) | set(args.layers))
                     - set(go.zoo.MODELS))
    if unknown:
        parser.error(f"not zoo models: {', '.join(unknown)} (the zoo: {', '.join(go.zoo.MODELS)})")
    if any(t != "default" and not t.isdigit() for t in args.threads):
        parser.error(f"--threads takes numbers and 'default', found {' '.join(args.threads)}")
    threads = [t if t == "default" else str(int(t)) for t in args.threads]
    print(f"# {machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if args.layers:
        for name in args.layers:
            conv_layers(name, 1 if threads[0] == "default" else int(threads[0]), args.repeat,
                        args.top)
        return 0
    names = QUICK if args.quick and args.models is None else (args.models or list(go.zoo.MODELS))
    names = [n for n in names if n not in set(args.skip_models)]
    repeat = min(args.repeat, 10) if args.quick else args.repeat
    if args.half:
        half_table(names, args.half, threads, repeat, args.rounds)
        return 0
    print("| model | threads | graphopt ms | ORT ms | graphopt / ORT | max abs diff | compile s |")
    print("|---|---|---|---|---|---|---|")
    ratios: dict[str, list[float]] = {t: [] for t in threads}
    above = []
    for name in names:
        for row in bench_model(name, threads, repeat, args.rounds):
            ratios[row["threads"]].append(row["ratio"])
            flag = " **" if row["ratio"] > BOUND else ""
            if row["ratio"] > BOUND:
                above.append(f"{name} ({row['threads']}: {row['ratio']:.2f})")
            print(f"| {name} | {row['threads']} | {row['graphopt']:.2f} | {row['onnxruntime']:.2f} "
                  f"| {row['ratio']:.2f}{flag} | {row['diff']:.1e} | {row['compile_s']:.0f} |",
                  flush=True)
    for t in threads:
        print(f"# geometric mean graphopt / ORT, {t} thread(s), {len(ratios[t])} models: "
              f"{geometric_mean(ratios[t]):.2f}")
    print(f"# above {BOUND}x ORT: {', '.join(above) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
