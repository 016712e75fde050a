"""graphopt view: the model Netron is shown (fused nodes as `ai.graphopt` ops with their
attributes and provenance, the rest graphopt's standard export) and the command, which serves it
through netron's own server: fetched here over HTTP instead of opening a browser."""
from __future__ import annotations

import socket
import sys
import urllib.request

import onnx
import pytest
from onnx import helper

import graphopt as go
from graphopt import cli
from graphopt.report.view import DOMAIN, op_type, view_model


@pytest.fixture(scope="module")
def optimized():
    return go.optimize(go.zoo.resnet18(image_size=32, num_classes=10)).graph


def test_fused_nodes_are_graphopt_ops(optimized):
    model = view_model(optimized)
    onnx.checker.check_model(model)
    assert (DOMAIN, 1) in {(o.domain, o.version) for o in model.opset_import}
    fused = {n.name: n for n in optimized.nodes if n.op_name == "fused_conv2d"}
    custom = {n.name: n for n in model.graph.node if n.domain == DOMAIN}
    assert set(custom) == set(fused) and len(custom) == 17
    node = custom["layer1.0.relu2.fused"]
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert node.op_type == "FusedConv2d"
    assert [s.decode() for s in attributes["stands_for"]] == \
        ["layer1.0.conv2", "layer1.0.bn2", "layer1.0.add", "layer1.0.relu2"]
    assert attributes["has_residual"] == 1 and attributes["activation"] == b"relu"
    assert attributes["conv.padding"] == [1, 1, 1, 1] and attributes["conv.stride"] == [1, 1]
    assert list(node.input) == [v.name for v in optimized.node(node.name).inputs]
    # the other nodes are the standard export's, a folded one saying what it stands for
    standard = {n.name: n for n in model.graph.node if n.domain == ""}
    assert standard["maxpool"].op_type == "MaxPool"
    assert standard["layer2.0.downsample.1.folded"].doc_string == \
        "stands for layer2.0.downsample.0, layer2.0.downsample.1"
    # every value read is made by a node, an input or a weight
    made = {o for n in model.graph.node for o in n.output} | \
        {v.name for v in model.graph.input} | {t.name for t in model.graph.initializer}
    assert {i for n in model.graph.node for i in n.input} <= made


@pytest.mark.parametrize("name, expected", [("fused_conv2d", "FusedConv2d"),
                                            ("qlinear_conv2d", "QlinearConv2d")])
def test_op_type(name, expected):
    assert op_type(name) == expected


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def test_view_command_serves_the_model(tmp_path, monkeypatch, capsys):
    netron = pytest.importorskip("netron", reason="the view extra: pip install graphopt[view]")
    port, path, fetched = free_port(), tmp_path / "lenet5.onnx", {}

    def wait():     # instead of blocking until Ctrl-C: what a browser would load, then stop
        base = f"http://localhost:{port}"
        fetched["page"] = urllib.request.urlopen(base + "/", timeout=30).read().decode()
        fetched["model"] = urllib.request.urlopen(base + "/data/lenet5.onnx", timeout=30).read()
        netron.stop(("localhost", port))

    monkeypatch.setattr(netron, "wait", wait)
    code = cli.main(["view", "lenet5", "--optimized", "--no-browser", "--port", str(port),
                     "-o", str(path)])
    assert code == cli.EXIT_OK
    assert f"in Netron at http://localhost:{port}" in capsys.readouterr().out
    assert '<meta name="file" content="/data/lenet5.onnx">' in fetched["page"]
    assert fetched["model"] == path.read_bytes()
    served = onnx.load_from_string(fetched["model"])
    assert [n.name for n in served.graph.node] == \
        [n.name for n in go.optimize(go.zoo.lenet5()).graph.topological_order()]


def test_view_for_a_target_says_how_nodes_are_computed(tmp_path, monkeypatch):
    netron = pytest.importorskip("netron", reason="the view extra: pip install graphopt[view]")
    monkeypatch.setattr(netron, "wait", lambda: netron.stop())
    path = tmp_path / "seen.onnx"
    assert cli.main(["view", "lenet5", "--target", "cpu", "--no-browser", "-o",
                     str(path)]) == cli.EXIT_OK
    nodes = {n.name: n for n in onnx.load(str(path)).graph.node}
    # each conv and its tanh are one fused node, which carries the decision as an attribute
    # (conv1, one input channel: rows as the vector axis; conv2: channel tiles); the dense
    # layer is a plain ONNX node noted with it, as is the average pooling (a row sum, then a
    # column sum)
    decided = {name: {a.name: onnx.helper.get_attribute_value(a) for a in nodes[name].attribute}
               for name in ("act1.fused", "act2.fused")}
    assert decided["act1.fused"]["computed_as"].decode().startswith("narrow")
    assert decided["act2.fused"]["computed_as"].decode().startswith("direct")
    assert nodes["fc1"].doc_string.startswith("computed as")
    assert nodes["pool1"].doc_string == "computed as separable"


def test_view_needs_netron(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "netron", None)
    assert cli.main(["view", "lenet5", "--no-browser"]) == cli.EXIT_USAGE
    assert "pip install graphopt[view]" in capsys.readouterr().err
