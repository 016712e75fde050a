"""SegNet (Badrinarayanan, Kendall & Cipolla 2017): an encoder-decoder for pixel-wise
segmentation. The encoder is VGG-16's 13 convolutions (3x3, each followed by batch norm and ReLU)
in five stages, each ending in a 2x2 max pool that keeps the indices of its maxima; the decoder
mirrors it, each stage starting with a max unpool that puts every value back where its pool found
it (zeros elsewhere, no learned upsampling), then convolutions that densify the sparse map. The last
convolution scores every class at every pixel: [N, classes, H, W] (the paper's soft-max classifier
reads these scores).

Decoder stage k mirrors encoder stage k: the same number of convolutions, all keeping the stage's
width but the last, which narrows to the next stage's width (to the class count in stage 1), as in
the authors' Caffe model. Module names follow a plain-torch definition (`encoders.<stage>.<conv>.0`
convolution, `.1` batch norm; `decoders.<stage>...`, decoder 0 undoing the deepest pool).
`width` scales the channels (64 as in VGG); every pool's unpool restores its input's exact size, so
any image of at least 32x32 works. With 11 classes (CamVid) and width 64: 29,449,355 parameters."""
from __future__ import annotations

from ..errors import ShapeError
from ..frontends import dsl
from ..frontends.dsl import Tensor
from ..ir import Graph
from .blocks import calibrated

# VGG-16's stages: (convolutions, channels as a multiple of `width`).
STAGES = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))


def conv_bn_relu(x: Tensor, name: str, channels: int) -> Tensor:
    """3x3 convolution with bias ('<name>.0'), batch norm ('<name>.1'), ReLU ('<name>.2')."""
    with x.builder.scope(name):
        x = dsl.conv2d(x, channels, 3, padding=1, name="0")
        return dsl.relu(dsl.batch_norm(x, name="1"), name="2")


@calibrated(64)
def segnet(batch: int = 1, seed: int = 0, num_classes: int = 11, image_size: int = 64,
           width: int = 64) -> Graph:
    if image_size < 32:
        raise ShapeError(f"segnet: expected image_size of at least 32 (five 2x2 pools), found "
                         f"{image_size}")
    with dsl.Builder("segnet", seed) as b:
        x = b.input("input", (batch, 3, image_size, image_size))
        pools = []
        for stage, (count, scale) in enumerate(STAGES):
            for i in range(count):
                x = conv_bn_relu(x, f"encoders.{stage}.{i}", width * scale)
            size = tuple(x.shape[2:])
            x, indices = dsl.max_pool2d(x, 2, name=f"pool{stage}", return_indices=True)
            pools.append((indices, size))
        for depth, (count, scale) in enumerate(reversed(STAGES)):
            stage = len(STAGES) - 1 - depth
            indices, size = pools[stage]
            x = dsl.max_unpool2d(x, indices, 2, output_size=size, name=f"unpool{stage}")
            narrowed = width * STAGES[stage - 1][1] if stage else num_classes
            for i in range(count - 1):
                x = conv_bn_relu(x, f"decoders.{depth}.{i}", width * scale)
            if stage:
                x = conv_bn_relu(x, f"decoders.{depth}.{count - 1}", narrowed)
            else:   # the class scores: a plain convolution
                x = dsl.conv2d(x, narrowed, 3, padding=1, name=f"decoders.{depth}.{count - 1}")
        return b.output(x)
