"""Your own network in the DSL: a small CIFAR-sized CNN with a residual block and a two-branch
block, run in the reference interpreter, compiled for this CPU and compared with the reference.

    python examples/custom_model.py [--batch 4] [--classes 10]
"""
import argparse

import numpy as np

import graphopt as go
from graphopt import dsl


def conv_bn_relu(x, channels, kernel=3, stride=1, name="conv"):
    """conv (no bias) -> batch norm -> relu, named like a torch module: '<name>.conv', ..."""
    with x.builder.scope(name):
        x = dsl.conv2d(x, channels, kernel, stride=stride, padding=kernel // 2, bias=False,
                       name="conv")
        return dsl.relu(dsl.batch_norm(x, name="bn"), name="relu")


def residual(x, name):
    with x.builder.scope(name):
        y = conv_bn_relu(x, x.shape[1], name="a")
        y = dsl.batch_norm(dsl.conv2d(y, x.shape[1], 3, padding=1, bias=False, name="b"),
                           name="b_bn")
        return dsl.relu(y + x, name="relu")


def two_branch(x, channels, name):
    """Half the channels from a 1x1 conv, half from a strided 3x3 after a 1x1 reduction."""
    with x.builder.scope(name):
        pooled = dsl.max_pool2d(x, 2, name="pool")
        left = conv_bn_relu(pooled, channels // 2, kernel=1, name="left")
        right = conv_bn_relu(conv_bn_relu(x, channels // 4, kernel=1, name="reduce"),
                             channels // 2, stride=2, name="right")
        return dsl.concat([left, right], axis=1, name="concat")


def small_net(batch: int, num_classes: int, seed: int = 0) -> go.Graph:
    with dsl.Builder("small_net", seed=seed) as b:
        x = b.input("input", (batch, 3, 32, 32))
        x = conv_bn_relu(x, 32, name="stem")
        x = residual(x, "block1")
        x = two_branch(x, 64, "down1")           # 16x16
        x = residual(x, "block2")
        x = two_branch(x, 128, "down2")          # 8x8
        x = dsl.flatten(dsl.global_avg_pool2d(x, name="pool"), name="flatten")
        x = dsl.dropout(x, 0.1, name="dropout")
        return b.output(dsl.softmax(dsl.linear(x, num_classes, name="fc"), name="probs"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()

    graph = small_net(args.batch, args.classes)
    print(graph.summary(), "\n")

    images = np.random.default_rng(0).standard_normal(graph.inputs[0].shape, dtype=np.float32)
    inputs = {"input": images}
    probs = go.interpret(graph, inputs)["output"]
    print("interpreter: predicted classes", probs.argmax(axis=1).tolist(),
          f"(each row sums to {probs.sum(axis=1).mean():.6f})\n")

    model = go.compile(graph, target="cpu")
    print(f"compiled: {model!r} in {model.compile_seconds:.1f} s")
    compiled_probs = model.run(inputs)["output"]
    print("compiled:    predicted classes", compiled_probs.argmax(axis=1).tolist(), "\n")

    report = go.compare(graph, model, inputs)
    print(report)
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
