"""DenseNet-121 (Huang et al. 2017) as torchvision builds it: four dense blocks (6, 12, 24, 16
layers) where each layer (batch norm, ReLU, 1x1 to 128 channels, batch norm, ReLU, 3x3 to the
growth rate 32) reads the concatenation of all earlier feature maps of its block, and
transitions (batch norm, ReLU, 1x1 halving the channels, 2x2 average pool) between blocks.
Module names follow torchvision (`features.denseblock2.denselayer3.conv1`,
`features.transition1.conv`, `classifier`); with 1000 classes: 7,978,856 parameters,
torchvision's count. Batch norm statistics are calibrated (`blocks.calibrated`)."""
from __future__ import annotations

from ..frontends import dsl
from ..frontends.dsl import Tensor
from ..ir import Graph
from .blocks import calibrated

GROWTH_RATE = 32
BN_SIZE = 4
BLOCKS_121 = (6, 12, 24, 16)
INIT_FEATURES = 64


def _norm_relu_conv(x: Tensor, suffix: str, out_channels: int, kernel: int) -> Tensor:
    """torchvision's pre-activation `norm<suffix>`, `relu<suffix>`, `conv<suffix>` (no bias)."""
    x = dsl.relu(dsl.batch_norm(x, name=f"norm{suffix}"), name=f"relu{suffix}")
    return dsl.conv2d(x, out_channels, kernel, padding=kernel // 2, bias=False,
                      name=f"conv{suffix}")


def dense_block(x: Tensor, layers: int) -> Tensor:
    features = [x]
    for i in range(layers):
        with x.builder.scope(f"denselayer{i + 1}"):
            y = dsl.concat(features, axis=1, name="concat") if len(features) > 1 else x
            y = _norm_relu_conv(y, "1", BN_SIZE * GROWTH_RATE, 1)
            features.append(_norm_relu_conv(y, "2", GROWTH_RATE, 3))
    return dsl.concat(features, axis=1, name="concat")


def transition(x: Tensor) -> Tensor:
    x = _norm_relu_conv(x, "", x.shape[1] // 2, 1)
    return dsl.avg_pool2d(x, 2, stride=2, name="pool")


@calibrated(224)
def densenet(batch: int = 1, seed: int = 0, num_classes: int = 1000, image_size: int = 224,
             block_config: tuple[int, ...] = BLOCKS_121, name: str = "densenet121") -> Graph:
    """A DenseNet with `block_config` layers per dense block (torchvision's `_densenet` at growth
    rate 32 and 64 initial features: (6, 12, 24, 16) is DenseNet-121, (6, 12, 32, 32) 169)."""
    with dsl.Builder(name, seed) as b:
        x = b.input("input", (batch, 3, image_size, image_size))
        with b.scope("features"):
            x = dsl.conv2d(x, INIT_FEATURES, 7, stride=2, padding=3, bias=False, name="conv0")
            x = dsl.relu(dsl.batch_norm(x, name="norm0"), name="relu0")
            x = dsl.max_pool2d(x, 3, stride=2, padding=1, name="pool0")
            for index, layers in enumerate(block_config, 1):
                with b.scope(f"denseblock{index}"):
                    x = dense_block(x, layers)
                if index < len(block_config):
                    with b.scope(f"transition{index}"):
                        x = transition(x)
            x = dsl.batch_norm(x, name="norm5")
        x = dsl.relu(x, name="relu")
        x = dsl.flatten(dsl.global_avg_pool2d(x, name="avgpool"), name="flatten")
        return b.output(dsl.linear(x, num_classes, name="classifier"))


def densenet121(batch: int = 1, seed: int = 0, num_classes: int = 1000,
                image_size: int = 224) -> Graph:
    return densenet(batch, seed, num_classes, image_size)
