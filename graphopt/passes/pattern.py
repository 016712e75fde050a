"""Pattern rewriting: passes are tables of `Rule(name, pattern, rewrite, check)` applied to a
fixed point, in the manner of tinygrad's PatternMatcher and onnxscript's rewriter. A pattern or
check that fails says why; the reasons end up in the pass statistics and the optimize report.

    conv_bn = op("batch_norm", op("conv2d", name="conv"), const(), const(), const(), const(),
                 name="bn")
    Rule("conv+bn", conv_bn, rewrite=fold, check=weights_are_constant)

Only single-output nodes are matched. An inner node of a pattern must have no other user and
not be a graph output (the rewrite would otherwise have to keep it alive) unless it is `shared`.
"""
from __future__ import annotations

import collections
import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..errors import PassError
from ..ir import Graph, Node, Value
from .manager import PassResult


@dataclass(frozen=True)
class Pattern:
    """Matches a value. With `ops` the value must be produced by a node of one of those ops whose
    inputs match `inputs` (None: inputs are not looked at); without, any value (`constant`: only
    constants). `where(value)` may add a condition: it returns None or the reason it fails."""

    ops: tuple[str, ...] | None = None
    inputs: tuple["Pattern", ...] | None = None
    name: str | None = None
    constant: bool = False
    shared: bool = False
    commutative: bool = False
    where: Callable[[Value], str | None] | None = None


def op(ops: str | tuple[str, ...], *inputs: Pattern, name: str | None = None,
       shared: bool = False, commutative: bool = False,
       where: Callable[[Value], str | None] | None = None) -> Pattern:
    """A node of op `ops` (a name or a tuple of names) whose leading inputs match `inputs` (the
    rest, e.g. an optional bias, are not looked at; without `inputs` none are)."""
    return Pattern((ops,) if isinstance(ops, str) else tuple(ops), tuple(inputs) or None, name,
                   False, shared, commutative, where)


def any_value(name: str | None = None) -> Pattern:
    return Pattern(name=name)


def const(name: str | None = None) -> Pattern:
    return Pattern(name=name, constant=True)


class Match(dict):
    """Captured nodes (op patterns) and values (leaf patterns) by name; `root` is the matched
    node whose output the rewrite replaces, `nodes` every matched node, root first."""

    def __init__(self, root: Node):
        super().__init__()
        self.root, self.nodes = root, [root]


class Miss(Exception):
    """Why a pattern or a check does not apply. A miss on an op kind (`near=False`) is the
    ordinary case and is not reported; the others are near misses worth knowing about."""

    def __init__(self, reason: str, near: bool = True):
        super().__init__(reason)
        self.near = near


def use_count(graph: Graph, value: Value) -> int:
    """Uses of `value` as a node input (a node reading it twice counts twice) or graph output."""
    return sum(v is value for user in value.users for v in user.inputs) + \
        sum(v is value for v in graph.outputs)


def _match(graph: Graph, pattern: Pattern, value: Value, m: Match, inner: bool) -> None:
    what = f"%{value.name}"
    if pattern.ops is None:
        if pattern.constant and not value.is_constant:
            raise Miss(f"{what} is not a constant")
    else:
        node = value.producer
        if node is None:
            raise Miss(f"{what} is {'a constant' if value.is_constant else 'a graph input'}, "
                       f"expected the output of {'/'.join(pattern.ops)}", near=False)
        if node.op_name not in pattern.ops:
            raise Miss(f"{what} is produced by {node.op_name}, expected {'/'.join(pattern.ops)}",
                       near=False)
        if len(node.outputs) != 1:
            raise Miss(f"node '{node.name}' has {len(node.outputs)} outputs")
        if inner and not pattern.shared:
            uses = use_count(graph, value)
            if uses != 1:
                raise Miss(f"{what} ({node.op_name}) has {uses} uses; fusing would duplicate "
                           "or lose it" if uses > 1 else f"{what} is unused")
        if pattern.inputs is not None:
            _match_inputs(graph, pattern, node, m)
        if inner:
            m.nodes.append(node)
    if pattern.where is not None:
        reason = pattern.where(value)
        if reason:   # on the root it only narrows the kind of node: not a near miss
            raise Miss(reason, near=inner)
    if pattern.name is not None:
        m[pattern.name] = value.producer if pattern.ops is not None else value


