"""The ONNX backend node test cases for the ops graphopt imports, run through `load_onnx` and then
the reference interpreter or the compiled CPU model, compared at each case's tolerances.

The cases come from `onnx.backend.test.case.node.collect_testcases()` (regenerated offline from
the installed onnx package). Compiling costs about a second per graph, so the compiled path
merges every case of one op into one multi-output graph and compiles that once."""
from __future__ import annotations

import collections
import hashlib
import importlib
import os
import pickle
import pkgutil
import re
import warnings
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import onnx

from ..errors import GraphoptError, UnsupportedOpError
from ..files import atomic_open
from ..frontends.onnx_import import load_onnx
from ..frontends.onnx_load import first_line
from ..frontends.onnx_import import CONTROL_FLOW
from ..frontends.onnx_ops import ATTRIBUTE_INPUTS, TABLE
from ..ir import Graph

# Ops that are folded at import time rather than converted, but whose cases can still pass.
FOLDED_OPS = ("Constant", "Shape", "Size")


@dataclass
class Case:
    name: str
    op_type: str
    model: onnx.ModelProto
    inputs: dict
    expected: list
    rtol: float
    atol: float


@dataclass
class Outcome:
    case: str
    op_type: str
    status: str            # "passed", "skipped" or "failed"
    reason: str = ""


@dataclass
class Prepared:
    case: Case
    graph: Graph
    feeds: dict = field(default_factory=dict)


def supported_op_types() -> list[str]:
    return sorted({*TABLE, *FOLDED_OPS, *CONTROL_FLOW})


