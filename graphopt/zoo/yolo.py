"""YOLOv3-tiny (Redmon & Farhadi 2018) as darknet's `cfg/yolov3-tiny.cfg` defines it: seven 3x3
convolutions with batch norm and leaky ReLU (0.1) between max pools (the last of stride 1,
padded at the bottom and right as darknet pads: with -inf), then two detection heads, at 1/32 of
the input and, through a 1x1 convolution, a 2x nearest upsample and a concatenation with layer
8, at 1/16. Module names follow the darknet layer indices as PyTorch-YOLOv3 ports name them
(`module_list.13.conv_13`, `module_list.22.conv_22`, ...).

Each head is decoded inside the graph as those ports do at inference: per anchor, box centres
(sigmoid(t_xy) + cell) * stride and sizes exp(t_wh) * anchor in input pixels, objectness and class
scores through a sigmoid; the output is [N, 3 * (H1 * W1 + H2 * W2), 5 + classes] (2535 boxes at
416x416). With 80 classes: 8,852,366 learned parameters, summed by hand from the cfg; decoding
adds its cell offsets, strides and anchors as constants (1,704 at 416x416). `decode=False`
returns the two raw head maps instead. Batch norm statistics are calibrated
(`blocks.calibrated`)."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..frontends import dsl
from ..frontends.dsl import Tensor
from ..ir import Graph
from .blocks import calibrated

# darknet's anchors (width, height in input pixels); the 1/32 head uses the last three.
ANCHORS = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))
HEAD_ANCHORS = {16: ANCHORS[3:], 23: ANCHORS[:3]}
BACKBONE = (16, 32, 64, 128, 256, 512)


def conv_leaky(x: Tensor, index: int, out_channels: int, kernel: int) -> Tensor:
    """darknet's [convolutional] with batch_normalize=1, activation=leaky."""
    with x.builder.scope(f"module_list.{index}"):
        x = dsl.conv2d(x, out_channels, kernel, padding=kernel // 2, bias=False,
                       name=f"conv_{index}")
        x = dsl.batch_norm(x, name=f"batch_norm_{index}")
        return dsl.leaky_relu(x, 0.1, name=f"leaky_{index}")


def detection_head(x: Tensor, index: int, outputs: int) -> Tensor:
    """darknet's [convolutional] with activation=linear: a 1x1 convolution with bias."""
    return dsl.conv2d(x, outputs, 1, name=f"module_list.{index}.conv_{index}")


def decode_head(x: Tensor, index: int, anchors, image_size: int) -> Tensor:
    """A head's [N, A * (5 + C), H, W] map as [N, A * H * W, 5 + C] boxes (see the docstring)."""
    b = x.builder
    n, channels, height, width = x.shape
    per_box = channels // len(anchors)
    with b.scope(f"module_list.{index}.yolo_{index}"):
        x = dsl.reshape(x, (n, len(anchors), per_box, height, width), name="boxes")
        x = dsl.transpose(x, (0, 1, 3, 4, 2), name="per_cell")
        xy, wh, scores = dsl.split(x, [2, 2, per_box - 4], axis=-1, name="fields")
        rows, columns = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        cells = np.stack([columns, rows], axis=-1).reshape(1, 1, height, width, 2)
        xy = dsl.add(dsl.sigmoid(xy, name="xy.sigmoid"),
                     b.constant("cells", cells.astype(x.dtype)), name="xy.cell")
        xy = dsl.mul(xy, b.constant("stride", np.array(image_size // height, x.dtype)), name="xy")
        sizes = np.array(anchors, x.dtype).reshape(1, len(anchors), 1, 1, 2)
        wh = dsl.mul(dsl.exp(wh, name="wh.exp"), b.constant("anchors", sizes), name="wh")
        x = dsl.concat([xy, wh, dsl.sigmoid(scores, name="scores")], axis=-1, name="decoded")
        return dsl.reshape(x, (n, len(anchors) * height * width, per_box), name="flat")


@calibrated(416)
def yolov3_tiny(batch: int = 1, seed: int = 0, num_classes: int = 80, image_size: int = 416,
                decode: bool = True) -> Graph:
    if image_size % 32:
        raise ShapeError(f"yolov3_tiny: expected image_size a multiple of 32, found {image_size}")
    outputs = 3 * (5 + num_classes)
    with dsl.Builder("yolov3_tiny", seed) as b:
        x = b.input("input", (batch, 3, image_size, image_size))
        for i, channels in enumerate(BACKBONE):
            x = conv_leaky(x, 2 * i, channels, 3)
            if i == 4:
                route = x   # layer 8, concatenated into the 1/16 head
            index = 2 * i + 1
            if i < 5:
                x = dsl.max_pool2d(x, 2, stride=2, name=f"module_list.{index}.maxpool_{index}")
        x = dsl.max_pool2d(x, 2, stride=1, padding=(0, 0, 1, 1),
                           name="module_list.11.maxpool_11")
        x = conv_leaky(x, 12, 1024, 3)
        x = conv_leaky(x, 13, 256, 1)
        coarse = detection_head(conv_leaky(x, 14, 512, 3), 15, outputs)
        x = dsl.resize(conv_leaky(x, 18, 128, 1), scale=2, name="module_list.19.upsample_19")
        x = dsl.concat([x, route], axis=1, name="module_list.20.route_20")
        fine = detection_head(conv_leaky(x, 21, 256, 3), 22, outputs)
        if not decode:
            return b.output(coarse, fine)
        boxes = [decode_head(coarse, 16, HEAD_ANCHORS[16], image_size),
                 decode_head(fine, 23, HEAD_ANCHORS[23], image_size)]
        return b.output(dsl.concat(boxes, axis=1, name="detections"))
