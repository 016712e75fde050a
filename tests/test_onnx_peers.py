"""Peers: a ResNet-18 written in plain PyTorch (random weights), exported by torch.onnx.export,
loaded with load_onnx, must match onnxruntime (and torch) in the interpreter and compiled for
the CPU; and graphopt's own export must run in onnxruntime."""
from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest

import graphopt as go

torch = pytest.importorskip("torch")
nn = torch.nn


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision's resnet18, written out (torchvision is not available here)."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, inplanes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(inplanes, planes, stride),
                                        BasicBlock(planes, planes)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)
        # reshape by the runtime size: the exporter writes a Shape->Gather->Unsqueeze->Concat
        # ->Reshape chain that the importer must fold
        x = x.reshape(x.size(0), -1)
        return self.fc(x)


def random_resnet18(seed=0):
    torch.manual_seed(seed)
    model = ResNet18()
    with torch.no_grad():   # non-trivial batch-norm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def export(model, x, **options) -> bytes:
    buffer = io.BytesIO()
    # The TorchScript exporter: the dynamo one needs onnxscript, which is not installed.
    torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["input"],
                      output_names=["logits"], opset_version=17, **options)
    return buffer.getvalue()


def onnxruntime_outputs(model_bytes, feeds):
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_close(found, expected, rtol=1e-4):
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(found, expected, rtol=rtol, atol=1e-5 * scale)


@pytest.fixture(scope="module")
def resnet18_export():
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    model = random_resnet18()
    with torch.no_grad():
        expected_torch = model(x).numpy()
    data = export(model, x)
    return data, x.numpy(), expected_torch


def test_torch_resnet18_loads_with_folded_shape_chain(resnet18_export):
    data, _, _ = resnet18_export
    graph = go.load_onnx(data)
    ops = [n.op_name for n in graph.nodes]
    assert ops.count("conv2d") == 20 and ops.count("linear") == 1
    assert ops.count("reshape") == 1          # the shape chain became one static reshape
    assert graph.node(next(n.name for n in graph.nodes if n.op_name == "reshape")) \
        .output.shape == (1, 512)
    assert "fc.weight" in graph.constants and "fc.bias" in graph.constants
    assert graph.input_names == ["input"] and graph.output_names == ["logits"]


def test_torch_resnet18_interpreter_matches_onnxruntime(resnet18_export):
    data, x, expected_torch = resnet18_export
    expected = onnxruntime_outputs(data, {"input": x})[0]
    found = go.interpret(go.load_onnx(data), {"input": x})["logits"]
    assert_close(found, expected)
    assert_close(found, expected_torch)


def test_torch_resnet18_compiled_matches_onnxruntime(resnet18_export):
    data, x, _ = resnet18_export
    expected = onnxruntime_outputs(data, {"input": x})[0]
    compiled = go.compile(go.load_onnx(data), target="cpu")
    assert_close(compiled.run({"input": x})["logits"], expected)


def test_torch_resnet18_reexported_runs_in_onnxruntime(resnet18_export):
    data, x, _ = resnet18_export
    model = go.save_onnx(go.load_onnx(data))
    assert_close(onnxruntime_outputs(model.SerializeToString(), {"input": x})[0],
                 onnxruntime_outputs(data, {"input": x})[0])


def test_torch_export_without_folding_keeps_batch_norm():
    x = torch.randn(1, 3, 32, 32)
    model = random_resnet18(seed=3)
    data = export(model, x, do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE)
    graph = go.load_onnx(data)
    assert any(n.op_name == "batch_norm" for n in graph.nodes)
    assert_close(go.interpret(graph, {"input": x.numpy()})["logits"],
                 onnxruntime_outputs(data, {"input": x.numpy()})[0])


def test_torch_export_with_dynamic_batch_needs_input_shapes():
    model = random_resnet18(seed=4)
    data = export(model, torch.randn(1, 3, 32, 32), dynamic_axes={"input": {0: "batch"}})
    with pytest.raises(go.ModelFormatError, match="symbolic dimensions.*batch"):
        go.load_onnx(data)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    graph = go.load_onnx(data, input_shapes={"input": x.shape})
    assert graph.outputs[0].shape == (3, 1000)
    assert_close(go.interpret(graph, {"input": x})["logits"],
                 onnxruntime_outputs(data, {"input": x})[0])


@pytest.mark.slow
def test_torch_resnet18_full_size_interpreter_and_compiled():
    x = torch.randn(1, 3, 224, 224)
    model = random_resnet18(seed=2)
    data = export(model, x)
    expected = onnxruntime_outputs(data, {"input": x.numpy()})[0]
    graph = go.load_onnx(data)
    assert_close(go.interpret(graph, {"input": x.numpy()})["logits"], expected)
    assert_close(go.compile(graph).run({"input": x.numpy()})["logits"], expected)
