"""Throughput of one loaded model called from 1, 2 and 4 Python threads at once (each calling
thread gets its own VM; each call's kernels run on `--threads` pool threads), and what copying
an input costs when its layout is not one the kernels can read in place (unaligned, read-only,
strided: an aligned copy is made before the call).

    .venv/bin/python benchmarks/threaded_throughput.py                    # resnet18, lenet5
    .venv/bin/python benchmarks/threaded_throughput.py --models resnet18 --seconds 5
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time

import numpy as np

import graphopt as go
from graphopt.runtime import available_cores
from graphopt.signature import probe_inputs
from graphopt.table import format_table


def calls_per_second(model, feeds, callers: int, seconds: float) -> float:
    """Calls completed per second by `callers` threads each calling `model` in a loop."""
    model.run(feeds)
    done = [0] * callers
    stop = time.perf_counter() + seconds
    barrier = threading.Barrier(callers)

    def work(i: int) -> None:
        model.run(feeds)   # the thread's own VM and thread pool, created outside the timing
        barrier.wait()
        while time.perf_counter() < stop:
            model.run(feeds)
            done[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(callers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - start)


def unaligned(array: np.ndarray) -> np.ndarray:
    raw = np.empty(array.nbytes + 64, np.uint8)
    start = (-raw.ctypes.data % 64) + 4
    view = raw[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    view[...] = array
    return view


def read_only(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array.flags.writeable = False
    return array


def input_copy_ms(model, feeds, repeat: int) -> dict[str, float]:
    """Median ms per call with inputs as given, unaligned and read-only, runs interleaved."""
    variants = {"aligned (zero-copy)": feeds,
                "unaligned (copied)": {k: unaligned(v) for k, v in feeds.items()},
                "read-only (copied)": {k: read_only(v) for k, v in feeds.items()}}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for feed in variants.values():
        model.run(feed)
    for _ in range(repeat):
        for name, feed in variants.items():
            start = time.perf_counter()
            model.run(feed)
            times[name].append(1e3 * (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,lenet5")
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--threads", type=int, default=1,
                        help="pool threads per call (default 1: callers fill the cores)")
    parser.add_argument("--repeat", type=int, default=50, help="calls per input-copy variant")
    args = parser.parse_args()
    rows, copy_rows = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            graph = go.zoo.MODELS[name](batch=1, seed=0)
            path = go.compile(graph, "cpu").export(os.path.join(folder, f"{name}.so"))
            model = go.load(path, threads=args.threads)
            feeds = probe_inputs(graph)
            rates = {n: calls_per_second(model, feeds, n, args.seconds) for n in (1, 2, 4)}
            rows.append((name, *(f"{rates[n]:.1f}" for n in (1, 2, 4)),
                         f"{rates[2] / rates[1]:.2f}", f"{rates[4] / rates[1]:.2f}"))
            ms = input_copy_ms(model, feeds, args.repeat)
            base = ms["aligned (zero-copy)"]
            copy_rows += [(name, k, f"{v:.3f}", f"{v / base:.2f}") for k, v in ms.items()]
    print(f"host: {platform.processor() or platform.machine()}, {available_cores()} cores "
          f"allowed, {args.threads} pool thread(s) per call")
    print(format_table(rows, ("model", "calls/s, 1 caller", "2 callers", "4 callers", "2 / 1",
                              "4 / 1"), right=range(1, 6), rule=True))
    print()
    print(format_table(copy_rows, ("model", "input", "ms per call", "vs zero-copy"),
                       right=(2, 3), rule=True))


if __name__ == "__main__":
    main()
