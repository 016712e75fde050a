"""SqueezeNet 1.1 (Iandola et al. 2016; the 1.1 layout of the SqueezeNet repository) as
torchvision builds it: Fire modules (1x1 squeeze, then 1x1 and 3x3 expand concatenated), max
pools with ceil mode, no batch norm, and a convolutional classifier (dropout, 1x1 convolution to
the classes, ReLU, global average pool). Module names follow torchvision (`features.3.squeeze`,
`features.12.expand3x3`, `classifier.1`); with 1000 classes: 1,235,496 parameters,
torchvision's count."""
from __future__ import annotations

from ..frontends import dsl
from ..frontends.dsl import Tensor
from ..ir import Graph

# features index: (squeeze, expand 1x1, expand 3x3) for Fire modules, None for a max pool.
FEATURES = {2: None, 3: (16, 64, 64), 4: (16, 64, 64), 5: None, 6: (32, 128, 128),
            7: (32, 128, 128), 8: None, 9: (48, 192, 192), 10: (48, 192, 192),
            11: (64, 256, 256), 12: (64, 256, 256)}


def fire(x: Tensor, squeeze: int, expand1x1: int, expand3x3: int) -> Tensor:
    x = dsl.relu(dsl.conv2d(x, squeeze, 1, name="squeeze"), name="squeeze_activation")
    left = dsl.relu(dsl.conv2d(x, expand1x1, 1, name="expand1x1"), name="expand1x1_activation")
    right = dsl.relu(dsl.conv2d(x, expand3x3, 3, padding=1, name="expand3x3"),
                     name="expand3x3_activation")
    return dsl.concat([left, right], axis=1, name="concat")


def squeezenet1_1(batch: int = 1, seed: int = 0, num_classes: int = 1000,
                  image_size: int = 224) -> Graph:
    with dsl.Builder("squeezenet1_1", seed) as b:
        x = b.input("input", (batch, 3, image_size, image_size))
        x = dsl.relu(dsl.conv2d(x, 64, 3, stride=2, name="features.0"), name="features.1")
        for index, widths in FEATURES.items():
            if widths is None:
                x = dsl.max_pool2d(x, 3, stride=2, ceil_mode=True, name=f"features.{index}")
                continue
            with b.scope(f"features.{index}"):
                x = fire(x, *widths)
        with b.scope("classifier"):
            x = dsl.dropout(x, 0.5, name="0")
            x = dsl.relu(dsl.conv2d(x, num_classes, 1, name="1"), name="2")
            x = dsl.global_avg_pool2d(x, name="3")
        return b.output(dsl.flatten(x, name="flatten"))
