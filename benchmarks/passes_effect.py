"""Effect of graphopt's default pass pipeline (`go.optimize`) on compiled CPU models: graph
nodes, TVM kernels, compile time and latency of each model compiled as written and as
optimized, timed side by side (runs alternate between the two) in one process, plus the
optimized model's error against the float64 interpreter of the original.

    .venv/bin/python benchmarks/passes_effect.py       # resnet18, resnet50, vgg16, googlenet
    .venv/bin/python benchmarks/passes_effect.py --models resnet18 --repeat 5
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import graphopt as go
from graphopt.passes import probe_inputs

MODELS = ("resnet18", "resnet50", "vgg16", "googlenet")


def side_by_side_ms(runs: dict, repeat: int) -> dict[str, float]:
    """Median milliseconds of each callable, their runs interleaved so that load changes on a
    shared machine hit both alike."""
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def measure(model: str, batch: int, repeat: int) -> tuple[str, ...]:
    graph = go.zoo.MODELS[model](batch=batch, seed=0)
    start = time.perf_counter()
    optimized = go.optimize(graph).graph
    optimize_s = time.perf_counter() - start
    compiled = {}
    compile_s = {}
    for name, g in (("original", graph), ("optimized", optimized)):
        start = time.perf_counter()
        compiled[name] = go.compile(g)
        compile_s[name] = time.perf_counter() - start
    feeds = probe_inputs(graph)
    ms = side_by_side_ms({name: (lambda m=m: m.run(feeds)) for name, m in compiled.items()},
                         repeat)
    report = go.compare(graph, compiled["optimized"], feeds)
    worst = max(o.max_rel for o in report.outputs)
    return (model, f"{len(graph.nodes)} -> {len(optimized.nodes)}",
            f"{compiled['original'].kernel_count()} -> {compiled['optimized'].kernel_count()}",
            f"{optimize_s:.1f}", f"{compile_s['original']:.0f} / {compile_s['optimized']:.0f}",
            f"{ms['original']:.1f}", f"{ms['optimized']:.1f}",
            f"{ms['original'] / ms['optimized']:.2f}",
            f"{worst:.1e} {'ok' if report.ok else 'MISMATCH'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=sorted(go.zoo.MODELS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per model and variant")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, batch "
          f"{args.batch}, {args.repeat} alternating runs each, median")
    go.compile(go.zoo.lenet5())      # load TVM before the first timed compile
    rows = [("model", "nodes", "kernels", "optimize s", "compile s (orig / opt)",
             "orig ms", "opt ms", "speedup", "opt vs float64 ref")]
    for model in args.models:
        rows.append(measure(model, args.batch, args.repeat))
        print("  ".join(rows[-1]), flush=True)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if r is rows[0]:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


if __name__ == "__main__":
    main()
