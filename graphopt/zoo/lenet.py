"""LeNet-5 (LeCun et al. 1998): two 5x5 convolutions with subsampling, then three fully
connected layers. Input 1x32x32; 61,706 parameters with 10 classes (C3 fully connected, as
modern re-implementations build it)."""
from __future__ import annotations

from ..errors import GraphoptError
from ..frontends import dsl
from ..ir import Graph

_ACTIVATIONS = {"tanh": dsl.tanh, "relu": dsl.relu}


def lenet5(batch: int = 1, seed: int = 0, num_classes: int = 10, image_size: int = 32,
           activation: str = "tanh") -> Graph:
    """LeNet-5 with average-pool subsampling. A 28x28 input (MNIST unpadded) gives a 16x4x4
    feature map, so fc1 then has 256 inputs instead of 400."""
    if activation not in _ACTIVATIONS:
        raise GraphoptError(f"lenet5: expected activation in {sorted(_ACTIVATIONS)}, "
                            f"found {activation!r}")
    act = _ACTIVATIONS[activation]
    with dsl.Builder("lenet5", seed) as b:
        x = b.input("input", (batch, 1, image_size, image_size))
        x = dsl.avg_pool2d(act(dsl.conv2d(x, 6, 5, name="conv1"), name="act1"), 2, name="pool1")
        x = dsl.avg_pool2d(act(dsl.conv2d(x, 16, 5, name="conv2"), name="act2"), 2, name="pool2")
        x = dsl.flatten(x, name="flatten")
        x = act(dsl.linear(x, 120, name="fc1"), name="act3")
        x = act(dsl.linear(x, 84, name="fc2"), name="act4")
        return b.output(dsl.linear(x, num_classes, name="fc3"))
