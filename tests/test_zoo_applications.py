"""The seeds' applications in the zoo (the DQN Atari Q-network, YOLOv3-tiny with its box decoding,
fast neural style transfer) against plain-torch modules written here after their published
definitions (CleanRL's QNetwork; darknet's yolov3-tiny.cfg built the way PyTorch-YOLOv3 ports
build it; PyTorch examples' fast_neural_style TransformerNet). Each module loads the
graph's weights by name, strictly, and must give the float64 interpreter's output."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt.errors import ShapeError

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional


class QNetwork(nn.Module):
    """CleanRL's dqn_atari QNetwork (Mnih et al. 2015), on frames already scaled to [0, 1]."""

    def __init__(self, actions):
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten(), nn.Linear(3136, 512),
            nn.ReLU(), nn.Linear(512, actions))

    def forward(self, x):
        return self.network(x)


# darknet's yolov3-tiny.cfg, layer by layer: (kind, argument).
YOLOV3_TINY_CFG = [
    ("conv", 16), ("maxpool", 2), ("conv", 32), ("maxpool", 2), ("conv", 64), ("maxpool", 2),
    ("conv", 128), ("maxpool", 2), ("conv", 256), ("maxpool", 2), ("conv", 512), ("maxpool", 1),
    ("conv", 1024), ("conv1x1", 256), ("conv", 512), ("head", None), ("yolo", (3, 4, 5)),
    ("route", (-4,)), ("conv1x1", 128), ("upsample", 2), ("route", (-1, 8)), ("conv", 256),
    ("head", None), ("yolo", (0, 1, 2)),
]
ANCHORS = [(10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319)]


