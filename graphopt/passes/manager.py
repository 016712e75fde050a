"""The pass framework: a pass is a function `Graph -> PassResult(graph, changed, stats)` that
leaves its input untouched; `PassManager` runs a list of them (to a fixed point when asked),
verifies the graph after every pass and, with `check=True`, compares it on a probe input with the
graph before the pass, raising `PassError` naming the pass, the node and the size of the error.
Passes run in a `Sandbox`: they cannot change the caller's graph, and one that changes its input
in place, raises, or returns something other than a PassResult fails with a PassError naming it."""
from __future__ import annotations

import functools
import re
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..analysis import _human, count_macs, count_params
from ..errors import GraphoptError, OptionError, PassError, VerifyError
from ..ir import Graph
from ..signature import probe_inputs
from ..table import format_table
from ..verify import verify


@dataclass
class PassResult:
    graph: Graph
    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)


Pass = Callable[[Graph], PassResult]
PASSES: dict[str, Pass] = {}


def register_pass(fn: Pass) -> Pass:
    """Decorator: register a pass under its function name."""
    if fn.__name__ in PASSES:
        raise ValueError(f"pass '{fn.__name__}' registered twice")
    PASSES[fn.__name__] = fn
    return fn


def pass_list(passes: str | Pass | Sequence[str | Pass]) -> list[str | Pass]:
    """`passes` as a list: a str is read as comma-separated pass names, as the CLI's --passes
    ("fold_pad" or "fold_pad,fold_batch_norm"), and a single pass function stands for itself."""
    if isinstance(passes, str):
        return [name.strip() for name in passes.split(",") if name.strip()]
    if callable(passes):
        return [passes]
    if not isinstance(passes, Sequence):
        raise OptionError(f"expected passes as a list of pass names or functions, or a "
                          f"comma-separated str; found {type(passes).__name__} {passes!r}")
    return list(passes)


def resolve(passes: str | Pass | Sequence[str | Pass]) -> list[tuple[str, Pass]]:
    """(name, function) for pass names from the registry or pass functions."""
    resolved = []
    for p in pass_list(passes):
        if callable(p):
            resolved.append((getattr(p, "__name__", repr(p)), p))
        elif isinstance(p, str) and p in PASSES:
            resolved.append((p, PASSES[p]))
        elif isinstance(p, str):
            guess = suggest_pass(p)
            raise OptionError(f"no pass named {p!r}; "
                              + (f"did you mean {guess!r}? " if guess else "")
                              + f"known passes: {', '.join(sorted(PASSES))}")
        else:
            raise OptionError(f"expected a pass name or a function Graph -> PassResult, found "
                              f"{type(p).__name__} {p!r}")
    return resolved


def suggest_pass(name: str) -> str | None:
    """The registered pass a mistyped `name` most likely means: one whose words `name`'s words
    cover, each word being a whole word, its prefix ('const'), words run together ('batchnorm')
    or their initials ('bn' for batch_norm; 'dce' and 'cse' read the verb last, as in "dead code
    elimination"); else the closest spelling (difflib)."""
    import difflib
    words = [w for w in re.split(r"[_\-\s]+", name.lower()) if w]
    best, best_skipped = None, None
    for candidate in sorted(PASSES):
        tokens = candidate.split("_")
        for order in (tokens, tokens[1:] + tokens[:1]):
            skipped = _words_cover(words, order)
            if skipped is not None and (best_skipped is None or skipped < best_skipped):
                best, best_skipped = candidate, skipped
    if best is not None:
        return best
    close = difflib.get_close_matches(name, PASSES, n=1, cutoff=0.75)
    return close[0] if close else None


def _words_cover(words: list[str], tokens: list[str]) -> int | None:
    """How many of `tokens` go unmatched when each of `words`, in order, matches a run of
    consecutive tokens (see `suggest_pass`); None when some word matches nothing."""
    if not words:
        return len(tokens)
    word, best = words[0], None
    for start in range(len(tokens)):
        for end in range(start + 1, len(tokens) + 1):
            run = tokens[start:end]
            if not (word == "".join(run) or word == "".join(t[0] for t in run) and end - start > 1
                    or end - start == 1 and len(word) >= 3 and run[0].startswith(word)):
                continue
            rest = _words_cover(words[1:], tokens[end:])
            if rest is not None and (best is None or start + rest < best):
                best = start + rest
    return best


