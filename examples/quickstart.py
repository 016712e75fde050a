"""The main job on a built-in model: define (DSL zoo), optimize, compile for this CPU, compare.

    python examples/quickstart.py [--model resnet18] [--batch 1]
"""
import argparse
import time

import numpy as np

import graphopt as go
from graphopt.timing import median_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()

    g = go.zoo.MODELS[args.model](batch=args.batch, seed=0)
    print(g.summary(), "\n")

    shape = g.inputs[0].shape
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    inputs = {g.inputs[0].name: x}

    start = time.perf_counter()
    result = go.optimize(g, check=True)       # the default pass pipeline, each pass checked
    print(f"optimized and checked in {time.perf_counter() - start:.1f} s: {len(g.nodes)} -> "
          f"{len(result.graph.nodes)} nodes\n")

    start = time.perf_counter()
    m = go.compile(g, target="cpu")           # the same passes, the CPU's own, then TVM
    print(f"compiled for {m.tvm_target} in {time.perf_counter() - start:.1f} s "
          f"({m.kernel_count()} kernels, {m.threads} threads); what the passes did:")
    print(m.report, "\n")

    # Compiled first: numpy's BLAS threads keep spinning for a while after the interpreter's
    # matrix products and would take cores from TVM's thread pool.
    compiled_ms = median_ms(lambda: m.run(inputs), 20, warmup=3)
    interp_ms = median_ms(lambda: go.interpret(g, inputs), 3, warmup=0)
    print(f"latency (median): interpreter {interp_ms:.1f} ms, compiled {compiled_ms:.1f} ms "
          f"-> {interp_ms / compiled_ms:.1f}x faster compiled\n")

    report = go.compare(g, m, inputs)         # original graph (float64) vs compiled
    print(report)
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
