"""graphopt report: the page of two zoo models checked by structure (one SVG per graph and chart,
the tables, nodes lined up with kernels), its --json against docs/json.md, rendered in headless
Chromium where installed; the errors a bad request and a missing extra give; the pieces (graph
drawing and folding, peak memory) on graphs small enough to count by hand."""
from __future__ import annotations

import contextlib
import html
import io
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

import graphopt as go
from graphopt import cli, dsl
from graphopt.report.extras import MissingExtraError, dot_executable
from graphopt.report.graph_svg import Changes, to_dot
from graphopt.report.memory import peak_activation_bytes
from graphopt.signature import probe_inputs
from test_cli_json import DOCUMENTED, check_optimize_result, keys

pytest.importorskip("matplotlib", reason="the report extra: pip install graphopt[report]")


def small_resnet():
    return go.zoo.resnet18(image_size=32, num_classes=10)


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """go.report of LeNet-5 (passes, compile, kernel and ORT profiles), written to a file."""
    path = tmp_path_factory.mktemp("report") / "lenet5.html"
    return go.report(go.zoo.lenet5(), str(path)), path


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """`graphopt report resnet.onnx -o ... --json` on a small ResNet-18 saved as ONNX."""
    folder = tmp_path_factory.mktemp("report")
    model, page = folder / "resnet18.onnx", folder / "resnet18.html"
    go.save_onnx(small_resnet(), str(model))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["-q", "report", str(model), "-o", str(page), "--json"])
    return code, json.loads(out.getvalue()), page.read_text()


class Page(HTMLParser):
    """Top-level <svg> elements, tables by id (rows), and anything that would reach out."""

    def __init__(self, text: str):
        super().__init__()
        self.svgs, self.depth, self.tables, self.current = [], 0, {}, None
        self.external: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "svg":
            if self.depth == 0:
                self.svgs.append(attrs)
            self.depth += 1
        if tag in ("script", "link", "iframe", "img"):
            self.external.append(tag)
        for name in ("src", "href", "xlink:href"):
            if name in attrs and not attrs[name].startswith("#"):
                self.external.append(f"{name}={attrs[name]}")
        if tag == "table":
            self.current = attrs.get("id")
            self.tables.setdefault(self.current, 0)
        if tag == "tr" and self.current is not None:
            self.tables[self.current] += 1

    def handle_endtag(self, tag):
        if tag == "svg":
            self.depth -= 1
        if tag == "table":
            self.current = None


def graph_node_count(svg_text: str) -> int:
    return svg_text.count('class="node"')


def test_lenet_page_is_whole_and_self_contained(lenet):
    built, path = lenet
    text = path.read_text()
    assert text == built.html
    page = Page(text)
    # the two graphs, MACs/params, error per layer, the kernels and ONNX Runtime's nodes
    assert len(page.svgs) == built.svgs == 6
    assert page.external == []
    # no address but XML namespaces and SVG's DTD names
    assert "http" not in re.sub(r'xmlns(:\w+)?="http[^"]*"', "", text)
    graphs = re.findall(r'<div class="graph">.*?</div>', text, re.S)
    # nodes, input, output; after: conv1 and conv2 fused with their tanh
    assert [graph_node_count(g) for g in graphs] == [12 + 2, 10 + 2]
    kernels = built.sections["kernels"]
    assert page.tables["kernels"] == 1 + min(15, len(kernels))
    assert page.tables["onnxruntime"] == 1 + min(15, len(built.sections["onnxruntime"]))
    assert page.tables["totals"] == 3 and page.tables["memory-table"] == 3
    # matplotlib drew bars: two (before, after) per layer with MACs or params, in two panels
    layers = built.sections["layers"]
    assert [c["layer"] for c in layers] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    costs = re.search(r'<div class="chart">(<svg.*?</svg>)', text, re.S).group(1)
    assert costs.count('id="patch_') >= 2 * 2 * len(layers)
    assert "optimize 'lenet5': 12 -> 10 nodes" in html.unescape(text)


def test_lenet_numbers(lenet):
    sections = lenet[0].sections
    assert sections["compare"]["first_divergent"] is None
    assert sections["totals"]["before"]["macs"] == sections["totals"]["after"]["macs"] == \
        sum(c["macs"][0] for c in sections["layers"])
    timed = [k for k in sections["kernels"] if k["node"]]
    # every layer with MACs got its kernel, and achieved a positive rate
    assert sorted(k["node"] for k in timed) == ["act1.fused", "act2.fused", "fc1", "fc2", "fc3"]
    assert all(k["gflops"] > 0 and k["rule"] in ("conv2d", "narrow", "dense") for k in timed)
    assert sections["compiled_ms"] > 0
    # ONNX Runtime's own graph: its fusions and layouts (act1_1_nchwc: Conv, "fused fc1")
    ort = sections["onnxruntime"]
    assert {"Conv", "AveragePool"} <= {t["op"] for t in ort} and all(t["ms"] > 0 for t in ort)
    assert [t["ms"] for t in ort] == sorted((t["ms"] for t in ort), reverse=True)
    memory = sections["memory"]["before"]
    # the largest step: conv1's output and act1's (1x6x28x28 each), float32
    assert memory["peak_activation_bytes"] == 4 * 2 * 6 * 28 * 28
    assert memory["params_bytes_per_precision"]["int8"] == memory["params"]


