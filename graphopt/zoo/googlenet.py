"""GoogLeNet / Inception v1 (Szegedy et al. 2014) as torchvision builds it for inference: each
convolution is a `BasicConv2d` (conv without bias, batch norm with eps 1e-3, ReLU), max pools
use ceil mode, no auxiliary heads, dropout 0.2 before `fc`. Module names follow torchvision
(`conv1.conv`, `inception3a.branch2.1.bn`, ...). With 1000 classes: 6,624,904 parameters.

torchvision's third branch uses a 3x3 convolution where the paper has 5x5 (kept there for
checkpoint compatibility); `paper_5x5=True` builds the paper's 5x5 instead."""
from __future__ import annotations

from ..frontends import dsl
from ..frontends.dsl import Tensor
from ..ir import Graph

BN_EPSILON = 1e-3

# name: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection); a max pool precedes "4a" and "5a".
INCEPTIONS = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def basic_conv(x: Tensor, name: str, out_channels: int, kernel: int, stride: int = 1) -> Tensor:
    b = x.builder
    with b.scope(name):
        x = dsl.conv2d(x, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False,
                       name="conv")
        return dsl.relu(dsl.batch_norm(x, epsilon=BN_EPSILON, name="bn"), name="relu")


def inception(x: Tensor, widths: tuple[int, ...], wide_kernel: int) -> Tensor:
    c1, c3_reduce, c3, c5_reduce, c5, pool_proj = widths
    branch1 = basic_conv(x, "branch1", c1, 1)
    branch2 = basic_conv(basic_conv(x, "branch2.0", c3_reduce, 1), "branch2.1", c3, 3)
    branch3 = basic_conv(basic_conv(x, "branch3.0", c5_reduce, 1), "branch3.1", c5, wide_kernel)
    pooled = dsl.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True, name="branch4.0")
    branch4 = basic_conv(pooled, "branch4.1", pool_proj, 1)
    return dsl.concat([branch1, branch2, branch3, branch4], axis=1, name="concat")


def googlenet(batch: int = 1, seed: int = 0, num_classes: int = 1000, image_size: int = 224,
              paper_5x5: bool = False) -> Graph:
    wide_kernel = 5 if paper_5x5 else 3
    with dsl.Builder("googlenet", seed) as b:
        x = b.input("input", (batch, 3, image_size, image_size))
        x = basic_conv(x, "conv1", 64, 7, stride=2)
        x = dsl.max_pool2d(x, 3, stride=2, ceil_mode=True, name="maxpool1")
        x = basic_conv(x, "conv2", 64, 1)
        x = basic_conv(x, "conv3", 192, 3)
        x = dsl.max_pool2d(x, 3, stride=2, ceil_mode=True, name="maxpool2")
        for name, widths in INCEPTIONS.items():
            if name == "4a":
                x = dsl.max_pool2d(x, 3, stride=2, ceil_mode=True, name="maxpool3")
            elif name == "5a":
                x = dsl.max_pool2d(x, 2, stride=2, ceil_mode=True, name="maxpool4")
            with b.scope(f"inception{name}"):
                x = inception(x, widths, wide_kernel)
        x = dsl.flatten(dsl.global_avg_pool2d(x, name="avgpool"), name="flatten")
        x = dsl.dropout(x, 0.2, name="dropout")
        return b.output(dsl.linear(x, num_classes, name="fc"))
