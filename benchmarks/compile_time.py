"""How long `go.compile` and `export` take for zoo models, with the kernels scheduled in one
thread and built in one LLVM module (`build_threads=1`, as TVM builds them) and on every core
(the default: `schedules/dispatch.py`, `parallel_build.py`), the two compiles alternated in one
process.

    .venv/bin/python benchmarks/compile_time.py                     # a few models
    .venv/bin/python benchmarks/compile_time.py --models densenet121 resnet18 --rounds 2

Prints, per model, the kernel count, the median seconds of each compile and export over the
rounds, and the ratios parts / one module (below 1.0 the parts are faster). Outputs of the two
builds are compared: they must be the same."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_latency import machine  # noqa: E402

MODELS = ["lenet5", "resnet18", "mobilenet_v2", "inception_v3", "densenet121"]


def timed(call):
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def bench_model(name: str, rounds: int, folder: str) -> dict:
    import graphopt as go
    graph = go.zoo.MODELS[name](batch=1)
    feeds = {v.name: np.random.default_rng(0).standard_normal(v.shape).astype(np.float32)
             for v in graph.inputs}
    times = {"one": ([], []), "parts": ([], [])}
    outputs = {}
    for _ in range(rounds):
        for label, build_threads in (("one", 1), ("parts", None)):
            model, seconds = timed(lambda: go.compile(graph, "cpu", build_threads=build_threads))
            path = os.path.join(folder, f"{name}_{label}.so")
            _, export_seconds = timed(lambda: model.export(path))
            times[label][0].append(seconds)
            times[label][1].append(export_seconds)
            outputs[label] = model.run(feeds)
            kernels = model.kernel_count()
    same = all(np.array_equal(outputs["one"][k], outputs["parts"][k]) for k in outputs["one"])
    median = {label: [float(np.median(t)) for t in pair] for label, pair in times.items()}
    return {"model": name, "kernels": kernels, "same": same, **{
        f"{label} {what}": median[label][i] for label in median
        for i, what in enumerate(("compile", "export"))}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    from graphopt.runtime import available_cores
    print(f"# {machine()}; {available_cores()} cores for the build; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| model | kernels | compile s, one module | compile s, parts | parts / one | "
          "export s, one module | export s, parts | parts / one | same outputs |")
    print("|---|---|---|---|---|---|---|---|---|")
    failed = False
    import graphopt as go
    go.compile(go.zoo.lenet5(), "cpu")   # the process's one-time costs, outside the timings
    with tempfile.TemporaryDirectory(prefix="graphopt-compile-time-") as folder:
        for name in args.models:
            r = bench_model(name, args.rounds, folder)
            failed |= not r["same"]
            print(f"| {name} | {r['kernels']} | {r['one compile']:.1f} | {r['parts compile']:.1f} "
                  f"| {r['parts compile'] / r['one compile']:.2f} | {r['one export']:.1f} | "
                  f"{r['parts export']:.1f} | {r['parts export'] / r['one export']:.2f} | "
                  f"{'yes' if r['same'] else 'NO'} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