class YOLOLayer(nn.Module):
    """PyTorch-YOLOv3's YOLOLayer at inference: boxes in input pixels, scores through sigmoid."""

    def __init__(self, anchors, classes):
        super().__init__()
        self.anchors, self.outputs = torch.tensor(anchors, dtype=torch.float64), 5 + classes

    def forward(self, x, image_size):
        n, _, ny, nx = x.shape
        x = x.view(n, len(self.anchors), self.outputs, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
        yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
        grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2)
        x[..., 0:2] = (x[..., 0:2].sigmoid() + grid) * (image_size // ny)
        x[..., 2:4] = torch.exp(x[..., 2:4]) * self.anchors.view(1, -1, 1, 1, 2)
        x[..., 4:] = x[..., 4:].sigmoid()
        return x.view(n, -1, self.outputs)


class Darknet(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.module_list, channels = nn.ModuleList(), [3]
        for i, (kind, argument) in enumerate(YOLOV3_TINY_CFG):
            block, out = nn.Sequential(), channels[-1]
            if kind in ("conv", "conv1x1"):
                kernel, out = (3 if kind == "conv" else 1), argument
                block.add_module(f"conv_{i}", nn.Conv2d(channels[-1], out, kernel,
                                                        padding=kernel // 2, bias=False))
                block.add_module(f"batch_norm_{i}", nn.BatchNorm2d(out))
                block.add_module(f"leaky_{i}", nn.LeakyReLU(0.1))
            elif kind == "head":
                out = 3 * (5 + classes)
                block.add_module(f"conv_{i}", nn.Conv2d(channels[-1], out, 1))
            elif kind == "yolo":
                block.add_module(f"yolo_{i}", YOLOLayer([ANCHORS[a] for a in argument], classes))
            elif kind == "route":
                out = sum(channels[1:][layer] for layer in
                          (i + r if r < 0 else r for r in argument))
            self.module_list.append(block)
            channels.append(out)

    def forward(self, x):
        image_size, outputs, detections = x.shape[-1], [], []
        for (kind, argument), module in zip(YOLOV3_TINY_CFG, self.module_list):
            if kind == "maxpool" and argument == 1:
                # darknet pads size - 1 = 1 at the bottom and right, with -inf
                x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 2, 1)
            elif kind == "maxpool":
                x = F.max_pool2d(x, 2, 2)
            elif kind == "upsample":
                x = F.interpolate(x, scale_factor=argument, mode="nearest")
            elif kind == "route":
                x = torch.cat([outputs[r] for r in argument], 1)
            elif kind == "yolo":
                detections.append(module[0](x, image_size))
            else:
                x = module(x)
            outputs.append(x)
        return torch.cat(detections, 1)


class ConvLayer(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, upsample=None):
        super().__init__()
        self.upsample = upsample
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x):
        if self.upsample:
            x = F.interpolate(x, mode="nearest", scale_factor=self.upsample)
        return self.conv2d(self.reflection_pad(x))


class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1, self.in1 = ConvLayer(channels, channels, 3), nn.InstanceNorm2d(channels,
                                                                                    affine=True)
        self.conv2, self.in2 = ConvLayer(channels, channels, 3), nn.InstanceNorm2d(channels,
                                                                                    affine=True)

    def forward(self, x):
        return self.in2(self.conv2(F.relu(self.in1(self.conv1(x))))) + x


class TransformerNet(nn.Module):
    """PyTorch examples' fast_neural_style TransformerNet (Johnson et al. 2016)."""

    def __init__(self):
        super().__init__()
        norm = lambda c: nn.InstanceNorm2d(c, affine=True)     # noqa: E731
        self.conv1, self.in1 = ConvLayer(3, 32, 9), norm(32)
        self.conv2, self.in2 = ConvLayer(32, 64, 3, 2), norm(64)
        self.conv3, self.in3 = ConvLayer(64, 128, 3, 2), norm(128)
        for i in range(1, 6):
            setattr(self, f"res{i}", ResidualBlock(128))
        self.deconv1, self.in4 = ConvLayer(128, 64, 3, upsample=2), norm(64)
        self.deconv2, self.in5 = ConvLayer(64, 32, 3, upsample=2), norm(32)
        self.deconv3 = ConvLayer(32, 3, 9)

    def forward(self, x):
        y = F.relu(self.in1(self.conv1(x)))
        y = F.relu(self.in2(self.conv2(y)))
        y = F.relu(self.in3(self.conv3(y)))
        for i in range(1, 6):
            y = getattr(self, f"res{i}")(y)
        y = F.relu(self.in4(self.deconv1(y)))
        y = F.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


def load_graph_weights(module, graph: go.Graph):
    """The graph's learned weights as the module's float64 state (strict but for batch norm's
    num_batches_tracked): decoding constants (cell offsets, strides, anchors) are not weights."""
    state = {k: torch.from_numpy(v.data.astype(np.float64)) for k, v in graph.constants.items()
             if ".yolo_" not in k}
    missing, unexpected = module.double().load_state_dict(state, strict=False)
    assert unexpected == []
    assert [k for k in missing if not k.endswith("num_batches_tracked")] == []
    return module.eval()


CASES = {
    "dqn": (lambda: go.zoo.dqn(batch=2, num_actions=6), lambda: QNetwork(6)),
    "yolov3_tiny": (lambda: go.zoo.yolov3_tiny(batch=2, num_classes=3, image_size=64),
                    lambda: Darknet(3)),
    "style_transfer": (lambda: go.zoo.style_transfer(batch=2, image_size=24), TransformerNet),
}


@pytest.mark.parametrize("name", CASES)
def test_matches_torch_module_with_the_same_weights(name):
    build, module = CASES[name]
    g = build()
    x = np.random.default_rng(1).uniform(0, 1, g.inputs[0].shape).astype(np.float32)
    expected = go.interpret(g, {"input": x}, dtype=np.float64)["output"]
    with torch.no_grad():
        found = load_graph_weights(module(), g)(torch.from_numpy(x.astype(np.float64))).numpy()
    np.testing.assert_allclose(found, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
    y32 = go.interpret(g, {"input": x})["output"]
    np.testing.assert_allclose(y32, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("name, count", [("dqn", 1_693_362), ("yolov3_tiny", 8_852_366),
                                         ("style_transfer", 1_679_235)])
def test_learned_parameters_match_the_reference_module(name, count):
    # DQN with the full Atari action set (18); YOLOv3-tiny with COCO's 80 classes, undecoded.
    module = {"dqn": lambda: QNetwork(18), "yolov3_tiny": lambda: Darknet(80),
              "style_transfer": TransformerNet}[name]
    with torch.device("meta"):
        assert sum(p.numel() for p in module().parameters()) == count
    options = {"yolov3_tiny": {"decode": False, "image_size": 64},
               "style_transfer": {"image_size": 32}}.get(name, {})
    assert go.zoo.MODELS[name](**options).num_params() == count


def test_yolo_decoding_adds_only_its_offsets_strides_and_anchors():
    raw = go.zoo.yolov3_tiny(image_size=64, decode=False)
    decoded = go.zoo.yolov3_tiny(image_size=64)
    cells = 2 * 2 * 2 + 4 * 4 * 2
    assert decoded.num_params() - raw.num_params() == cells + 2 * (1 + 6)
    assert [o.shape for o in raw.outputs] == [(1, 255, 2, 2), (1, 255, 4, 4)]
    assert decoded.outputs[0].shape == (1, 3 * (2 * 2 + 4 * 4), 85)
    with pytest.raises(ShapeError, match="multiple of 32"):
        go.zoo.yolov3_tiny(image_size=100)


def test_yolo_boxes_lie_in_their_cells_and_scores_are_probabilities():
    g = go.zoo.yolov3_tiny(num_classes=3, image_size=64)
    x = np.random.default_rng(4).uniform(0, 1, g.inputs[0].shape).astype(np.float32)
    boxes = go.interpret(g, {"input": x})["output"][0]
    centres = boxes[:, :2].reshape(-1, 2)
    # first the 2x2 head (stride 32, 3 anchors), then the 4x4 one (stride 16)
    coarse, fine = centres[:12].reshape(3, 2, 2, 2), centres[12:].reshape(3, 4, 4, 2)
    for grid, stride in ((coarse, 32), (fine, 16)):
        cells = np.floor(grid / stride)
        rows, columns = np.meshgrid(np.arange(grid.shape[1]), np.arange(grid.shape[2]),
                                    indexing="ij")
        assert (cells[..., 0] == columns).all() and (cells[..., 1] == rows).all()
    assert (boxes[:, 2:4] > 0).all() and ((boxes[:, 4:] > 0) & (boxes[:, 4:] < 1)).all()


def test_yolo_compiles_for_cpu():
    """Upsample, concat, 5-d reshapes and transposes, slices of the last axis and exp compiled
    as one graph (DQN compiles among test_zoo's small models)."""
    g = go.zoo.yolov3_tiny(num_classes=3, image_size=64)
    x = np.random.default_rng(2).uniform(0, 1, g.inputs[0].shape).astype(np.float32)
    report = go.compare(g, go.compile(g, "cpu"), {"input": x})
    assert report.ok, str(report)


def test_style_transfer_compiles_for_cpu():
    """Reflection pads, instance norms and nearest upsampling compiled as one graph."""
    g = go.zoo.style_transfer(image_size=32)
    x = np.random.default_rng(3).uniform(0, 1, g.inputs[0].shape).astype(np.float32)
    report = go.compare(g, go.compile(g, "cpu"), {"input": x})
    assert report.ok, str(report)
