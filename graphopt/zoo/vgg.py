"""VGG-11 and VGG-16 (Simonyan & Zisserman 2014, configurations A and D) with torchvision's
module names: `features.<i>` and `classifier.<i>`. With 1000 classes and 224x224 input they have
torchvision's parameter counts (132,863,336 and 138,357,544). torchvision's adaptive 7x7 average
pool is the identity at 224x224 and is left out; other sizes (multiples of 32) feed
512 * (image_size / 32)^2 features to the classifier."""
from __future__ import annotations

from typing import Sequence

from ..errors import ShapeError
from ..frontends import dsl
from ..ir import Graph
from .blocks import dropout_mlp_classifier

POOL = "M"
CONFIGS = {
    "vgg11": (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    "vgg16": (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL,
              512, 512, 512, POOL),
}


def _vgg(name: str, config: Sequence, batch: int, seed: int, num_classes: int,
         image_size: int) -> Graph:
    if image_size % 32:
        raise ShapeError(f"{name}: expected image_size a multiple of 32, found {image_size}")
    with dsl.Builder(name, seed) as b:
        x = b.input("input", (batch, 3, image_size, image_size))
        with b.scope("features"):
            index = 0
            for item in config:
                if item == POOL:
                    x = dsl.max_pool2d(x, 2, name=str(index))
                    index += 1
                else:
                    x = dsl.conv2d(x, item, 3, padding=1, name=str(index))
                    x = dsl.relu(x, name=str(index + 1))
                    index += 2
        return b.output(dropout_mlp_classifier(x, num_classes))


def vgg11(batch: int = 1, seed: int = 0, num_classes: int = 1000, image_size: int = 224) -> Graph:
    return _vgg("vgg11", CONFIGS["vgg11"], batch, seed, num_classes, image_size)


def vgg16(batch: int = 1, seed: int = 0, num_classes: int = 1000, image_size: int = 224) -> Graph:
    return _vgg("vgg16", CONFIGS["vgg16"], batch, seed, num_classes, image_size)
