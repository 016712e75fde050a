"""What graphopt's graph passes do to compiled CPU models: each zoo model compiled without them
(`passes=()`: every node lowered as written; the CPU target passes still choose each conv's
algorithm and weight layout) and as `go.compile` builds it by default (the default pipeline
first), side by side in one process: graph nodes, TVM kernels, compile time and latency (runs
alternate between the builds), plus each build's error against the float64 interpreter.

    .venv/bin/python benchmarks/passes_effect.py       # resnet18, resnet50, vgg16, googlenet
    .venv/bin/python benchmarks/passes_effect.py --models resnet18 --repeat 5 --compiles 5
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import graphopt as go
from graphopt.signature import probe_inputs
from graphopt.table import format_table

MODELS = ("resnet18", "resnet50", "vgg16", "googlenet")
BUILDS = {"no graph passes": {"passes": ()}, "default pipeline": {}}


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


def measure(model: str, batch: int, repeat: int, compiles: int) -> list[tuple[str, ...]]:
    """One row per build of `model`: the builds compiled `compiles` times in turn (median
    seconds; the compile ratio is the median of each round's ratio to the first build, as a
    change of the host's speed between rounds hits both builds of a round alike)."""
    graph = go.zoo.MODELS[model](batch=batch, seed=0)
    compiled, seconds = {}, {name: [] for name in BUILDS}
    for _ in range(compiles):
        for name, options in BUILDS.items():
            start = time.perf_counter()
            compiled[name] = go.compile(graph, **options)
            seconds[name].append(time.perf_counter() - start)
    first = seconds[next(iter(BUILDS))]
    feeds = probe_inputs(graph)
    ms = side_by_side_ms({name: (lambda m=m: m.run(feeds)) for name, m in compiled.items()},
                         repeat)
    written = ms["no graph passes"]
    rows = []
    for name, m in compiled.items():
        report = go.compare(graph, m, feeds)
        error = f"{max(o.max_rel for o in report.outputs):.1e}{'' if report.ok else ' MISMATCH'}"
        ratio = statistics.median(s / f for s, f in zip(seconds[name], first))
        rows.append((model, name, str(len(m.graph.nodes)), str(m.kernel_count()),
                     f"{statistics.median(seconds[name]):.1f}", f"{ratio:.2f}", f"{ms[name]:.1f}",
                     f"{written / ms[name]:.2f}", error))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=sorted(go.zoo.MODELS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per model and build")
    parser.add_argument("--compiles", type=int, default=3,
                        help="timed compiles per model and build, in turn")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs "
          f"(default threads), batch {args.batch}, {args.compiles} alternating compiles and "
          f"{args.repeat} alternating runs each, median")
    go.compile(go.zoo.lenet5())      # load TVM before the first timed compile
    header = ("model", "build", "nodes", "kernels", "compile s", "compile ratio", "ms",
              "speedup", "error vs float64")
    rows = []
    for model in args.models:
        for row in measure(model, args.batch, args.repeat, args.compiles):
            rows.append(row)
            print("  ".join(row), flush=True)
    print()
    print(format_table(rows, header, rule=True))


if __name__ == "__main__":
    main()