def _match_inputs(graph: Graph, pattern: Pattern, node: Node, m: Match) -> None:
    if len(node.inputs) < len(pattern.inputs):
        raise Miss(f"node '{node.name}' has {len(node.inputs)} inputs, expected at least "
                   f"{len(pattern.inputs)}")
    orders = [pattern.inputs]
    if pattern.commutative:
        orders.append(pattern.inputs[::-1])
    first_miss = None
    for order in orders:
        saved, saved_nodes = dict(m), list(m.nodes)
        try:
            for sub, v in zip(order, node.inputs):
                _match(graph, sub, v, m, inner=True)
            return
        except Miss as miss:
            first_miss = first_miss or miss
            m.clear(), m.update(saved)
            m.nodes = saved_nodes
    raise first_miss


def match(graph: Graph, pattern: Pattern, node: Node) -> Match:
    """Match `pattern` rooted at `node`'s output; raises Miss with the reason on failure."""
    m = Match(node)
    _match(graph, pattern, node.outputs[0], m, inner=False)
    return m


@dataclass(frozen=True)
class Rule:
    """`rewrite(graph, match)` returns the value replacing the root's output; `check(graph,
    match)` returns None when the rewrite is valid, else the reason it is not."""

    name: str
    pattern: Pattern
    rewrite: Callable[[Graph, Match], Value]
    check: Callable[[Graph, Match], str | None] | None = None
    report_misses: bool = True    # False for rules whose root matches any node


# ---- the rewrite budget: lets `bisect` replay a pass up to its k-th rewrite --------------------
@dataclass
class RewriteLog:
    limit: int | None = None
    entries: list[tuple[str, str]] = field(default_factory=list)   # (rule, root node)

    def allow(self, rule: str, node: str) -> bool:
        if self.limit is not None and len(self.entries) >= self.limit:
            return False
        self.entries.append((rule, node))
        return True


_current_log: contextvars.ContextVar[RewriteLog | None] = contextvars.ContextVar(
    "graphopt_rewrite_log", default=None)


@contextlib.contextmanager
def rewrite_limit(limit: int | None) -> Iterator[RewriteLog]:
    """Within the block, passes stop after `limit` rewrites in total (None: no limit); the log
    lists every rewrite made, in order."""
    log = RewriteLog(limit)
    token = _current_log.set(log)
    try:
        yield log
    finally:
        _current_log.reset(token)


def allow_rewrite(rule: str, node: str) -> bool:
    """Every pass asks before each rewrite; False once a `rewrite_limit` is used up."""
    log = _current_log.get()
    return True if log is None else log.allow(rule, node)


# ---- graph surgery shared by all passes ---------------------------------------------------------
def can_take_over(graph: Graph, old: Value, new: Value) -> str | None:
    """None if `new` may replace `old`; else why not. A graph output keeps its public name, so
    its replacement must be a node output that is not already a graph output."""
    if not is_graph_output(graph, old):
        return None
    if new.producer is None:
        return f"%{old.name} is a graph output and its replacement %{new.name} is not a node output"
    if is_graph_output(graph, new):
        return f"%{old.name} and its replacement %{new.name} are both graph outputs"
    return None


def is_graph_output(graph: Graph, value: Value) -> bool:
    return any(value is o for o in graph.outputs)


