"""A small fully convolutional segmentation network in the style of FCN-16s (Long, Shelhamer &
Darrell 2015), scaled down to run fast: three VGG-like stages (two 3x3 conv + ReLU, 2x2 max pool)
bring the image to 1/8 resolution; a 1x1 `score_fr` layer scores every class there; learned
upsampling (transposed convolutions initialised to bilinear interpolation, as in FCN) goes back
to full resolution, fusing a 1x1 score of the stride-4 features on the way:

    score_fr (1/8) -> upscore2 (x2) + score_pool2 (1/4) -> upscore4 (x4) -> [N, classes, H, W]

Padding is chosen so the upsampled maps line up exactly, which FCN's `crop` layers did."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..frontends import dsl
from ..frontends.dsl import Tensor
from ..ir import Graph


def bilinear_kernel(size: int) -> np.ndarray:
    """The [size, size] bilinear interpolation filter FCN uses to initialise its upsampling."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    taps = 1 - np.abs(np.arange(size) - center) / factor
    return np.outer(taps, taps)


def bilinear_upsampling(x: Tensor, factor: int, name: str) -> Tensor:
    """A transposed convolution that upsamples every channel by `factor`, initialised to bilinear
    interpolation (channel c reads only channel c), so output size = factor * input size."""
    channels, kernel = x.shape[1], 2 * factor
    weight = np.zeros((channels, channels, kernel, kernel))
    weight[np.arange(channels), np.arange(channels)] = bilinear_kernel(kernel)
    return dsl.conv_transpose2d(x, channels, kernel, stride=factor, padding=factor // 2,
                                bias=False, weight=weight, name=name)


def fcn(batch: int = 1, seed: int = 0, num_classes: int = 21, image_size: int = 64,
        width: int = 16) -> Graph:
    if image_size % 8:
        raise ShapeError(f"fcn: expected image_size a multiple of 8, found {image_size}")
    with dsl.Builder("fcn", seed) as b:
        x = b.input("input", (batch, 3, image_size, image_size))
        pooled = []
        for stage in range(1, 4):
            channels = width * 2 ** (stage - 1)
            for i in (1, 2):
                x = dsl.conv2d(x, channels, 3, padding=1, name=f"conv{stage}_{i}")
                x = dsl.relu(x, name=f"relu{stage}_{i}")
            x = dsl.max_pool2d(x, 2, name=f"pool{stage}")
            pooled.append(x)
        score = dsl.conv2d(pooled[2], num_classes, 1, name="score_fr")
        upscore = bilinear_upsampling(score, 2, "upscore2")
        fused = dsl.add(upscore, dsl.conv2d(pooled[1], num_classes, 1, name="score_pool2"),
                        name="fuse_pool2")
        return b.output(bilinear_upsampling(fused, 4, "upscore4"))
