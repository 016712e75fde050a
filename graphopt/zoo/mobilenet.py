"""MobileNetV2 (Sandler et al. 2018) and MobileNetV3-Small/-Large (Howard et al. 2019) as
torchvision builds them: inverted residual blocks (1x1 expand, depthwise KxK, 1x1 linear
projection, a residual add where the shape allows), MobileNetV3's squeeze-excite (hard sigmoid
gate) and hard-swish. Module names follow torchvision (`features.3.conv.1.0`,
`features.4.block.2.fc1`, `classifier.3`, ...); with 1000 classes the parameter counts are
torchvision's: 3,504,872 (V2), 2,542,856 (V3-Small) and 5,483,032 (V3-Large).

Scale control: batch norm statistics are calibrated (`blocks.calibrated`); with the
DSL's draws alone the logits of V3-Large reach ~1e3 and V3-Small's hardly depend on the input."""
from __future__ import annotations

import functools

import numpy as np

from ..frontends import dsl
from ..frontends.dsl import Tensor
from ..ir import Graph
from .blocks import (calibrated, conv_norm_activation, make_divisible,
                     squeeze_excitation)

# MobileNetV2's stages: expansion t, output channels c, blocks n, first stride s.
V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))

# MobileNetV3's blocks: kernel, expanded channels, output channels, squeeze-excite, hard-swish
# (else ReLU), stride; then the width of the classifier's hidden layer.
V3_LARGE = ((3, 16, 16, False, False, 1), (3, 64, 24, False, False, 2),
            (3, 72, 24, False, False, 1), (5, 72, 40, True, False, 2),
            (5, 120, 40, True, False, 1), (5, 120, 40, True, False, 1),
            (3, 240, 80, False, True, 2), (3, 200, 80, False, True, 1),
            (3, 184, 80, False, True, 1), (3, 184, 80, False, True, 1),
            (3, 480, 112, True, True, 1), (3, 672, 112, True, True, 1),
            (5, 672, 160, True, True, 2), (5, 960, 160, True, True, 1),
            (5, 960, 160, True, True, 1))
V3_SMALL = ((3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2),
            (3, 88, 24, False, False, 1), (5, 96, 40, True, True, 2),
            (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
            (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1),
            (5, 288, 96, True, True, 2), (5, 576, 96, True, True, 1),
            (5, 576, 96, True, True, 1))
V3_EPSILON = 1e-3
# torch's Hardsigmoid, relu6(x + 3) / 6, its 1/6 at the float32 precision of ONNX attributes
# and written as the ONNX importer reads it back (0.16666667), so that the model round-trips.
hard_sigmoid = functools.partial(dsl.hard_sigmoid, alpha=float(str(np.float32(1 / 6))), beta=0.5)


def _residual(x: Tensor, y: Tensor, stride: int) -> Tensor:
    """y + x where the block keeps the shape (torchvision's use_res_connect)."""
    return dsl.add(y, x, name="add") if stride == 1 and x.shape[1] == y.shape[1] else y


def inverted_residual_v2(x: Tensor, out_channels: int, stride: int, expand_ratio: int) -> Tensor:
    hidden = int(round(x.shape[1] * expand_ratio))
    y, index = x, 0
    if expand_ratio != 1:
        y, index = conv_norm_activation(y, "conv.0", hidden, 1, activation=dsl.relu6), 1
    y = conv_norm_activation(y, f"conv.{index}", hidden, 3, stride, groups=hidden,
                             activation=dsl.relu6)
    y = dsl.conv2d(y, out_channels, 1, bias=False, name=f"conv.{index + 1}")
    return _residual(x, dsl.batch_norm(y, name=f"conv.{index + 2}"), stride)


@calibrated(224)
def mobilenet_v2(batch: int = 1, seed: int = 0, num_classes: int = 1000,
                 image_size: int = 224) -> Graph:
    with dsl.Builder("mobilenet_v2", seed) as b:
        x = b.input("input", (batch, 3, image_size, image_size))
        x = conv_norm_activation(x, "features.0", 32, 3, 2, activation=dsl.relu6)
        index = 1
        for expand_ratio, channels, count, first_stride in V2_STAGES:
            for i in range(count):
                with b.scope(f"features.{index}"):
                    x = inverted_residual_v2(x, channels, first_stride if i == 0 else 1,
                                             expand_ratio)
                index += 1
        x = conv_norm_activation(x, f"features.{index}", 1280, 1, activation=dsl.relu6)
        x = dsl.flatten(dsl.global_avg_pool2d(x, name="avgpool"), name="flatten")
        x = dsl.dropout(x, 0.2, name="classifier.0")
        return b.output(dsl.linear(x, num_classes, name="classifier.1"))


def inverted_residual_v3(x: Tensor, kernel: int, expanded: int, out_channels: int, use_se: bool,
                         use_hard_swish: bool, stride: int, dilation: int = 1) -> Tensor:
    """torchvision's MobileNetV3 InvertedResidual; with `dilation` > 1 the depthwise convolution
    is dilated and of stride 1, and the residual add still follows the configured `stride` (as
    torchvision's use_res_connect does)."""
    activation = dsl.hard_swish if use_hard_swish else dsl.relu
    y, index = x, 0
    if expanded != x.shape[1]:
        y = conv_norm_activation(y, "block.0", expanded, 1, activation=activation,
                                 epsilon=V3_EPSILON)
        index += 1
    y = conv_norm_activation(y, f"block.{index}", expanded, kernel,
                             stride if dilation == 1 else 1, groups=expanded,
                             activation=activation, epsilon=V3_EPSILON, dilation=dilation)
    index += 1
    if use_se:
        with x.builder.scope(f"block.{index}"):
            y = squeeze_excitation(y, make_divisible(expanded // 4), dsl.relu, hard_sigmoid)
        index += 1
    y = conv_norm_activation(y, f"block.{index}", out_channels, 1, epsilon=V3_EPSILON)
    return _residual(x, y, stride)


def _mobilenet_v3(name: str, blocks, last_channel: int, batch: int, seed: int, num_classes: int,
                  image_size: int) -> Graph:
    with dsl.Builder(name, seed) as b:
        x = b.input("input", (batch, 3, image_size, image_size))
        x = conv_norm_activation(x, "features.0", 16, 3, 2, activation=dsl.hard_swish,
                                 epsilon=V3_EPSILON)
        for index, block in enumerate(blocks, start=1):
            with b.scope(f"features.{index}"):
                x = inverted_residual_v3(x, *block)
        x = conv_norm_activation(x, f"features.{len(blocks) + 1}", 6 * x.shape[1], 1,
                                 activation=dsl.hard_swish, epsilon=V3_EPSILON)
        x = dsl.flatten(dsl.global_avg_pool2d(x, name="avgpool"), name="flatten")
        with b.scope("classifier"):
            x = dsl.hard_swish(dsl.linear(x, last_channel, name="0"), name="1")
            x = dsl.dropout(x, 0.2, name="2")
            return b.output(dsl.linear(x, num_classes, name="3"))


@calibrated(224)
def mobilenet_v3_large(batch: int = 1, seed: int = 0, num_classes: int = 1000,
                       image_size: int = 224) -> Graph:
    return _mobilenet_v3("mobilenet_v3_large", V3_LARGE, 1280, batch, seed, num_classes,
                         image_size)


@calibrated(224)
def mobilenet_v3_small(batch: int = 1, seed: int = 0, num_classes: int = 1000,
                       image_size: int = 224) -> Graph:
    return _mobilenet_v3("mobilenet_v3_small", V3_SMALL, 1024, batch, seed, num_classes,
                         image_size)
