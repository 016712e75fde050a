"""A schedule constant at two values, inside whole models: each zoo model compiled twice (the
module attribute set to A, then to B), both builds and ONNX Runtime timed interleaved in one
process at 1 and 2 threads, so that the host's drifts hit all three alike.

    .venv/bin/python benchmarks/schedule_ab.py graphopt.targets.tvm.schedules.conv2d \
        TASK_PADDING_REPEATS 0 4 deep_convnet squeezenet1_1 --repeat 45

Prints one row per model and thread count: median ms of A, B and ORT, B / A (below 1: B is
faster) and each against ORT (medians over the rounds of each round's ratio), and the largest
difference between A's and B's outputs. A and B are
Python expressions (`"32 * 1024"`). The constant must be read when a model is compiled (a
schedule rule's module constant), not copied at import."""
from __future__ import annotations

import argparse
import copy
import importlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import as_avx2  # noqa: E402
from cpu_latency import in_blocks, machine, ort_runner, tvm_runner  # noqa: E402


def compare(module, attribute: str, values: dict, name: str, repeat: int, rounds: int):
    import graphopt as go
    graph = go.zoo.MODELS[name](batch=1)
    rng = np.random.default_rng(0)
    feeds = {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in graph.inputs}
    kept = getattr(module, attribute)
    compiled = {}
    try:
        for key, value in values.items():
            setattr(module, attribute, value)
            compiled[key] = go.compile(graph)
    finally:
        setattr(module, attribute, kept)
    outputs = {key: m.run(feeds) for key, m in compiled.items()}
    diff = max(float(np.abs(outputs["A"][o] - outputs["B"][o]).max()) for o in outputs["A"])
    for threads in (1, 2):
        runners = {}
        for key, model in compiled.items():
            model = copy.copy(model)        # the thread count is a run-time setting
            model.threads = threads
            runners[key] = tvm_runner(model)
        runners["ORT"] = ort_runner(graph, threads)
        blocks = in_blocks(runners, feeds, repeat, rounds)
        a, b, ort = (blocks[k][0] for k in ("A", "B", "ORT"))
        # ratios round by round (`Blocks.ratio`): the host's speed may change between rounds
        print(f"| {name} | {threads} | {a:.3f} | {b:.3f} | {ort:.3f} | "
              f"{blocks.ratio('B', 'A'):.3f} | {blocks.ratio('A', 'ORT'):.2f} | "
              f"{blocks.ratio('B', 'ORT'):.2f} | {diff:.1e} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="e.g. graphopt.targets.tvm.schedules.conv2d")
    parser.add_argument("attribute")
    parser.add_argument("a", help="value A (a Python expression)")
    parser.add_argument("b", help="value B")
    parser.add_argument("models", nargs="+", help="zoo names")
    parser.add_argument("--repeat", type=int, default=30, help="timed calls per runner")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--as-avx2", action="store_true",
                        help="hide AVX-512 from CPUID: the AVX2 builds against ORT's AVX2 "
                             "kernels (benchmarks/as_avx2.py)")
    args = parser.parse_args(argv)
    if args.as_avx2:
        as_avx2.reexec()
    import graphopt as go
    unknown = [m for m in args.models if m not in go.zoo.MODELS]
    if unknown:
        parser.error(f"not zoo models: {', '.join(unknown)}")
    module = importlib.import_module(args.module)
    if not hasattr(module, args.attribute):
        parser.error(f"{args.module} has no attribute {args.attribute}")
    values = {"A": eval(args.a, {}), "B": eval(args.b, {})}
    print(f"# {machine()}; {args.module}.{args.attribute}: A = {args.a}, B = {args.b}")
    print("| model | threads | A ms | B ms | ORT ms | B / A | A / ORT | B / ORT | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        compare(module, args.attribute, values, name, args.repeat, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
