"""The classic deep CNN for 28x28 MNIST digits ("Deep Learning from Scratch", ch. 8): six 3x3
convolutions 16-16-32-32-64-64 with ReLU, a 2x2 max pool after each pair, then
linear(50) - ReLU - dropout - linear(10). As in the original, conv4 pads by 2 (14 -> 16), so the
last feature map is 64x4x4; 123,552 parameters with 10 classes."""
from __future__ import annotations

from ..frontends import dsl
from ..ir import Graph

# (out_channels, padding) per convolution; a pool follows every second one.
_CONVS = ((16, 1), (16, 1), (32, 1), (32, 2), (64, 1), (64, 1))


def deep_convnet(batch: int = 1, seed: int = 0, num_classes: int = 10,
                 image_size: int = 28) -> Graph:
    with dsl.Builder("deep_convnet", seed) as b:
        x = b.input("input", (batch, 1, image_size, image_size))
        for i, (channels, padding) in enumerate(_CONVS, start=1):
            x = dsl.relu(dsl.conv2d(x, channels, 3, padding=padding, name=f"conv{i}"),
                         name=f"relu{i}")
            if i % 2 == 0:
                x = dsl.max_pool2d(x, 2, name=f"pool{i // 2}")
        x = dsl.flatten(x, name="flatten")
        x = dsl.dropout(dsl.relu(dsl.linear(x, 50, name="fc1"), name="relu7"), 0.5,
                        name="dropout")
        return b.output(dsl.linear(x, num_classes, name="fc2"))
