"""CUDA compile of every zoo model on a machine without a GPU: compile time, kernels, the dlight
rule each kernel got, convolutions left on the naive Fallback schedule, and nvcc's fatbin.

    python benchmarks/cuda_compile.py [--batch 1] [--arch sm_90] [models...]   # markdown table
"""
import argparse
import time

import graphopt as go
from graphopt.targets.tvm import cuda


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(go.zoo.MODELS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--arch", default="sm_90")
    args = parser.parse_args()
    print(f"| model (batch {args.batch}) | compile s | kernels | dlight rules | conv/matmul on "
          f"Fallback | convs not GEMM | nvcc s | fatbin KiB | archs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        graph = go.zoo.MODELS[name](batch=args.batch)
        start = time.perf_counter()
        model = go.compile(graph, target=f"cuda:{args.arch}")
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        fatbin = cuda.compile_cuda_source(cuda.cuda_source(model.executable), args.arch)
        nvcc_s = time.perf_counter() - start
        report = model.schedule_report
        rules = ", ".join(f"{r} {n}" for r, n in report.counts().items())
        print(f"| {name} | {compile_s:.1f} | {model.kernel_count()} | {rules} | "
              f"{len(report.naive_heavy_kernels)} | {len(report.convolutions_off_matmul)} | "
              f"{nvcc_s:.1f} | {len(fatbin) / 1024:.0f} | "
              f"{', '.join(cuda.fatbin_archs(fatbin))} |", flush=True)


if __name__ == "__main__":
    main()
