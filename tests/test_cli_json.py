"""`--json` on show, compare, bench and optimize: one JSON object on stdout whose keys are exactly
the ones docs/json.md lists, object by object (a key added to the output without its line in the
documentation, or documented and gone, fails here)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import graphopt as go
from graphopt import cli

DOC = Path(__file__).resolve().parent.parent / "docs" / "json.md"


def documented() -> dict[str, set[str]]:
    """{object name: its keys} from the doc's "### name" sections and their tables."""
    sections: dict[str, set[str]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        if line.startswith("### "):
            current = line[4:].strip()
            sections[current] = set()
        elif current and (m := re.match(r"\| `([a-z_]+)` \|", line)):
            sections[current].add(m.group(1))
    sections["layer comparison"] |= sections["comparison"]
    return sections


DOCUMENTED = documented()


def run_json(argv, capsys) -> tuple[int, dict]:
    code = cli.main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def keys(obj: dict, name: str, optional: set[str] = frozenset()) -> None:
    expected = DOCUMENTED[name]
    found = set(obj)
    assert found <= expected, f"{name}: undocumented keys {sorted(found - expected)}"
    assert expected - optional <= found, f"{name}: missing {sorted(expected - optional - found)}"


def check_top(obj: dict, command: str) -> dict:
    assert obj["graphopt"] == go.__version__ and obj["command"] == command
    return {k: v for k, v in obj.items() if k not in DOCUMENTED["top"]}


def check_summary(summary: dict, target: bool = False) -> None:
    keys(summary, "summary")
    keys(summary["totals"], "totals")
    for tensor in summary["inputs"] + summary["outputs"]:
        keys(tensor, "tensor")
    for node in summary["nodes"]:
        keys(node, "node", set() if target else {"computed_as"})
        for tensor in node["outputs"]:
            keys(tensor, "tensor")


def check_optimize_result(result: dict) -> None:
    keys(result, "optimize result")
    for record in result["passes"]:
        keys(record, "pass")
    for miss in result["misses"]:
        keys(miss, "miss")


def test_show(capsys):
    code, obj = run_json(["show", "lenet5"], capsys)
    assert code == 0
    body = check_top(obj, "show")
    keys(body, "show", {"target", "optimize", "library"})
    check_summary(body["summary"])
    assert body["summary"]["totals"]["params"] == go.zoo.lenet5().num_params()


def test_show_for_a_target(capsys):
    code, obj = run_json(["show", "resnet18", "--target", "cpu"], capsys)
    assert code == 0
    body = check_top(obj, "show")
    keys(body, "show", {"library"})
    check_summary(body["summary"], target=True)
    check_optimize_result(body["optimize"])
    assert any(n["computed_as"] for n in body["summary"]["nodes"])


def test_show_library(tmp_path, capsys):
    path = str(tmp_path / "lenet5.so")
    go.compile(go.zoo.lenet5(), "cpu").export(path)
    code, obj = run_json(["show", path], capsys)
    body = check_top(obj, "show")
    keys(body, "show", {"summary", "target", "optimize"})
    keys(body["library"], "library")
    assert body["library"]["inputs"] == [{"name": "input", "shape": [1, 1, 32, 32],
                                          "dtype": "float32"}]


def test_compare_per_layer(capsys):
    code, obj = run_json(["compare", "lenet5", "--per-layer"], capsys)
    assert code == 0
    body = check_top(obj, "compare")
    keys(body, "compare")
    keys(body["report"], "report")
    for o in body["report"]["outputs"]:
        keys(o, "comparison")
    for layer in body["report"]["layers"]:
        keys(layer, "layer comparison")
    assert body["report"]["ok"] and body["report"]["first_divergent"] is None


def test_compare_mismatch_exits_1(capsys):
    code, obj = run_json(["compare", "lenet5", "--tolerance", "1e-12"], capsys)
    assert code == 1
    report = check_top(obj, "compare")["report"]
    keys(report, "report", {"layers", "first_divergent"})
    assert not report["ok"] and not report["outputs"][0]["ok"]


def test_bench(capsys):
    code, obj = run_json(["bench", "lenet5", "--repeat", "3"], capsys)
    assert code == 0
    body = check_top(obj, "bench")
    keys(body, "bench")
    engines = {e["engine"]: e for e in body["engines"]}
    for e in engines.values():
        keys(e, "engine")
    assert engines["compiled"]["ratio_to_compiled"] == 1.0
    assert "onnxruntime" in engines and body["onnxruntime_skipped"] is None
    assert np.isfinite(engines["interpreter"]["median_ms"])


def test_optimize(capsys, tmp_path):
    code, obj = run_json(["optimize", "resnet18", "-o", str(tmp_path / "r.onnx")], capsys)
    assert code == 0
    body = check_top(obj, "optimize")
    keys(body, "optimize")
    check_optimize_result(body["result"])
    assert body["result"]["nodes"][1] < body["result"]["nodes"][0]
    assert any(p["rewrites"] for p in body["result"]["passes"])


def test_every_documented_object_is_checked():
    checked = {"top", "show", "summary", "tensor", "node", "totals", "library", "compare",
               "report", "comparison", "layer comparison", "bench", "engine", "optimize",
               "optimize result", "pass", "miss",
               # graphopt report's, checked in tests/test_report.py
               "html report", "before and after", "layer cost", "kernel", "onnxruntime node",
               "memory"}
    assert set(DOCUMENTED) == checked