def replace_value(graph: Graph, old: Value, new: Value, dead: list[Node] = (),
                  rename: bool = False) -> None:
    """Replace every use of `old` by `new` and remove the nodes of `dead` left without users.
    `new` takes `old`'s name when `old` was a graph output (its public name) or, with `rename`
    (a freshly made value), when `old`'s node is gone, so that names stay stable."""
    reason = can_take_over(graph, old, new)
    if reason:
        raise PassError(f"invalid replacement: {reason}")
    public = is_graph_output(graph, old)
    graph.replace_all_uses(old, new)
    graph.remove_unused_nodes(dead)
    gone = not any(old.producer is n for n in graph.nodes)
    if public and not gone:
        raise PassError(f"graph output %{old.name} was replaced but its node is still used",
                        node=old.producer.name)
    if (public or rename) and gone and old.name != new.name:
        graph.rename_value(new, old.name)


def merged_provenance(*nodes: Node) -> tuple[str, ...]:
    """The provenance of a node standing for `nodes` (in dataflow order): the union, in order;
    the last entry is the original node whose output the new node's output equals."""
    seen: dict[str, None] = {}
    for n in nodes:
        seen.update(dict.fromkeys(n.provenance))
    return tuple(seen)


def named_in(node: Node, names: frozenset[str]) -> bool:
    """Whether `names` (a keep list) names `node`: by its own name, its op's name, or the name
    of an original node it stands for (its provenance, so kept layers stay kept after fusion)."""
    return node.name in names or node.op_name in names or not names.isdisjoint(node.provenance)


MAX_SWEEPS = 100


def apply_rules(graph: Graph, rules: list[Rule]) -> PassResult:
    """Apply `rules` to a copy of `graph` until none applies (first matching rule wins, nodes
    visited in topological order). Returns the input graph itself when nothing changed."""
    g = graph.copy()
    rewrites: collections.Counter[str] = collections.Counter()
    misses: dict[tuple[str, str], str] = {}
    roots = {op for r in rules for op in (r.pattern.ops or ())}
    any_root = any(r.pattern.ops is None for r in rules)
    progress, stopped, sweeps = True, False, 0
    while progress and not stopped:
        progress, sweeps = False, sweeps + 1
        if sweeps > MAX_SWEEPS:
            raise PassError(f"rules {[r.name for r in rules]} still rewrite after {MAX_SWEEPS} "
                            "sweeps over the graph: their rewrites match again (no fixed point)")
        removed: set[int] = set()
        for node in g.topological_order():
            if id(node) in removed or len(node.outputs) != 1:
                continue
            if not any_root and node.op_name not in roots:
                continue
            for rule in rules:
                if rule.pattern.ops is not None and node.op_name not in rule.pattern.ops:
                    continue
                try:
                    m = match(g, rule.pattern, node)
                    reason = rule.check(g, m) if rule.check else None
                    if reason:
                        raise Miss(reason)
                except Miss as miss:
                    if rule.report_misses and miss.near:
                        misses[(rule.name, node.name)] = str(miss)
                    continue
                if not allow_rewrite(rule.name, node.name):
                    stopped = True
                    break
                misses.pop((rule.name, node.name), None)
                before = {id(n) for n in g.nodes}
                new = rule.rewrite(g, m)
                replace_value(g, node.output, new, m.nodes,
                              rename=new.producer is not None and id(new.producer) not in before)
                removed |= before - {id(n) for n in g.nodes}
                rewrites[rule.name] += 1
                progress = True
                break
            if stopped:
                break
    names = {n.name for n in g.nodes}
    misses = {key: reason for key, reason in misses.items() if key[1] in names}
    if not rewrites:
        return PassResult(graph, False, {"misses": _group(misses)})
    g.remove_unused_constants()
    return PassResult(g, True, {"rewrites": dict(rewrites), "misses": _group(misses)})


def _group(misses: dict[tuple[str, str], str]) -> dict[str, list[tuple[str, str]]]:
    """Misses by rule: [(node, reason), ...]."""
    grouped: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for (rule, node), reason in misses.items():
        grouped[rule].append((node, reason))
    return dict(grouped)