class Sandbox:
    """Runs passes so that none can change the graph it is given. The caller's graph is copied
    (`graph`) with its constants seen through read-only buffers (no flag can make them
    writeable), and every pass's input has its constants made read-only, so a write into one
    raises inside the pass; the input's fingerprint before and after the pass catches the rest.
    `result(graph)` hands the final graph back holding the caller's arrays again."""

    def __init__(self, original: Graph):
        self.graph = original.copy()
        # id of a read-only buffer's owner -> (that owner, the caller's array, the array read)
        self._shadows: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._frozen: list[np.ndarray] = []      # arrays the passes built, made read-only here
        # The last graph checked and its fingerprint: a pass that returns its input unchanged
        # hands the next pass a graph whose fingerprint was just taken.
        self._checked: tuple[Graph | None, tuple] = (None, ())
        for value in self.graph.constants.values():
            data = value.data
            source = data if data.flags.c_contiguous else data.copy()
            # Bytes: a memoryview cannot carry every dtype (bfloat16's, from ml_dtypes).
            raw = memoryview(source.reshape(-1).view(np.uint8)).toreadonly()
            shadow = np.frombuffer(raw, data.dtype)
            self._shadows[id(shadow)] = (shadow, data, source)
            value.data = shadow.reshape(data.shape)

    def run(self, name: str, fn: Pass, graph: Graph) -> tuple[PassResult, float]:
        """`fn(graph)` and the seconds it took; a PassError naming the pass if it fails, changes
        `graph` or returns something other than a PassResult."""
        for value in graph.constants.values():
            if value.data.flags.writeable:
                value.data.flags.writeable = False
                self._frozen.append(value.data)
        checked, known = self._checked
        before = known if checked is graph else fingerprint(graph)
        start = time.perf_counter()
        try:
            result = fn(graph)
        except Exception as e:
            if isinstance(e, ValueError) and ("read-only" in str(e) or "WRITEABLE" in str(e)):
                raise PassError(f"pass '{name}' modified its input graph in place (it wrote into "
                                f"a constant: {e}); return a new graph in PassResult") from e
            detail = e.detail if isinstance(e, GraphoptError) else f"{type(e).__name__}: {e}"
            raise PassError(f"pass '{name}' failed: {detail}", node=getattr(e, "node", None),
                            op=getattr(e, "op", None)) from e
        seconds = time.perf_counter() - start
        self._checked = (graph, fingerprint(graph))
        if self._checked[1] != before:
            raise PassError(f"pass '{name}' modified its input graph in place; return a new graph "
                            f"in PassResult")
        if not isinstance(result, PassResult) or not isinstance(result.graph, Graph):
            found = f"a PassResult holding {type(result.graph).__name__}" \
                if isinstance(result, PassResult) else type(result).__name__
            raise PassError(f"pass '{name}' returned {found}; expected PassResult(graph, "
                            f"changed, stats) with a new Graph, or its input if nothing changed")
        return result, seconds

    def result(self, graph: Graph, original: Graph) -> Graph:
        """`graph` (built by the passes) holding the caller's arrays (or views of them) where
        it holds read-only views of them, and the arrays made read-only here writeable again;
        `original` itself if no pass built a new graph."""
        self.restore()
        if graph is self.graph:
            return original
        frozen = {id(_owner(a)) for a in self._frozen}
        for value in graph.constants.values():
            data, owner = value.data, _owner(value.data)
            if id(owner) in self._shadows:
                value.data = _rebase(data, *self._shadows[id(owner)])
            elif not data.flags.writeable and id(owner) in frozen:
                data.flags.writeable = True     # a view a pass took of an array frozen here
        return graph

    def restore(self) -> None:
        """Make the arrays frozen here writeable again, owners before their views."""
        for array in sorted(self._frozen, key=lambda a: a.base is not None):
            array.flags.writeable = True


def _owner(array: np.ndarray) -> np.ndarray:
    """The array whose memory `array` views (numpy points every view at it), or `array`."""
    return array.base if isinstance(array.base, np.ndarray) else array


def _rebase(view: np.ndarray, shadow: np.ndarray, caller: np.ndarray,
            source: np.ndarray) -> np.ndarray:
    """The elements `view` (a view of `shadow`) shows, as the caller's array or a view of it."""
    offset = view.__array_interface__["data"][0] - shadow.__array_interface__["data"][0]
    if source is caller and offset == 0 and (view.shape, view.strides, view.dtype) == \
            (caller.shape, caller.strides, caller.dtype):
        return caller
    return np.ndarray(view.shape, view.dtype, buffer=source.reshape(-1).view(np.uint8),
                      offset=offset, strides=view.strides)


def fingerprint(graph: Graph) -> tuple:
    """What a pass must not change in its input: names, types, ops (with their attributes: ops
    are frozen), wiring, provenance, and each constant's array and a digest of a sample of it."""
    return (graph.name, tuple((v.name, v.type) for v in graph.inputs),
            tuple(v.name for v in graph.outputs),
            tuple((key, v.name, v.type, id(v.data), sample_digest(v.data))
                  for key, v in graph.constants.items()),
            tuple((n.name, id(n.op), tuple(v.name for v in n.inputs),
                   tuple((o.name, o.type) for o in n.outputs), n.provenance)
                  for n in graph.nodes))


