"""Fast neural style transfer (Johnson et al. 2016, "Perceptual Losses for Real-Time Style
Transfer and Super-Resolution"), the image transformation network as PyTorch's
examples/fast_neural_style `TransformerNet` writes it: reflection-padded convolutions 9x9 32,
3x3/2 64, 3x3/2 128 with instance norm and ReLU, five residual blocks of two 3x3 128
convolutions, two nearest x2 upsamplings each followed by a reflection-padded 3x3 convolution
(64, then 32), and a 9x9 convolution back to RGB. Module names follow TransformerNet's
(`conv1.conv2d`, `in1`, `res1.conv1.conv2d`, `deconv1.conv2d`, ...): 1,679,235 parameters."""
from __future__ import annotations

from ..frontends import dsl
from ..frontends.dsl import Tensor
from ..ir import Graph


def conv_layer(x: Tensor, name: str, out_channels: int, kernel: int, stride: int = 1,
               upsample: int = 1) -> Tensor:
    """TransformerNet's ConvLayer (and UpsampleConvLayer with `upsample`): nearest upsampling,
    reflection padding of kernel // 2, then the convolution."""
    b = x.builder
    with b.scope(name):
        if upsample > 1:
            x = dsl.resize(x, scale=upsample, mode="nearest", name="upsample")
        pad = kernel // 2
        x = dsl.pad(x, (pad, pad, pad, pad), mode="reflect", name="reflection_pad")
        return dsl.conv2d(x, out_channels, kernel, stride=stride, name="conv2d")


def residual_block(x: Tensor, name: str) -> Tensor:
    b = x.builder
    with b.scope(name):
        channels = x.shape[1]
        y = dsl.relu(dsl.instance_norm(conv_layer(x, "conv1", channels, 3), name="in1"))
        y = dsl.instance_norm(conv_layer(y, "conv2", channels, 3), name="in2")
        return dsl.add(y, x, name="add")


def style_transfer(batch: int = 1, seed: int = 0, image_size: int = 256) -> Graph:
    """An RGB image [batch, 3, image_size, image_size] (image_size a multiple of 4) to its
    stylized image of the same size."""
    with dsl.Builder("style_transfer", seed) as b:
        x = b.input("input", (batch, 3, image_size, image_size))
        for i, (channels, kernel, stride) in enumerate(((32, 9, 1), (64, 3, 2), (128, 3, 2)),
                                                       start=1):
            x = dsl.relu(dsl.instance_norm(conv_layer(x, f"conv{i}", channels, kernel, stride),
                                           name=f"in{i}"), name=f"relu{i}")
        for i in range(1, 6):
            x = residual_block(x, f"res{i}")
        for i, channels in ((1, 64), (2, 32)):
            x = conv_layer(x, f"deconv{i}", channels, 3, upsample=2)
            x = dsl.relu(dsl.instance_norm(x, name=f"in{i + 3}"), name=f"relu{i + 3}")
        return b.output(conv_layer(x, "deconv3", 3, 9))
