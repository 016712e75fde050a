"""The zoo against independent PyTorch forwards written from torchvision's (and the DCGAN
example's, and the AlexNet paper's) definitions: each forward reads the zoo graph's weights by
their torchvision state_dict names, must consume every one of them, and must produce the
interpreter's float64 output. This checks the wiring (strides, paddings, ceil-mode pools,
shortcuts, branch order) and the names that parameter counts alone cannot."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go

torch = pytest.importorskip("torch")
F = torch.nn.functional


class StateDict(dict):
    """The graph's constants as float64 tensors, remembering which names a forward read."""

    def __init__(self, graph: go.Graph):
        super().__init__({k: torch.from_numpy(v.data.astype(np.float64))
                          for k, v in graph.constants.items()})
        self.read: set[str] = set()

    def __getitem__(self, name: str):
        self.read.add(name)
        return super().__getitem__(name)


def batch_norm(x, sd, prefix, eps=1e-5):
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"],
                        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], training=False, eps=eps)


def resnet_forward(x, sd, blocks_per_stage, bottleneck):
    """torchvision.models.resnet.ResNet.forward (Bottleneck strides on conv2)."""
    x = F.relu(batch_norm(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    expansion = 4 if bottleneck else 1
    in_planes = 64
    for stage, count in enumerate(blocks_per_stage):
        planes = 64 * 2 ** stage
        for i in range(count):
            p = f"layer{stage + 1}.{i}"
            stride = 2 if stage > 0 and i == 0 else 1
            identity = x
            if stride != 1 or in_planes != planes * expansion:
                identity = batch_norm(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride),
                                      sd, f"{p}.downsample.1")
            if bottleneck:
                y = F.relu(batch_norm(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
                y = F.relu(batch_norm(F.conv2d(y, sd[f"{p}.conv2.weight"], stride=stride,
                                               padding=1), sd, f"{p}.bn2"))
                y = batch_norm(F.conv2d(y, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            else:
                y = F.relu(batch_norm(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride,
                                               padding=1), sd, f"{p}.bn1"))
                y = batch_norm(F.conv2d(y, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            x = F.relu(y + identity)
            in_planes = planes * expansion
    x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    return F.linear(x, sd["fc.weight"], sd["fc.bias"])


def googlenet_forward(x, sd):
    """torchvision.models.googlenet.GoogLeNet._forward in eval mode, without aux heads."""
    def basic(x, p, stride=1, padding=0):
        x = F.conv2d(x, sd[f"{p}.conv.weight"], stride=stride, padding=padding)
        return F.relu(batch_norm(x, sd, f"{p}.bn", eps=0.001))

    def inception(x, p):
        b1 = basic(x, f"{p}.branch1")
        b2 = basic(basic(x, f"{p}.branch2.0"), f"{p}.branch2.1", padding=1)
        b3 = basic(basic(x, f"{p}.branch3.0"), f"{p}.branch3.1", padding=1)
        b4 = basic(F.max_pool2d(x, 3, 1, 1, ceil_mode=True), f"{p}.branch4.1")
        return torch.cat([b1, b2, b3, b4], 1)

    x = F.max_pool2d(basic(x, "conv1", stride=2, padding=3), 3, 2, ceil_mode=True)
    x = basic(basic(x, "conv2"), "conv3", padding=1)
    x = F.max_pool2d(x, 3, 2, ceil_mode=True)
    x = inception(inception(x, "inception3a"), "inception3b")
    x = F.max_pool2d(x, 3, 2, ceil_mode=True)
    for name in "abcde":
        x = inception(x, f"inception4{name}")
    x = F.max_pool2d(x, 2, 2, ceil_mode=True)
    x = inception(inception(x, "inception5a"), "inception5b")
    x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    return F.linear(x, sd["fc.weight"], sd["fc.bias"])


def classifier(x, sd):
    x = torch.flatten(x, 1)
    x = F.relu(F.linear(x, sd["classifier.0.weight"], sd["classifier.0.bias"]))
    x = F.relu(F.linear(x, sd["classifier.3.weight"], sd["classifier.3.bias"]))
    return F.linear(x, sd["classifier.6.weight"], sd["classifier.6.bias"])


def vgg11_forward(x, sd):
    """torchvision's vgg11 (configuration A) at an input where its adaptive pool is the identity."""
    index = 0
    for item in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if item == "M":
            x, index = F.max_pool2d(x, 2, 2), index + 1
        else:
            x = F.relu(F.conv2d(x, sd[f"features.{index}.weight"], sd[f"features.{index}.bias"],
                                padding=1))
            index += 2
    return classifier(x, sd)


def paper_lrn(x):
    """Krizhevsky et al. 2012, section 3.3: x / (k + alpha * sum of squares over n channels)^beta,
    k=2, n=5, alpha=1e-4, beta=0.75, written out rather than via torch's (alpha / n) variant."""
    squares = F.pad(x * x, (0, 0, 0, 0, 2, 2))
    window = sum(squares[:, i: i + x.shape[1]] for i in range(5))
    return x / (2.0 + 1e-4 * window) ** 0.75


def alexnet_forward(x, sd):
    """The paper's AlexNet with its two-GPU groups, in Caffe's layer order."""
    def conv(x, index, **kw):
        return F.relu(F.conv2d(x, sd[f"features.{index}.weight"], sd[f"features.{index}.bias"],
                               **kw))
    x = F.max_pool2d(paper_lrn(conv(x, 0, stride=4)), 3, 2)
    x = F.max_pool2d(paper_lrn(conv(x, 4, padding=2, groups=2)), 3, 2)
    x = conv(conv(conv(x, 8, padding=1), 10, padding=1, groups=2), 12, padding=1, groups=2)
    return classifier(F.max_pool2d(x, 3, 2), sd)


def dcgan_forward(x, sd):
    """The PyTorch DCGAN example's Generator.main."""
    for index in (0, 3, 6, 9):
        stride, padding = (1, 0) if index == 0 else (2, 1)
        x = F.conv_transpose2d(x, sd[f"main.{index}.weight"], stride=stride, padding=padding)
        x = F.relu(batch_norm(x, sd, f"main.{index + 1}"))
    return torch.tanh(F.conv_transpose2d(x, sd["main.12.weight"], stride=2, padding=1))


CASES = {
    "resnet18": (lambda: go.zoo.resnet18(num_classes=10, image_size=32),
                 lambda x, sd: resnet_forward(x, sd, (2, 2, 2, 2), bottleneck=False)),
    "resnet50": (lambda: go.zoo.resnet50(num_classes=10, image_size=32),
                 lambda x, sd: resnet_forward(x, sd, (3, 4, 6, 3), bottleneck=True)),
    "googlenet": (lambda: go.zoo.googlenet(num_classes=10, image_size=32), googlenet_forward),
    # Their 4096x4096 fc7 alone is 16.8M weights to draw: slow.
    "vgg11": (lambda: go.zoo.vgg11(num_classes=10, image_size=32), vgg11_forward),
    # 67x67 leaves a 1x1 map after features.14, which keeps the classifier small.
    "alexnet": (lambda: go.zoo.alexnet(num_classes=10, image_size=67), alexnet_forward),
    "dcgan_generator": (lambda: go.zoo.dcgan_generator(ngf=16), dcgan_forward),
}


SLOW = ("vgg11", "alexnet")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in CASES])
def test_zoo_matches_independent_torch_forward(name):
    build, forward = CASES[name]
    g = build()
    x = np.random.default_rng(0).standard_normal(g.inputs[0].shape)
    expected = go.interpret(g, {"input": x.astype(np.float32)}, dtype=np.float64)["output"]
    sd = StateDict(g)
    # The float32-rounded input, as the interpreter saw it.
    with torch.no_grad():
        found = forward(torch.from_numpy(x.astype(np.float32).astype(np.float64)), sd).numpy()
    assert sorted(set(sd) - sd.read) == []
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-9 * np.abs(expected).max())
