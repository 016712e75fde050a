"""ONNX backend node test cases (regenerated offline from the onnx package) for every op graphopt
imports, run through load_onnx and then the interpreter, and the compiled CPU model (all
cases merged into one graph, compiled once). Unsupported forms are skipped with their reason; the
per-op counts are written to docs/onnx-conformance.md by tools/onnx_conformance.py."""
from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest

from graphopt.tools import onnx_conformance as conformance

OPS = conformance.supported_op_types()
ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "onnx-conformance.md"

# Cases allowed to fail, with the cause. TVM's resize2d computes the source coordinate
# (x + 0.5) * in / out - 0.5 in float32; at an exact .5 (where round_prefer_floor decides) the
# result depends on how the CPU pipeline fuses and simplifies that arithmetic, so this case passes
# or fails with the pipeline's version.
# MaxUnpool with an output_shape other than the one the geometry gives: graphopt reads the indices
# as flat positions in output_shape, as onnxruntime and torch do (and as MaxPool's indices of the
# same tensor are); onnx.reference, which made the case's expected output, reads them in the
# geometry's shape and pads the result.
UNPOOL_OUTPUT_SHAPE = "test_maxunpool_export_with_output_shape"
MAY_FAIL = {
    "compiled": {"test_resize_upsample_sizes_nearest_not_larger", UNPOOL_OUTPUT_SHAPE},
    "interpreter": {UNPOOL_OUTPUT_SHAPE},
}


# Ops whose every node case is a form outside what graphopt maps them to (so all are skipped).
# A sequence op's single-node case (where onnx has one) reads or writes a sequence as a graph
# input or output; graphopt's are tensors (its sequences live inside the graph:
# test_onnx_control_flow.py).
NO_APPLICABLE_CASE: dict[str, str] = dict.fromkeys(
    ("ConcatFromSequence", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
     "SequenceInsert", "SequenceLength", "SplitToSequence"),
    "a sequence as a graph input or output")


@functools.lru_cache(maxsize=None)
def cases_by_op():
    grouped = {op: [] for op in OPS}
    for case in conformance.collect_cases(cache_dir=ROOT / ".cache"):
        grouped[case.op_type].append(case)
    return grouped


def check(outcomes, path):
    failed = {o.case: o.reason for o in outcomes if o.status == "failed"}
    unexpected = {name: reason for name, reason in failed.items() if name not in MAY_FAIL[path]}
    assert not unexpected, f"{len(unexpected)} failing cases: {unexpected}"
    for o in outcomes:
        if o.status == "skipped":
            assert o.reason, f"{o.case} skipped without a reason"


@pytest.mark.parametrize("op", OPS)
def test_interpreter(op):
    cases = cases_by_op()[op]
    assert cases or op in NO_APPLICABLE_CASE, f"no conformance case for {op}"
    outcomes = conformance.run_interpreter(cases)
    check(outcomes, "interpreter")
    if op in NO_APPLICABLE_CASE:
        assert all(o.status == "skipped" for o in outcomes)
    else:
        assert any(o.status == "passed" for o in outcomes), f"no {op} case passes"


def test_compiled_cpu():
    """All cases compiled as one merged graph: one TVM compile for the whole suite (and one test,
    so that parallel workers do not each compile it)."""
    outcomes = conformance.run_compiled([c for cases in cases_by_op().values() for c in cases])
    check(outcomes, "compiled")
    passing = {o.op_type for o in outcomes if o.status == "passed"}
    assert set(OPS) - set(NO_APPLICABLE_CASE) <= passing, \
        f"ops with no passing compiled case: {sorted(set(OPS) - set(NO_APPLICABLE_CASE) - passing)}"


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
def test_compiled_cpu_one_graph_per_op(op):
    outcomes = conformance.run_compiled(cases_by_op()[op], per_op=True)
    check(outcomes, "compiled")


def test_a_failure_says_whether_onnxruntime_computes_the_same():
    """MaxUnpool's case fails against onnx.reference's expected output; onnxruntime computes what
    graphopt does, and the reason says so. A wrong result onnxruntime does not share gets no
    such note."""
    case = next(c for c in cases_by_op()["MaxUnpool"] if c.name == UNPOOL_OUTPUT_SHAPE)
    outcome, = conformance.run_interpreter([case])
    assert outcome.status == "failed"
    assert outcome.reason.endswith("onnxruntime computes the same as graphopt"), outcome.reason
    case = next(c for c in cases_by_op()["Add"] if conformance.onnxruntime_outputs(c))
    wrong = {case.model.graph.output[0].name:
             np.asarray(conformance.tensor(case.expected[0])) + 1}
    problem = conformance.compare(case, wrong)
    assert "differs" in problem and "onnxruntime" not in problem


def test_skips_are_forms_we_do_not_support():
    """Every skip is an unsupported dtype, rank, mode or training form, never an import bug."""
    reasons = [o.reason for o in conformance.run_interpreter(
        [c for cases in cases_by_op().values() for c in cases]) if o.status == "skipped"]
    assert reasons
    allowed = re.compile(r"dtype (u?int16|uint32|uint64|u?int[24]\b|float[48]_)|3-D input|"
                         r"3-D window|training|mask|Indices|"
                         r"mode '(edge|reflect|wrap|cubic)'|tf_crop_and_resize|"
                         r"half_pixel_symmetric|differs from the output/input size ratio|"
                         r"antialias|not a tensor|dtype bool|dtype object|int(32|64) base|"
                         r"reducing the empty axes|is a list, not a tensor|is a sequence|"
                         r"a sequence \(output \d+\) chosen at run time|Optional: |"
                         r"opset 8's batched form")
    assert all(allowed.search(r) for r in reasons), [r for r in reasons if not allowed.search(r)]


def test_doc_matches_the_interpreter_counts():
    text = DOC.read_text()
    counts = conformance.summarize(conformance.run_interpreter(
        [c for cases in cases_by_op().values() for c in cases]))
    for op, counter in counts.items():
        row = re.search(rf"^\| {op} \| (\d+) \| (\d+) \| (\d+) \|", text, re.M)
        assert row, f"docs/onnx-conformance.md has no row for {op}; rerun tools/onnx_conformance.py"
        assert tuple(int(v) for v in row.groups()) == (
            counter["passed"], counter["skipped"], counter["failed"]), op