def test_resnet_report_command(resnet):
    code, obj, text = resnet
    assert code == 0
    assert obj["graphopt"] == go.__version__ and obj["command"] == "report"
    body = {k: v for k, v in obj.items() if k not in DOCUMENTED["top"]}
    keys(body, "html report")
    check_optimize_result(body["optimize"])
    for which in ("totals", "memory"):
        keys(body[which], "before and after")
    for totals in body["totals"].values():
        keys(totals, "totals")
    for memory in body["memory"].values():
        keys(memory, "memory")
    for cost in body["layers"]:
        keys(cost, "layer cost")
    for kernel in body["kernels"]:
        keys(kernel, "kernel")
    for node in body["onnxruntime"]:
        keys(node, "onnxruntime node")
    keys(body["compare"], "report")
    assert body["steps"] == ["optimize"] and body["onnxruntime_skipped"] is None
    assert body["totals"]["after"]["nodes"] < body["totals"]["before"]["nodes"]

    # every fused convolution is one kernel, lined up with its node
    fused = {k["node"] for k in body["kernels"] if k["op"] == "fused_conv2d"}
    assert "layer1.0.relu2.fused" in fused and len(fused) == 17
    assert Page(text).external == [] and text.count("<svg") == 6
    # the fused node says what it stands for and is outlined as changed
    node = re.search(r'<title>layer1\.0\.relu2\.fused</title>.*?</g>', text, re.S).group(0)
    assert "stands for layer1.0.conv2, layer1.0.bn2, layer1.0.add, layer1.0.relu2" in \
        node.replace("&#45;", "-")
    assert 'stroke="#d62728"' in node
    # the original batch norm it absorbed is outlined on the left too
    before = re.findall(r'<div class="graph">.*?</div>', text, re.S)[0]
    bn = re.search(r'<title>layer1\.0\.bn2</title>.*?</g>', before, re.S).group(0)
    assert 'stroke="#d62728"' in bn


def test_prune_then_float16_without_profile():
    graph = go.zoo.lenet5()
    built = go.report(graph, prune=0.5, quantize="float16", profile=False)
    sections = built.sections
    assert sections["steps"] == ["prune", "quantize"]
    assert sections["totals"]["after"]["params"] < sections["totals"]["before"]["params"]
    assert set(sections["memory"]["after"]["weight_bytes"]) == {"float16"}
    assert sections["kernels"] == [] and sections["compiled_ms"] is None
    assert built.svgs == 4 and "not compiled" in built.html
    assert any(layer["macs"][1] < layer["macs"][0] for layer in sections["layers"])


def test_int8_with_calibration():
    graph = go.zoo.lenet5()
    batches = [probe_inputs(graph, seed) for seed in range(2)]
    built = go.report(graph, quantize="int8", calibration=batches, profile=False)
    assert "qlinear_conv2d" in built.html
    assert built.sections["compare"]["outputs"][0]["tolerance"] == 0.2


@pytest.mark.parametrize("options, message", [
    ({"quantize": "int4"}, "expected quantize to be float16, bfloat16 or int8"),
    ({"quantize": "int8"}, "quantize='int8' needs calibration"),
    ({"prune": 1.5}, "expected prune to be a ratio in (0, 1)"),
    ({"passes": "fold_bn"}, "no pass named 'fold_bn'"),
    ({"passes": "fold_pad", "quantize": "float16"}, "give passes or quantize, not both"),
])
def test_bad_requests(options, message):
    with pytest.raises(go.GraphoptError, match=re.escape(message)):
        go.report(go.zoo.lenet5(), profile=False, **options)


def test_bad_graph_and_command_line(tmp_path, capsys):
    with pytest.raises(go.OptionError, match="expected a graphopt Graph, found str"):
        go.report("lenet5")
    for argv, message in [
            (["report", "lenet5", "-o", str(tmp_path / "r.txt")], "ending in .html"),
            (["report", "lenet5", "-o", str(tmp_path / "r.html"), "--quantize", "int8"],
             "--quantize int8 needs --calib"),
            (["report", "no_such_net", "-o", str(tmp_path / "r.html")], "unknown model")]:
        assert cli.main(argv) == cli.EXIT_USAGE
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_missing_extra_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib fails
    with pytest.raises(MissingExtraError, match=re.escape("pip install graphopt[report]")):
        go.report(go.zoo.lenet5())
    assert cli.main(["report", "lenet5", "-o", str(tmp_path / "r.html")]) == cli.EXIT_USAGE
    assert "pip install graphopt[report]" in capsys.readouterr().err


