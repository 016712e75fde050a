"""Calibration for post-training quantization: run the reference interpreter over sample batches,
observe every float activation, and keep the range each one will be quantized over.

    calib = go.calibrate(g, batches, method="entropy")    # batches: iterable of {input: array}
    print(calib)                                          # per value: observed and chosen range
    scale, zero_point = calib.params("conv1.out")         # uint8 asymmetric by default
    calib.save("lenet5.calib.json"); go.Calibration.load("lenet5.calib.json")
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from ..errors import InputError, ModelFormatError, OptionError
from ..ir import Graph, Value
from ..signature import Signature
from ..table import format_table
from ..targets.reference import interpret
from .observers import OBSERVERS, make_observer
from .params import activation_params, check_finite

FORMAT = "graphopt.calibration"
VERSION = 1


@dataclass(frozen=True)
class ValueRange:
    """What calibration saw of one value: how many elements, their (min, max), and the range
    the method chose for quantizing it."""

    name: str
    count: int
    observed: tuple[float, float]
    range: tuple[float, float]


@dataclass(frozen=True)
class Calibration:
    """Per value name, its `ValueRange`, in graph order; with the method and its options, and the
    batches and samples (batches x the first input's leading dimension) it saw. `unbounded`:
    the values infinite by the graph's design (a pad with -inf before a max pool, and what
    reads it): they have no range, so nothing quantizes them."""

    graph: str
    method: str
    options: dict
    batches: int
    samples: int
    values: dict[str, ValueRange] = field(repr=False)
    unbounded: tuple[str, ...] = ()

    def __getitem__(self, name: str) -> ValueRange:
        if name not in self.values:
            raise OptionError(f"calibration of '{self.graph}' has no value named {name!r}; it "
                              f"has {_some(self.values)}")
        return self.values[name]

    def __contains__(self, name: object) -> bool:
        return name in self.values

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def range(self, name: str) -> tuple[float, float]:
        """The chosen (lo, hi) of value `name`."""
        return self[name].range

    def params(self, name: str, dtype: str = "uint8", symmetric: bool = False):
        """(scale, zero_point) of value `name`'s chosen range (see `activation_params`)."""
        return activation_params(*self[name].range, dtype=dtype, symmetric=symmetric)

    def table(self) -> str:
        options = ", ".join(f"{k}={v}" for k, v in self.options.items())
        title = (f"calibration of '{self.graph}': {self.method}"
                 + (f" ({options})" if options else "")
                 + f", {self.batches} batch{'es' if self.batches != 1 else ''}, "
                 f"{self.samples} sample{'s' if self.samples != 1 else ''}")
        rows = [[v.name, str(v.count), *(f"{x:.6g}" for x in (*v.observed, *v.range))]
                for v in self.values.values()]
        table = format_table(rows, ["value", "count", "min", "max", "lo", "hi"],
                             right=range(1, 6), rule=True)
        if self.unbounded:
            table += f"\nnot finite, left without a range: {', '.join(self.unbounded)}"
        return title + "\n" + table

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict:
        """A JSON-safe dict (`from_dict` reads it back)."""
        return {"format": FORMAT, "version": VERSION, "graph": self.graph, "method": self.method,
                "options": dict(self.options), "batches": self.batches, "samples": self.samples,
                "values": [{"name": v.name, "count": v.count, "min": v.observed[0],
                            "max": v.observed[1], "lo": v.range[0], "hi": v.range[1]}
                           for v in self.values.values()],
                "unbounded": list(self.unbounded)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Calibration":
        """The calibration `to_dict` wrote; anything else is a ModelFormatError naming the field."""
        return _decode(data)

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON, atomically (a failed write raises WriteError, leaving what was there)."""
        from ..files import write_text   # its imports cost more than all of calibration's
        write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Calibration":
        """Read a file `save` wrote."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ModelFormatError(f"cannot read calibration '{os.fspath(path)}': "
                                   f"{getattr(e, 'strerror', None) or e}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelFormatError(f"calibration '{os.fspath(path)}' is not JSON: {e}") from None
        return _decode(data)


def _some(names: Iterable[str], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _decode(data) -> Calibration:
    def fail(what: str, found) -> ModelFormatError:
        return ModelFormatError(f"calibration: expected {what}, found {found!r}")

    def get(mapping, key: str, kinds, what: str):
        if not isinstance(mapping, Mapping) or key not in mapping:
            raise fail(f"a field '{key}' ({what})", mapping if not isinstance(mapping, Mapping)
                       else sorted(mapping))
        item = mapping[key]
        if isinstance(item, bool) and bool not in kinds or not isinstance(item, kinds):
            raise fail(f"'{key}' to be {what}", item)
        return item

    def count(mapping, key: str) -> int:
        n = get(mapping, key, (int,), "an integer >= 0")
        if n < 0:
            raise fail(f"'{key}' to be an integer >= 0", n)
        return n

    def number(mapping, key: str) -> float:
        x = get(mapping, key, (int, float), "a finite number")
        if not math.isfinite(x):
            raise fail(f"'{key}' to be a finite number", x)
        return float(x)

    if get(data, "format", (str,), f"'{FORMAT}'") != FORMAT:
        raise fail(f"format '{FORMAT}'", data["format"])
    if get(data, "version", (int,), f"version {VERSION}") != VERSION:
        raise fail(f"version {VERSION}", data["version"])
    method = get(data, "method", (str,), f"one of {list(OBSERVERS)}")
    options = get(data, "options", (dict,), "a dict of options")
    if not all(isinstance(k, str) for k in options):
        raise fail("option names as strings", list(options))
    try:
        make_observer(method, **options)
    except OptionError as e:
        raise ModelFormatError(f"calibration: {e}") from None
    values = {}
    for entry in get(data, "values", (list,), "a list of values"):
        name = get(entry, "name", (str,), "a value name")
        if name in values:
            raise fail("each value once", name)
        observed, chosen = (number(entry, "min"), number(entry, "max")), \
            (number(entry, "lo"), number(entry, "hi"))
        for lo, hi in (observed, chosen):
            if lo > hi:
                raise fail(f"a range with lo <= hi for value '{name}'", (lo, hi))
        values[name] = ValueRange(name, count(entry, "count"), observed, chosen)
    unbounded = data.get("unbounded", [])       # absent in files written before it existed
    if not isinstance(unbounded, list) or not all(isinstance(n, str) for n in unbounded):
        raise fail("'unbounded' to be a list of value names", unbounded)
    return Calibration(get(data, "graph", (str,), "a graph name"), method, dict(options),
                       count(data, "batches"), count(data, "samples"), values, tuple(unbounded))


def _calibrated_values(graph: Graph, names) -> list[Value]:
    """The values to observe, in graph order: float graph inputs and node outputs (or `names`)."""
    candidates = [*graph.inputs, *(out for node in graph.topological_order()
                                   for out in node.outputs)]
    floats = [v for v in candidates if v.type.is_float]
    if names is None:
        if not floats:
            raise OptionError(f"graph '{graph.name}' has no float values to calibrate")
        return floats
    if isinstance(names, str):
        names = [names]
    try:
        wanted = list(names)
    except TypeError:
        raise OptionError(f"expected values= to be a list of value names, found "
                          f"{type(names).__name__}") from None
    if not wanted:
        raise OptionError("expected at least one value name in values=, found none")
    by_name = {v.name: v for v in graph.values()}
    unknown = [n for n in wanted if not isinstance(n, str) or n not in by_name]
    if unknown:
        raise OptionError(f"values: graph '{graph.name}' has no values named {unknown}; its "
                          f"float values are {_some(v.name for v in floats)}")
    constants = [n for n in wanted if by_name[n].is_constant]
    if constants:
        raise OptionError(f"values: {constants} are constants (weights are quantized from their "
                          f"data: weight_params), not activations")
    others = [n for n in wanted if not by_name[n].type.is_float]
    if others:
        raise OptionError(f"values: {others} are not float values "
                          f"({', '.join(str(by_name[n].type) for n in others)})")
    wanted = set(wanted)
    return [v for v in floats if v.name in wanted]


def _batches(batches) -> Iterator:
    if isinstance(batches, Mapping):
        raise InputError("expected an iterable of batches ({input name: array} dicts), found one "
                         "dict; pass [batch] for a single batch")
    try:
        return iter(batches)
    except TypeError:
        raise InputError(f"expected an iterable of batches ({{input name: array}} dicts), found "
                         f"{type(batches).__name__}") from None


def makes_infinity(node, unbounded) -> bool:
    """Whether `node` may output infinities by design: an op with an infinite attribute (a pad
    with -inf before a max pool) or reading such a value; anything else that overflows is a bad
    batch."""
    if node is None:
        return False
    if any(v.name in unbounded for v in node.inputs):
        return True
    return any(isinstance(value, float) and not math.isfinite(value)
               for value in vars(node.op).values())


def calibrate(graph: Graph, batches: Iterable[Mapping[str, np.ndarray]], method: str = "minmax",
              *, values: Iterable[str] | None = None,
              progress: Callable[[int], object] | None = None, **options) -> Calibration:
    """Observe `graph`'s float activations over `batches` (an iterable of {input name: array},
    read once, one batch in memory at a time) with the reference interpreter in float32, and
    choose each one's range with `method`: "minmax", "percentile" (option `percentile`, 99.999),
    "entropy" (`bins`, 2048; `quantized_bins`, 128) or "mse" (`bins`; `dtype`, "uint8";
    `symmetric`, False). `values`: names to observe (default: every float graph input and node
    output). `progress(batch_index)` is called after each batch. A bad batch (wrong inputs,
    shapes or dtypes, NaN or infinite values) is an InputError naming its index."""
    if not isinstance(graph, Graph):
        raise OptionError(f"expected a graphopt Graph, found {type(graph).__name__}")
    template = make_observer(method, **options)   # a bad method or option fails before any work
    if progress is not None and not callable(progress):
        raise OptionError(f"expected progress to be a callable(batch_index), found "
                          f"{type(progress).__name__}")
    observed = _calibrated_values(graph, values)
    observers = {v.name: make_observer(method, **options) for v in observed}
    producers = {v.name: v.producer for v in observed}
    float_inputs = [v.name for v in graph.inputs if v.type.is_float]
    signature = Signature.of(graph)
    first = graph.inputs[0].shape if graph.inputs else ()
    per_batch = first[0] if first else 1
    count, unbounded = 0, []
    for index, batch in enumerate(_batches(batches)):
        try:
            feeds = signature.check(batch)
            for name in float_inputs:
                check_finite(feeds[name], f"input '{name}'")
        except InputError as e:
            raise InputError(f"batch {index}: {e.detail}") from None
        arrays = interpret(graph, feeds, keep=True)
        for name, observer in list(observers.items()):
            if makes_infinity(producers[name], unbounded) and \
                    not np.isfinite(arrays[name]).all():
                # infinite by the graph's design: no range, nothing quantizes it
                unbounded.append(name)
                del observers[name]
                continue
            try:
                observer.observe(arrays[name])
            except InputError as e:
                node = producers[name]
                raise InputError(f"batch {index}: value '{name}': {e.detail}",
                                 node=node.name if node else None,
                                 op=node.op_name if node else None) from None
        del arrays   # not held while the next batch runs
        count += 1
        if progress is not None:
            progress(index)
    if count == 0:
        raise InputError("expected at least one batch, found none")
    chosen = {name: ValueRange(name, obs.count, obs.observed, obs.range())
              for name, obs in observers.items()}
    return Calibration(graph.name, method, template.options, count, count * per_batch, chosen,
                       tuple(unbounded))
