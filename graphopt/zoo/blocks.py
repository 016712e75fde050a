"""Layer groups shared by several zoo networks."""
from __future__ import annotations

import functools
import inspect
from collections import OrderedDict
from typing import Callable

import numpy as np

from ..frontends import dsl
from ..frontends.dsl import Tensor
from ..ir import Graph


def dropout_mlp_classifier(x: Tensor, num_classes: int, hidden: int = 4096) -> Tensor:
    """AlexNet's and VGG's head, named like torchvision's `classifier` Sequential:
    flatten, then (linear, ReLU, dropout 0.5) twice, then the class scores as `classifier.6`."""
    x = dsl.flatten(x, name="flatten")
    with x.builder.scope("classifier"):
        x = dsl.dropout(dsl.relu(dsl.linear(x, hidden, name="0"), name="1"), 0.5, name="2")
        x = dsl.dropout(dsl.relu(dsl.linear(x, hidden, name="3"), name="4"), 0.5, name="5")
        return dsl.linear(x, num_classes, name="6")


def conv_norm_activation(x: Tensor, name: str, out_channels: int, kernel: int, stride: int = 1,
                         groups: int = 1, activation=None, epsilon: float = 1e-5,
                         dilation: int = 1) -> Tensor:
    """torchvision's Conv2dNormActivation: a convolution without bias ('<name>.0', padding
    (kernel - 1) // 2 * dilation), batch norm ('<name>.1'), then `activation` ('<name>.2'), a
    DSL function or None."""
    with x.builder.scope(name):
        x = dsl.conv2d(x, out_channels, kernel, stride=stride,
                       padding=(kernel - 1) // 2 * dilation, dilation=dilation, groups=groups,
                       bias=False, name="0")
        x = dsl.batch_norm(x, epsilon=epsilon, name="1")
        return x if activation is None else activation(x, name="2")


def squeeze_excitation(x: Tensor, squeeze_channels: int, activation, gate) -> Tensor:
    """torchvision.ops.SqueezeExcitation: x * gate(fc2(activation(fc1(avgpool(x))))), fc1 and
    fc2 1x1 convolutions with bias; the [N, C, 1, 1] scale broadcasts over H and W."""
    scale = dsl.global_avg_pool2d(x, name="avgpool")
    scale = activation(dsl.conv2d(scale, squeeze_channels, 1, name="fc1"), name="activation")
    scale = gate(dsl.conv2d(scale, x.shape[1], 1, name="fc2"), name="scale_activation")
    return dsl.mul(scale, x, name="scale")


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's _make_divisible: the nearest multiple of `divisor`, at least `divisor`
    and not below 90% of `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def calibrated(reference_size: int):
    """Decorator for a zoo builder `f(batch, seed, num_classes, image_size, **options)`: the
    graph's batch norm statistics are those of the same network at batch 1 and
    `reference_size`, calibrated by `calibrate_batch_norm`, so that no weight depends on the
    batch or the image size and small test images run the full-size model's weights (statistics
    calibrated on a tiny map fit the probe's few values and drift on other inputs: x20 in the 1x1
    maps of MobileNetV3-Small at 32x32). The statistics of the last few (seed, options) are
    kept; `num_classes` only sizes the classifier, after every batch norm."""
    def wrap(build: Callable[..., Graph]) -> Callable[..., Graph]:
        signature = inspect.signature(build)
        kept: OrderedDict[tuple, dict[str, np.ndarray]] = OrderedDict()

        @functools.wraps(build)
        def builder(*args, **kwargs) -> Graph:
            arguments = signature.bind(*args, **kwargs)
            arguments.apply_defaults()
            graph = build(**arguments.arguments)
            options = arguments.arguments.copy()
            batch, image_size = options.pop("batch"), options.pop("image_size")
            key = tuple((k, v) for k, v in options.items() if k != "num_classes")
            if key not in kept:
                reference = graph if (batch, image_size) == (1, reference_size) else \
                    build(**options, batch=1, image_size=reference_size)
                kept[key] = _statistics(calibrate_batch_norm(reference, options["seed"]))
                if len(kept) > 8:
                    kept.popitem(last=False)
            for name, data in kept[key].items():
                graph.constants[name].data = data.copy()
            return graph
        return builder
    return wrap


def _statistics(graph: Graph) -> dict[str, np.ndarray]:
    return {v.name: v.data for node in graph.nodes if node.op_name == "batch_norm"
            for v in node.inputs[3:5]}


def calibrate_batch_norm(graph: Graph, seed: int) -> Graph:
    """Rescale every batch norm's drawn statistics to the scale of its input on a seeded
    standard-normal image, in order from the input, as LSUV init (Mishkin & Matas 2016) scales
    layers to unit variance: running_mean = m + drawn_mean * s and running_var = drawn_var * s**2,
    m and s the mean and standard deviation of the batch norm's whole input (all channels and
    positions of one image, so that a 1x1 map or a dead channel is no problem). Each batch norm
    then normalises an input of mean 0 and variance 1 by the DSL's non-trivial statistics, at any
    depth; with the draws alone, deep random nets of hard-swish, SiLU or squeeze-excite grow or
    vanish geometrically and ReLU6 saturates. Zoo builders use it through `calibrated`."""
    (image,) = graph.inputs
    env = {id(c): c.data for c in graph.constants.values()}
    env[id(image)] = np.random.default_rng([seed, 0xB4]).standard_normal(image.shape) \
        .astype(image.dtype)
    for node in graph.topological_order():
        if node.op_name == "batch_norm":
            x = env[id(node.inputs[0])].astype(np.float64)
            mean, var = x.mean(), x.var()
            for stat, value in zip(node.inputs[3:5], (mean + node.inputs[3].data * np.sqrt(var),
                                                      node.inputs[4].data * var)):
                stat.data = env[id(stat)] = value.astype(stat.dtype)
        outputs = node.op.run(*(env[id(v)] for v in node.inputs))
        env.update(zip(map(id, node.outputs), outputs))
    return graph
