"""What graphopt's graph passes do to compiled CPU models: each zoo model compiled without them
(`passes=()`: every node lowered as written; the CPU target passes still choose each conv's
algorithm and weight layout) and as `go.compile` builds it by default (the default pipeline
first), side by side in one process: graph nodes, TVM kernels, compile time (wall and CPU
seconds, the builds compiled in turn) and latency (runs alternate between the builds), plus each
build's error against the float64 interpreter.

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
# The most rounds of compiles `--compile-seconds` adds.
MAX_ROUNDS = 25


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


def round_ratio(values: list[float], reference: list[float]) -> float:
    """The median over rounds of each round's value / the reference's value in that round."""
    return statistics.median(v / r for v, r in zip(values, reference))


def measure(model: str, batch: int, repeat: int, compiles: int,
            compile_seconds: float = 0.0) -> list[tuple[str, ...]]:
    """One row per build of `model`: the builds compiled in turn, `compiles` rounds and more
    until the rounds took `compile_seconds` (at most MAX_ROUNDS), the order of the builds
    reversed every other round (median seconds; the compile ratio is the median of each
    round's ratio to the first build, as a change of the host's speed between rounds hits both
    builds of a round alike; the CPU ratio the same of the process's CPU seconds, every build
    thread's). A model that compiles in 0.3 s varies by 10-20 % from one compile to the next on
    a shared host: three rounds could not tell 5 % apart."""
    graph = go.zoo.MODELS[model](batch=batch, seed=0)
    compiled, seconds = {}, {name: [] for name in BUILDS}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in BUILDS}
    builds = list(BUILDS.items())
    started = time.perf_counter()
    rounds = 0
    while rounds < compiles or (time.perf_counter() - started < compile_seconds
                                and rounds < MAX_ROUNDS):
        for name, options in builds if rounds % 2 == 0 else builds[::-1]:
            start, cpu_start = time.perf_counter(), time.process_time()
            compiled[name] = go.compile(graph, **options)
            seconds[name].append(time.perf_counter() - start)
            cpu_seconds[name].append(time.process_time() - cpu_start)
        rounds += 1
    reference = builds[0][0]
    feeds = probe_inputs(graph)
    ms = side_by_side_ms({name: (lambda m=m: m.run(feeds)) for name, m in compiled.items()},
                         repeat)
    written = ms["no graph passes"]
    rows = []
    for name, m in compiled.items():
        report = go.compare(graph, m, feeds)
        error = f"{max(o.max_rel for o in report.outputs):.1e}{'' if report.ok else ' MISMATCH'}"
        ratio = round_ratio(seconds[name], seconds[reference])
        cpu_ratio = round_ratio(cpu_seconds[name], cpu_seconds[reference])
        rows.append((model, name, str(len(m.graph.nodes)), str(m.kernel_count()),
                     f"{statistics.median(seconds[name]):.2f}", str(rounds), f"{ratio:.2f}",
                     f"{cpu_ratio:.2f}", f"{ms[name]:.1f}", f"{written / ms[name]:.2f}", error))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=sorted(go.zoo.MODELS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per model and build")
    parser.add_argument("--compiles", type=int, default=3,
                        help="timed compiles per model and build, in turn (at least)")
    parser.add_argument("--compile-seconds", type=float, default=10.0,
                        help="more rounds of compiles until they took this long (at most "
                             f"{MAX_ROUNDS})")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs "
          f"(default threads), batch {args.batch}, at least {args.compiles} alternating compiles "
          f"(or {args.compile_seconds:g} s of them) and "
          f"{args.repeat} alternating runs each, median")
    go.compile(go.zoo.lenet5())      # load TVM before the first timed compile
    header = ("model", "build", "nodes", "kernels", "compile s", "rounds", "compile ratio",
              "CPU ratio", "ms", "speedup", "error vs float64")
    rows = []
    for model in args.models:
        for row in measure(model, args.batch, args.repeat, args.compiles, args.compile_seconds):
            rows.append(row)
            print("  ".join(row), flush=True)
    print()
    print(format_table(rows, header, rule=True))


if __name__ == "__main__":
    main()