def collect_cases(op_types: Iterable[str] | None = None,
                  cache_dir: str | os.PathLike | None = None) -> list[Case]:
    """Single-node cases (one per data set) whose op graphopt imports. Generating them takes
    ~15 s (the pool modules build large 3-D cases), so with `cache_dir` they are pickled there
    once per onnx version and read back afterwards."""
    wanted = sorted(op_types or supported_op_types())
    if cache_dir is None:
        return generate_cases(wanted)
    key = hashlib.sha1(" ".join([onnx.__version__, *wanted]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"onnx-node-cases-{key}.pkl"
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        pass
    cases = generate_cases(wanted)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:   # a concurrent reader sees all or nothing
        pickle.dump(cases, f)
    return cases


def generate_cases(wanted: list[str]) -> list[Case]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        testcases = node_testcases(set(wanted))
    cases = []
    for tc in testcases:
        nodes = tc.model.graph.node
        if len(nodes) != 1 or nodes[0].op_type not in wanted:
            continue
        for k, (inputs, outputs) in enumerate(tc.data_sets or []):
            names = [v.name for v in tc.model.graph.input]
            suffix = f"[{k}]" if len(tc.data_sets) > 1 else ""
            cases.append(Case(tc.name + suffix, nodes[0].op_type, tc.model,
                              dict(zip(names, inputs)), list(outputs), tc.rtol, tc.atol))
    return cases


def node_testcases(op_types: set[str]) -> list:
    """The generated node test cases of `op_types`. `collect_testcases()` builds all ~1,900
    cases (tens of seconds); each op's cases are built when its module is imported, so importing
    just our ops' modules gives the same cases in a fraction of the time."""
    import onnx.backend.test.case.node as node_cases
    available = {m.name for m in pkgutil.iter_modules(node_cases.__path__)}
    modules = {MODULE_NAMES.get(op, op.lower()) for op in op_types}
    if not modules <= available or not hasattr(node_cases, "_NodeTestCases"):
        return node_cases.collect_testcases()
    for module in sorted(modules):
        importlib.import_module(f"{node_cases.__name__}.{module}")
    return list(node_cases._NodeTestCases)


MODULE_NAMES = {"BatchNormalization": "batch_normalization"}


class Skip(Exception):
    pass


def prepare(case: Case) -> Prepared:
    """Import the case, with its attribute-like inputs bound as constants; Skip with the reason
    for forms graphopt does not support."""
    node = case.model.graph.node[0]
    bound = {node.input[i] for i in ATTRIBUTE_INPUTS.get(case.op_type, ())
             if i < len(node.input) and node.input[i]}
    inputs = {name: tensor(value) for name, value in case.inputs.items()}
    for name, value in inputs.items():
        if not isinstance(value, (np.ndarray, np.generic)):
            raise Skip(f"input '{name}' is a {type(value).__name__}, not a tensor")
    try:
        graph = load_onnx(case.model,
                          constant_inputs={n: np.asarray(inputs[n]) for n in bound})
    except UnsupportedOpError as e:   # keep only the op's part of the model-wide message
        raise Skip(re.sub(r"^model '.*?' uses \d+ unsupported .*?: ", "", e.detail)) from None
    feeds = {n: np.asarray(v) for n, v in inputs.items() if n not in bound}
    return Prepared(case, graph, feeds)


def tensor(value):
    """A case's input or output as numpy has it: Cast's cases hold theirs as TensorProtos
    (for the dtypes numpy lacks, bfloat16 from ml_dtypes)."""
    return onnx.numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value


def compare(case: Case, results: dict) -> str:
    """'' when every output matches, else what differs, and whether onnxruntime computes what
    graphopt does (where it does, the case's expected output disagrees with both)."""
    problem = _differs(case, results, case.expected)
    if problem:
        peer = onnxruntime_outputs(case)
        if peer is not None and not _differs(case, results, peer):
            problem += "; onnxruntime computes the same as graphopt"
    return problem


def _differs(case: Case, results: dict, expected_outputs: list) -> str:
    names = [v.name for v in case.model.graph.output]
    for name, expected in zip(names, expected_outputs):
        found = results.get(name)
        if found is None:
            return f"output '{name}' missing"
        expected = np.asarray(tensor(expected))
        if found.shape != expected.shape:
            return f"output '{name}': shape {found.shape}, expected {expected.shape}"
        if found.dtype != expected.dtype:
            return f"output '{name}': dtype {found.dtype}, expected {expected.dtype}"
        if found.dtype == "bfloat16":   # numpy's closeness tests know no bfloat16
            found, expected = found.astype(np.float32), expected.astype(np.float32)
        try:
            np.testing.assert_allclose(found, expected, rtol=case.rtol, atol=case.atol)
        except AssertionError as e:
            detail = [line for line in str(e).splitlines() if "Max" in line]
            return f"output '{name}' differs: {'; '.join(detail)}"
    return ""


def onnxruntime_outputs(case: Case) -> list | None:
    """The case's outputs as onnxruntime computes them, or None where it cannot run the case."""
    import onnxruntime as ort
    try:
        session = ort.InferenceSession(case.model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        feeds = {name: np.asarray(tensor(value)) for name, value in case.inputs.items()}
        return session.run(None, feeds)
    except Exception:   # noqa: BLE001 - any failure of the peer only means no second opinion
        return None


def run_interpreter(cases: list[Case]) -> list[Outcome]:
    from ..targets.reference import interpret
    outcomes = []
    for case in cases:
        outcomes.append(_run_one(case, lambda p: interpret(p.graph, p.feeds)))
    return outcomes


def _run_one(case: Case, execute: Callable[[Prepared], dict]) -> Outcome:
    try:
        prepared = prepare(case)
    except Skip as e:
        return Outcome(case.name, case.op_type, "skipped", str(e))
    except GraphoptError as e:
        return Outcome(case.name, case.op_type, "failed", f"import: {e}")
    try:
        problem = compare(case, execute(prepared))
    except Exception as e:   # the report must name the case, whatever went wrong
        problem = f"{type(e).__name__}: {first_line(e)}"
    return Outcome(case.name, case.op_type, "failed" if problem else "passed", problem)


def merge(prepared: list[Prepared]) -> Graph:
    """One graph computing every case side by side; names are prefixed with the case index."""
    merged = Graph("conformance")
    for i, p in enumerate(prepared):
        mapping = {}
        for v in p.graph.inputs:
            mapping[id(v)] = merged.add_input(f"c{i}.{v.name}", v.type)
        for v in p.graph.constants.values():
            mapping[id(v)] = merged.add_constant(f"c{i}.{v.name}", v.data)
        for node in p.graph.topological_order():
            new = merged.add_node(node.op, [mapping[id(v)] for v in node.inputs],
                                  name=f"c{i}.{node.name}",
                                  output_names=[f"c{i}.{o.name}" for o in node.outputs])
            mapping.update({id(o): n for o, n in zip(node.outputs, new.outputs)})
        outputs = [mapping[id(v)] for v in p.graph.outputs]
        merged.set_outputs(merged.outputs + outputs)
    return merged


def run_compiled(cases: list[Case], target: str = "cpu", per_op: bool = False) -> list[Outcome]:
    """Compile every supported case as one merged graph (or one graph per op with `per_op`).
    A merged graph that fails to compile or run is split, by op and then case by case, so that a
    failure is pinned on the right case."""
    outcomes: dict[str, Outcome] = {}
    ready: list[Prepared] = []
    for case in cases:
        try:
            ready.append(prepare(case))
        except Skip as e:
            outcomes[case.name] = Outcome(case.name, case.op_type, "skipped", str(e))
        except GraphoptError as e:
            outcomes[case.name] = Outcome(case.name, case.op_type, "failed", f"import: {e}")
    groups = by_op(ready) if per_op else [ready]
    for group in groups:
        _compile_group(group, target, outcomes, split_by_op=not per_op)
    return [outcomes[c.name] for c in cases]


def by_op(prepared: list[Prepared]) -> list[list[Prepared]]:
    groups: dict[str, list[Prepared]] = collections.defaultdict(list)
    for p in prepared:
        groups[p.case.op_type].append(p)
    return list(groups.values())


def _compile_group(group: list[Prepared], target: str, outcomes: dict, split_by_op: bool) -> None:
    from ..targets.tvm import compile_graph
    if not group:
        return
    try:
        model = compile_graph(merge(group), target)
        feeds = {f"c{i}.{n}": a for i, p in enumerate(group) for n, a in p.feeds.items()}
        results = model.run(feeds)
    except Exception:
        if split_by_op and len(by_op(group)) > 1:
            for sub in by_op(group):
                _compile_group(sub, target, outcomes, split_by_op=False)
        else:
            for p in group:
                outcomes[p.case.name] = _run_one(
                    p.case, lambda q: compile_graph(q.graph, target).run(q.feeds))
        return
    for i, p in enumerate(group):
        mine = {n[len(f"c{i}."):]: a for n, a in results.items() if n.startswith(f"c{i}.")}
        problem = compare(p.case, mine)
        outcomes[p.case.name] = Outcome(p.case.name, p.case.op_type,
                                        "failed" if problem else "passed", problem)


def summarize(outcomes: list[Outcome]) -> dict[str, collections.Counter]:
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for o in outcomes:
        table[o.op_type][o.status] += 1
    return dict(sorted(table.items()))
