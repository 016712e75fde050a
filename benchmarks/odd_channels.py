"""Layers whose output channels do not fill the vector blocks, compiled by two versions of graphopt
side by side: single convs and linear layers with odd widths, DeepConvNet and its pruned copy.

    git archive <commit> graphopt | tar -x -C /tmp/before
    python benchmarks/odd_channels.py --before /tmp/before

Each case is compiled (1 thread, this host's CPU) by the graphopt found in --before and by this
checkout's, each in its own process, and exported; both libraries are then loaded into this
process and timed in alternating rounds, so that load changes on a shared machine hit both."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (what, spec) -- conv: 'C,OC,HW,K,stride[,groups]' as conv + bias + relu;
# linear: 'rows,in,out' as linear + relu; model: zoo name, ':pruned' = go.prune(model, 0.4)
CASES = {
    "conv 96->24 3x3 80x80 (PP-OCR)": ("conv", "96,24,80,3,1"),
    "conv 16->39 3x3 28x28": ("conv", "16,39,28,3,1"),
    "conv 20->39 3x3 8x8": ("conv", "20,39,8,3,1"),
    "conv 32->10 3x3 56x56": ("conv", "32,10,56,3,1"),
    "conv 3->20 3x3 s2 112x112": ("conv", "3,20,112,3,2"),
    "conv 64->77 1x1 28x28": ("conv", "64,77,28,1,1"),
    "conv 64->40 3x3 28x28": ("conv", "64,40,28,3,1"),
    "conv 16->20 3x3 56x56 groups 2": ("conv", "16,20,56,3,1,2"),
    "linear 16x1024->39": ("linear", "16,1024,39"),
    "linear 16x1024->97": ("linear", "16,1024,97"),
    "linear 16x1024->449": ("linear", "16,1024,449"),
    "linear 64x400->120": ("linear", "64,400,120"),
    "linear 1x512->1000": ("linear", "1,512,1000"),
    "deep_convnet": ("model", "deep_convnet"),
    "deep_convnet pruned 0.4": ("model", "deep_convnet:pruned"),
    "resnet18": ("model", "resnet18"),
}


def build_graph(what: str, spec: str):
    import graphopt as go
    from graphopt.frontends import dsl
    if what == "model":
        name, _, pruned = spec.partition(":")
        graph = go.zoo.MODELS[name]()
        return go.prune(graph, 0.4).graph if pruned else graph
    values = [int(v) for v in spec.split(",")]
    with dsl.Builder(f"{what}_{spec.replace(',', '_')}", 0) as b:
        if what == "conv":
            c, oc, hw, k, stride, *groups = values
            x = b.input("input", (1, c, hw, hw))
            return b.output(dsl.relu(dsl.conv2d(x, oc, k, stride=stride, padding=k // 2,
                                                groups=groups[0] if groups else 1)))
        rows, features, out = values
        return b.output(dsl.relu(dsl.linear(b.input("input", (rows, features)), out)))


def build(case: str, path: str) -> None:
    """Compile one case with the graphopt on sys.path and export it to `path`."""
    import graphopt as go
    graph = build_graph(*CASES[case])
    go.compile(graph, "cpu", threads=1).export(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="folder holding the older graphopt/")
    parser.add_argument("--cases", nargs="*", default=sorted(CASES, key=list(CASES).index))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=40, help="calls per case per round")
    parser.add_argument("--build", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build:
        build(args.build, args.out)
        return 0
    sides = {"before": os.path.abspath(args.before), "after": ROOT}
    work = tempfile.mkdtemp(prefix="odd_channels_")
    paths = {}
    for i, case in enumerate(args.cases):
        for side, source in sides.items():
            path = paths[case, side] = os.path.join(work, f"{i}_{side}.so")
            env = dict(os.environ, PYTHONPATH=source)
            subprocess.run([sys.executable, os.path.abspath(__file__), "--before", source,
                            "--build", case, "--out", path], check=True, env=env, cwd=work)
    from graphopt import runtime
    from cpu_latency import machine
    models = {key: runtime.load(path, threads=1) for key, path in paths.items()}
    rng = np.random.default_rng(0)
    feeds, times = {}, {key: [] for key in models}
    for case in args.cases:
        model = models[case, "before"]
        feeds[case] = {n: rng.standard_normal(s).astype(d) for n, s, d in model.inputs}
        ref, new = (models[case, side].run(feeds[case]) for side in sides)
        for name in ref:    # the same weights and inputs: the same outputs
            np.testing.assert_allclose(new[name], ref[name], rtol=1e-4, atol=1e-4 * float(
                np.abs(ref[name]).max()))
    for _ in range(args.rounds):
        for case in args.cases:
            for side in sides:
                times[case, side] += models[case, side].latencies(feeds[case], warmup=3,
                                                                   repeat=args.repeat)
    print(f"# {machine()}; 1 thread; median of {args.rounds} x {args.repeat} calls, alternating")
    print("| case | before ms | after ms | before / after |")
    print("|---|---|---|---|")
    for case in args.cases:
        before, after = (np.median(times[case, side]) * 1e3 for side in sides)
        print(f"| {case} | {before:.3f} | {after:.3f} | {before / after:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
