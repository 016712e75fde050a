"""Models written in plain PyTorch (random weights) with the layers of MobileNetV3, transformers,
recurrent-output indexing and super-resolution, exported by torch.onnx.export, imported by
graphopt and compared with onnxruntime and torch: interpreter and compiled CPU model."""
from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphopt as go

torch = pytest.importorskip("torch")
nn = torch.nn


class SqueezeExcite(nn.Module):
    def __init__(self, channels, squeezed):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x):
        scale = self.pool(x)
        scale = nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(scale))))
        return x * scale


class MobileNetV3Block(nn.Module):
    """Stem, one inverted residual block with squeeze-excite and the classifier head of
    MobileNetV3-Small: Hardswish, Hardsigmoid, depthwise conv, global pooling, Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.Hardswish())
        self.block = nn.Sequential(
            nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.Hardswish(),
            nn.Conv2d(32, 32, 5, 1, 2, groups=32, bias=False), nn.BatchNorm2d(32), nn.Hardswish(),
            SqueezeExcite(32, 8), nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 32),
                                  nn.Hardswish(), nn.Dropout(0.2), nn.Linear(32, 10))

    def forward(self, x):
        x = self.stem(x)
        return self.head(x + self.block(x))


class TransformerBits(nn.Module):
    """LayerNorm, GELU, SiLU, a hand-written layer norm (ReduceMean, Sub, Pow, Sqrt, Div), a
    split into halves, slicing, the last step of a sequence (Gather), exp/log, where, expand and
    a running sum over the steps (CumSum)."""

    def __init__(self, width=16):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(width, width)
        self.gain = nn.Parameter(torch.rand(width) + 0.5)

    def forward(self, x):                         # x: [batch, steps, width]
        h = self.up(self.norm(x))
        a, b = h.split(h.shape[-1] // 2, dim=-1)  # Split
        h = self.down(nn.functional.gelu(a) * nn.functional.silu(b))
        mean = h.mean(-1, keepdim=True)
        centred = h - mean
        h = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + 1e-5) * self.gain
        h = torch.where(h > 0, h, torch.exp(h) - 1)
        last = h[:, -1]                           # Gather
        tail = h[:, 1:, ::2].cumsum(dim=1).sum(dim=1) / 4    # Slice, CumSum, ReduceSum
        pooled = torch.log(torch.exp(last).expand(3, -1, -1).mean(0) + 1)   # Expand
        return torch.cat([pooled, tail], dim=-1).max(dim=-1, keepdim=True).values + last


class SuperResolutionBits(nn.Module):
    """ESPCN super-resolution (PyTorch's ONNX export tutorial: convs, then PixelShuffle, which
    exports as DepthToSpace) with YOLOv4's Mish (exported as Softplus, Tanh, Mul), PReLU, ELU,
    SELU, Softplus, Softsign, PixelUnshuffle, abs, neg, reciprocal, maximum and minimum."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(8, 16, 5, padding=2), nn.Mish(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.PReLU(16),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.ELU(0.5),
                                      nn.Conv2d(16, 8, 3, padding=1), nn.SELU())
        self.upscale = nn.Sequential(nn.Conv2d(2 * 8, 2 * 9, 3, padding=1), nn.PixelShuffle(3))

    def forward(self, x):
        y = self.features(nn.functional.pixel_unshuffle(x, 2))
        y = torch.maximum(nn.functional.softplus(y), nn.functional.softsign(-y))
        y = torch.minimum(y, torch.reciprocal(torch.abs(y) + 0.5))
        return self.upscale(torch.cat([y, y.neg()], 1))


def export(model, x, opset) -> onnx.ModelProto:
    buffer = io.BytesIO()
    # The TorchScript exporter: the dynamo one needs onnxscript, which is not installed.
    torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["input"],
                      output_names=["output"], opset_version=opset)
    return onnx.load_from_string(buffer.getvalue())


def randomized(model):
    torch.manual_seed(0)
    with torch.no_grad():   # batch-norm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


CASES = {
    "mobilenet_v3_block": (MobileNetV3Block, (1, 3, 32, 32), 17,
                           {"HardSwish", "HardSigmoid", "GlobalAveragePool"}),
    "transformer_bits-opset17": (TransformerBits, (2, 5, 16), 17,
                                 {"LayerNormalization", "Erf", "Split", "Pow", "Sqrt",
                                  "ReduceMean", "Gather", "Slice", "Where", "Greater", "Expand",
                                  "Exp", "Log", "CumSum", "ReduceSum", "ReduceMax"}),
    "transformer_bits-opset20": (TransformerBits, (2, 5, 16), 20, {"Gelu", "LayerNormalization"}),
    "super_resolution_bits": (SuperResolutionBits, (1, 2, 12, 16), 18,
                              {"DepthToSpace", "Softplus", "PRelu", "Elu", "Selu", "Max", "Min",
                               "Abs", "Neg", "Reciprocal"}),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request):
    make, shape, opset, onnx_ops = CASES[request.param]
    torch.manual_seed(1)
    model = randomized(make())
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = model(x).numpy()
    proto = export(model, x, opset)
    written = {n.op_type for n in proto.graph.node}
    assert onnx_ops <= written, f"the exporter no longer writes {sorted(onnx_ops - written)}"
    return request.param, proto, x.numpy(), expected


def test_imports_and_matches_onnxruntime_and_torch(exported):
    name, proto, x, expected = exported
    graph = go.load_onnx(proto)
    found = go.interpret(graph, {"input": x})["output"]
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    [from_onnxruntime] = session.run(None, {"input": x})
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(found, from_onnxruntime, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-5 * scale)


def test_compiled_matches_the_interpreter(exported):
    name, proto, x, _ = exported
    graph = go.load_onnx(proto)
    expected = go.interpret(graph, {"input": x})["output"]
    found = go.compile(graph, "cpu").run({"input": x})["output"]
    np.testing.assert_allclose(found, expected, rtol=1e-4,
                               atol=1e-5 * float(np.abs(expected).max()))

