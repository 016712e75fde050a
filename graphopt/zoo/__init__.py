"""The seeds' networks, written in the DSL. Every builder is `f(batch=1, seed=0, ...)` and
returns a verified Graph with one input "input" and one output "output"; weights are drawn
deterministically from `seed`.

    g = go.zoo.resnet18(batch=8)          # or go.zoo.MODELS["resnet18"](batch=8)
    g = go.zoo.get("vgg16", num_classes=10)
"""
from __future__ import annotations

from typing import Callable

from ..errors import GraphoptError
from ..ir import Graph
from .alexnet import alexnet
from .dcgan import dcgan_generator
from .deep_convnet import deep_convnet
from .deeplab import deeplabv3_mobilenet_v3_large
from .densenet import densenet121
from .dqn import dqn
from .efficientnet import efficientnet_b0
from .fcn import fcn
from .googlenet import googlenet
from .inception import inception_v3
from .lenet import lenet5
from .mobilenet import mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small
from .nic import nic_captioning
from .regnet import regnet_x_400mf
from .resnet import resnet18, resnet50
from .segnet import segnet
from .shufflenet import shufflenet_v2_x1_0
from .squeezenet import squeezenet1_1
from .style_transfer import style_transfer
from .vgg import vgg11, vgg16
from .yolo import yolov3_tiny

MODELS: dict[str, Callable[..., Graph]] = {
    "lenet5": lenet5,
    "alexnet": alexnet,
    "vgg11": vgg11,
    "vgg16": vgg16,
    "googlenet": googlenet,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "deep_convnet": deep_convnet,
    "fcn": fcn,
    "dcgan_generator": dcgan_generator,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_small": mobilenet_v3_small,
    "mobilenet_v3_large": mobilenet_v3_large,
    "efficientnet_b0": efficientnet_b0,
    "shufflenet_v2_x1_0": shufflenet_v2_x1_0,
    "squeezenet1_1": squeezenet1_1,
    "regnet_x_400mf": regnet_x_400mf,
    "densenet121": densenet121,
    "inception_v3": inception_v3,
    "dqn": dqn,
    "style_transfer": style_transfer,
    "yolov3_tiny": yolov3_tiny,
    "nic_captioning": nic_captioning,
    "segnet": segnet,
    "deeplabv3_mobilenet_v3_large": deeplabv3_mobilenet_v3_large,
}


def get(name: str, **options) -> Graph:
    """Build the zoo model `name` with `options` (batch, seed, num_classes, ...)."""
    if name not in MODELS:
        raise GraphoptError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name](**options)


__all__ = ["MODELS", "get", "alexnet", "dcgan_generator", "deep_convnet",
           "deeplabv3_mobilenet_v3_large", "densenet121", "dqn",
           "efficientnet_b0", "fcn", "googlenet", "inception_v3", "lenet5", "mobilenet_v2",
           "mobilenet_v3_large", "mobilenet_v3_small", "nic_captioning", "regnet_x_400mf",
           "resnet18", "resnet50", "segnet", "shufflenet_v2_x1_0", "squeezenet1_1", "vgg11",
           "vgg16", "yolov3_tiny"]
