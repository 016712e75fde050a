"""What int8 does to ResNet-18 (random weights), layer by layer: the per-layer error of the
quantized graph against the float64 interpreter (go.compare(..., per_layer=True)), the layers
go.sensitivity names first (each quantized alone), and the layers an error budget keeps in float32
(go.quantize(..., budget=)). Everything runs in the reference interpreter.

    .venv/bin/python benchmarks/quantization_resnet18.py                   # 224x224, minutes
    .venv/bin/python benchmarks/quantization_resnet18.py --image-size 64 --method entropy
"""
from __future__ import annotations

import argparse
import datetime
import platform
import time

import numpy as np

import graphopt as go


def host() -> str:
    flags = set()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f in flags]
    return f"{model} ({', '.join(isa) or 'no AVX2'})"


def batches(graph: go.Graph, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal(graph.inputs[0].shape).astype(np.float32)}
            for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--method", default="percentile",
                        choices=("minmax", "percentile", "entropy", "mse"))
    parser.add_argument("--calibration", type=int, default=8, help="calibration samples")
    parser.add_argument("--eval", type=int, default=2, help="held-out samples")
    parser.add_argument("--per-tensor", action="store_true")
    parser.add_argument("--top", type=int, default=5, help="sensitive layers to name")
    args = parser.parse_args()

    graph = go.zoo.resnet18(image_size=args.image_size)
    print(f"{datetime.date.today()}, {host()}; resnet18 {args.image_size}x{args.image_size} "
          f"(random weights), int8 {args.method}, "
          f"{'per tensor' if args.per_tensor else 'per channel'}")
    start = time.perf_counter()
    calib = go.calibrate(graph, batches(graph, args.calibration, seed=0), args.method)
    print(f"calibration: {args.calibration} samples in {time.perf_counter() - start:.0f} s")
    held_out = batches(graph, args.eval, seed=1)
    quantized = go.quantize(graph, calib, per_channel=not args.per_tensor)

    report = go.compare(graph, quantized.graph, held_out[0], per_layer=True)
    print("\nper layer, the whole graph in int8 (first held-out sample):")
    print(report.layer_table())
    print(report)

    start = time.perf_counter()
    table = go.sensitivity(graph, calib, held_out, per_channel=not args.per_tensor)
    print(f"\n{table}\n({time.perf_counter() - start:.0f} s)")
    print(f"most sensitive first: {', '.join(table.names()[:args.top])}")

    budget = table.quantized.error / 2
    start = time.perf_counter()
    kept = go.quantize(graph, calib, per_channel=not args.per_tensor, budget=budget,
                       eval_inputs=held_out)
    print(f"\n{kept.report.splitlines()[-1]} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