def sample_digest(array: np.ndarray, size: int = 256) -> int:
    """crc32 of at most `size` evenly spaced elements: cheap on any array, and it sees a write
    that bypasses the read-only flag to any slice larger than the sampling step."""
    flat = array.reshape(-1) if array.flags.c_contiguous else array.flat     # neither copies it
    return zlib.crc32(flat[::max(1, array.size // size)].tobytes())


@dataclass
class PassRecord:
    """What one run of one pass did."""

    name: str
    round: int
    changed: bool
    nodes: tuple[int, int]
    params: tuple[int, int]
    macs: tuple[int, int]
    seconds: float
    max_error: float | None      # max relative output error vs the graph before (check=True)
    stats: dict[str, Any]

    def to_dict(self) -> dict:
        """The stable JSON form (docs/json.md); `stats` keeps its plain numbers and rewrites."""
        stats = {k: v for k, v in self.stats.items()
                 if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        return {"name": self.name, "round": self.round, "changed": self.changed,
                "nodes": list(self.nodes), "params": list(self.params), "macs": list(self.macs),
                "seconds": self.seconds, "max_error": self.max_error,
                "rewrites": dict(self.stats.get("rewrites", {})), "stats": stats}

    def row(self) -> tuple[str, ...]:
        rewrites = self.stats.get("rewrites", {})
        detail = ", ".join(f"{k} x{v}" for k, v in rewrites.items()) or \
            ", ".join(f"{k} {v}" for k, v in self.stats.items()
                      if isinstance(v, int) and not isinstance(v, bool) and v)
        err = "-" if self.max_error is None else f"{self.max_error:.2g}"
        return (self.name, str(self.round), "yes" if self.changed else "no",
                f"{self.nodes[0]} -> {self.nodes[1]}", f"{_human(self.params[0])} -> "
                f"{_human(self.params[1])}", f"{_human(self.macs[0])} -> {_human(self.macs[1])}",
                f"{self.seconds * 1e3:.0f} ms", err, detail)


@dataclass
class OptimizeResult:
    graph: Graph
    original: Graph
    records: list[PassRecord]

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.records)

    @property
    def report(self) -> str:
        head = ("pass", "round", "changed", "nodes", "params", "MACs", "time", "max err",
                "rewrites")
        # A last round that changed nothing only confirms the fixed point: one line for it.
        last = max((r.round for r in self.records), default=0)
        confirming = last > 1 and not any(r.changed for r in self.records if r.round == last)
        shown = [r for r in self.records if not (confirming and r.round == last)]
        lines = [f"optimize '{self.original.name}': {len(self.original.nodes)} -> "
                 f"{len(self.graph.nodes)} nodes",
                 format_table([r.row() for r in shown], head)]
        if confirming:
            seconds = sum(r.seconds for r in self.records if r.round == last)
            lines.append(f"round {last}: no pass changed the graph (fixed point; "
                         f"{seconds * 1e3:.0f} ms)")
        misses = self.misses()
        if misses:
            lines.append("rules that did not apply (rule: reason, count):")
            lines += [f"  {rule}: {reason} (x{count})" for (rule, reason), count in misses[:12]]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The stable JSON form (docs/json.md): the graph's name, nodes before and after,
        one entry per pass run and the last round's misses."""
        return {"graph": self.original.name,
                "nodes": [len(self.original.nodes), len(self.graph.nodes)],
                "params": [count_params(self.original), count_params(self.graph)],
                "macs": [count_macs(self.original), count_macs(self.graph)],
                "passes": [r.to_dict() for r in self.records],
                "misses": [{"rule": rule, "reason": reason, "count": count}
                           for (rule, reason), count in self.misses()]}

    def misses(self) -> list[tuple[tuple[str, str], int]]:
        """(rule, reason) pairs of the last round's misses, most frequent first. Reasons naming
        a value are grouped by their wording after the value name."""
        last = max((r.round for r in self.records), default=0)
        counts: dict[tuple[str, str], int] = {}
        for record in self.records:
            if record.round != last:
                continue
            for rule, misses in record.stats.get("misses", {}).items():
                for _, reason in misses:
                    key = (rule, _generic(reason))
                    counts[key] = counts.get(key, 0) + 1
        return sorted(counts.items(), key=lambda kv: -kv[1])

    def __str__(self) -> str:
        return self.report


def _generic(reason: str) -> str:
    """'%layer1.conv (conv2d) has 2 uses...' -> '%... (conv2d) has 2 uses...'."""
    words = reason.split(" ")
    return " ".join("%..." if w.startswith("%") else w for w in words)


class PassManager:
    """Runs passes in order, in a `Sandbox`; `fixed_point=True` repeats the list until no pass
    changes the graph (at most `max_rounds` times). After every pass the graph is verified; with
    `check=True` it is interpreted (float64) on `inputs` (default: `probe_inputs`) and compared
    with the graph before the pass, output by output, within the tolerance of each output's
    dtype (of the least precise float dtype either graph computes in, for a float output). `passes`: names or pass functions, or one str of comma-separated names."""

    def __init__(self, passes: Sequence[str | Pass], *, check: bool = False,
                 fixed_point: bool = False, max_rounds: int = 4,
                 inputs: Mapping[str, np.ndarray] | None = None,
                 tolerance: float | None = None):
        self.passes = resolve(passes)
        self.check, self.fixed_point, self.max_rounds = check, fixed_point, max_rounds
        self.inputs, self.tolerance = inputs, tolerance

    def run(self, graph: Graph) -> OptimizeResult:
        verify(graph)
        inputs = None
        expected = None
        if self.check:
            inputs = dict(self.inputs) if self.inputs is not None else probe_inputs(graph)
            expected = _interpret64(graph, inputs)
        records: list[PassRecord] = []
        # (params, MACs) counted once per graph object: most passes return their input
        # unchanged, and each record counts the graph before and after (DenseNet-121's 32 pass
        # runs counted 64 graphs, 0.12 s under a profiler, of which 7 were different)
        sizes = functools.lru_cache(maxsize=1)(lambda g: (count_params(g), count_macs(g)))
        sandbox = Sandbox(graph)
        current = sandbox.graph
        try:
            for round_ in range(1, (self.max_rounds if self.fixed_point else 1) + 1):
                changed_this_round = False
                for name, fn in self.passes:
                    before = current
                    result, seconds = sandbox.run(name, fn, before)
                    after = result.graph
                    error = None     # a pass returning its input unchanged needs no checking
                    if result.changed or after is not before:
                        _verify_after(name, after)
                        if self.check:
                            found = _interpret64(after, inputs)
                            error = self._check(name, before, after, inputs, expected, found)
                            expected = found
                    (params_before, macs_before), (params, macs) = sizes(before), sizes(after)
                    records.append(PassRecord(
                        name, round_, result.changed, (len(before.nodes), len(after.nodes)),
                        (params_before, params), (macs_before, macs), seconds, error,
                        result.stats))
                    changed_this_round |= result.changed
                    current = after
                if not changed_this_round:
                    break
        except BaseException:
            sandbox.restore()
            raise
        return OptimizeResult(sandbox.result(current, graph), graph, records)

    def _check(self, name: str, before: Graph, after: Graph, inputs, expected, found) -> float:
        from ..compare import compare_arrays, steps_for, tolerance_for
        worst, failures = 0.0, []
        for value in before.outputs:
            if value.name not in found:
                raise PassError(f"pass '{name}' lost graph output '{value.name}'")
            # By default each output's dtype's, or the least precise float dtype computed.
            tol = self.tolerance if self.tolerance is not None else \
                tolerance_for(value.dtype, before, after)
            steps = 0 if self.tolerance is not None else steps_for(value.dtype, before, after)
            c = compare_arrays(value.name, expected[value.name], found[value.name], tol, steps)
            worst = max(worst, c.max_rel)
            if not c.ok:
                failures.append(c)
        if failures:
            raise _divergence_error(name, before, after, inputs, failures[0], self.tolerance)
        return worst


def _verify_after(name: str, graph: Graph) -> None:
    try:
        verify(graph)
    except VerifyError as e:
        raise PassError(f"pass '{name}' produced an invalid graph: {e.detail}", node=e.node,
                        op=e.op) from e


def _interpret64(graph: Graph, inputs) -> dict[str, np.ndarray]:
    from ..targets.reference import interpret
    try:
        return interpret(graph, inputs, dtype=np.float64)
    except GraphoptError as e:
        raise PassError(f"the interpreter fails on the graph: {e}", node=e.node, op=e.op) from e


def _divergence_error(name: str, before: Graph, after: Graph, inputs, worst,
                      tolerance) -> PassError:
    """A PassError naming the first node of `after` (in `before`'s order) that diverges."""
    from ..compare import compare
    report = compare(before, after, inputs, per_layer=True, tolerance=tolerance)
    layer = next((lc for lc in report.layers or () if not lc.ok), None)
    where = "" if layer is None else \
        f"; first divergent layer '{layer.name}' (max rel {layer.max_rel:.3g})"
    return PassError(f"pass '{name}' changed the result: output '{worst.name}' differs by "
                     f"{worst.max_abs:.3g} (relative {worst.max_rel:.3g}, tolerance "
                     f"{worst.tolerance:.0e}){where}",
                     node=None if layer is None else layer.node,
                     op=None if layer is None else layer.op)