def test_dot_is_found_or_named(monkeypatch):
    found = subprocess.run([dot_executable(), "-V"], capture_output=True, text=True)
    assert found.returncode == 0 and "graphviz" in (found.stdout + found.stderr).lower()
    from importlib import metadata
    from graphopt.report import extras

    def missing(name):
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(extras.metadata, "distribution", missing)
    monkeypatch.setattr(extras.shutil, "which", lambda name: None)
    with pytest.raises(MissingExtraError, match=re.escape("pip install graphopt[report]")):
        dot_executable()


def test_large_graphs_fold_by_block():
    graph = small_resnet()
    def boxes(dot: str) -> list[str]:
        return re.findall(r'^  "([^"]+)" \[label=', dot, re.M)

    assert len(boxes(to_dot(graph))) == len(graph.nodes) + 2     # and the input and output
    dot = to_dot(graph, max_nodes=20)    # blocks "layer1.0" ...: 8 of them and 7 other nodes
    assert len(boxes(dot)) == 8 + 7 + 2
    assert '"layer1.0" [label="layer1.0 (7 nodes)' in dot and "shape=box3d" in dot
    assert '"layer2.0" [label="layer2.0 (9 nodes)' in dot
    assert '"layer1.0" -> "layer1.1" [label="1x64x8x8"]' in dot


def test_changes_name_rewritten_nodes():
    graph = small_resnet()
    optimized = go.optimize(graph).graph
    changes = Changes.of(graph, optimized)
    assert "layer1.0.bn1" in changes.before and "maxpool" not in changes.before
    assert "layer1.0.relu1.fused" in changes.after and "maxpool" not in changes.after


def _chain(residual: bool):
    with dsl.Builder("chain") as b:
        x = b.input("input", (1, 1, 4, 4))
        a = dsl.relu(x)
        y = dsl.relu(a)
        return b.output(dsl.add(a, y) if residual else y)


@pytest.mark.parametrize("residual, peak", [
    (False, 2 * 64),    # input + first relu, then the two relus
    (True, 3 * 64),     # the first relu stays alive for the add: a, y and the sum
])
def test_peak_activation_bytes(residual, peak):
    assert peak_activation_bytes(_chain(residual)) == peak


CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "chrome")
# Appended to a copy of the page: writes each top-level SVG's rendered size where --dump-dom
# shows it (the page itself holds no script).
MEASURE = """<script>
document.body.setAttribute("data-svg-sizes", JSON.stringify(
  Array.from(document.querySelectorAll("svg")).filter(s => !s.parentElement.closest("svg"))
    .map(s => { const r = s.getBoundingClientRect(); return [r.width, r.height]; })));
</script>"""


def test_page_renders_in_headless_chromium(lenet, tmp_path):
    browser = next((shutil.which(name) for name in CHROMIUMS if shutil.which(name)), None)
    if browser is None:
        pytest.skip("no Chromium to render the page in (apt install chromium)")
    page = tmp_path / "measured.html"
    page.write_text(lenet[0].html.replace("</body>", MEASURE + "</body>"))
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    sizes = json.loads(re.search(r'data-svg-sizes="([^"]*)"', done.stdout).group(1)
                       .replace("&quot;", '"'))
    assert len(sizes) == 6
    assert all(width > 100 and height > 100 for width, height in sizes), sizes


def test_onnxruntime_refusal_is_a_reason_not_a_crash():
    from graphopt.report.profile import onnxruntime_times
    half = go.quantize(go.zoo.lenet5(), dtype="bfloat16").graph    # ORT has no bfloat16 Conv
    with pytest.raises(go.GraphoptError, match="ONNX Runtime cannot run graphopt's export"):
        onnxruntime_times(half, probe_inputs(half))


def test_kernels_on_flattened_planes_are_lined_up_with_their_nodes():
    """A pointwise conv's kernel reads and writes [N, C, H * W]: the profile still names its node
    (and so its MACs and GFLOP/s); a kernel of other shapes claims nothing."""
    from graphopt.report.profile import claim
    with dsl.Builder("flat_planes", seed=0) as b:
        x = b.input("x", (1, 64, 16, 16))
        graph = b.output(dsl.relu(dsl.conv2d(dsl.relu(dsl.conv2d(x, 32, 1)), 48, 3, padding=1)))
    nodes = [n for n in graph.topological_order() if n.op_name == "conv2d"]
    first, second = nodes
    assert claim(nodes, [(1, 64, 256), (32, 64, 1), (1, 32, 256)]) is first
    assert claim(nodes, [(1, 64, 256), (1, 32, 256)]) is None      # already claimed
    assert claim(nodes, [(1, 32, 16, 16), (1, 48, 16, 16)]) is second
