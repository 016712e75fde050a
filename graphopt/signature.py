"""The names, shapes and dtypes a model takes and returns, the check of user inputs against them,
and deterministic probe inputs. Shared by the interpreter, compiled modules, loaded (exported)
models, the pass manager and the command line."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from .errors import InputError
from .ir import Graph, TensorType, is_float_dtype
from .runtime import numpy_dtype

_MISSING = object()


@dataclass(frozen=True)
class Signature:
    inputs: tuple[tuple[str, TensorType], ...]
    outputs: tuple[tuple[str, TensorType], ...]

    @classmethod
    def of(cls, graph: Graph) -> "Signature":
        return cls(tuple((v.name, v.type) for v in graph.inputs),
                   tuple((v.name, v.type) for v in graph.outputs))

    @property
    def input_names(self) -> list[str]:
        return [n for n, _ in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [n for n, _ in self.outputs]

    @functools.cached_property
    def output_name_tuple(self) -> tuple[str, ...]:
        """`output_names`, built once (a run names its outputs on every call)."""
        return tuple(n for n, _ in self.outputs)

    @functools.cached_property
    def _input_checks(self) -> tuple:
        """(name, shape, numpy dtype or None where numpy lacks it) per input: `check` runs on
        every call of a compiled model, so it compares shapes and dtype objects (building a
        TensorType or a dtype's name cost more than LeNet-5's kernels)."""
        return tuple((name, t.shape, numpy_dtype(t.dtype), t) for name, t in self.inputs)

    def check(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs as contiguous arrays in declaration order; InputError names what is wrong.
        Runs before every call of a compiled model, so the common case (a dict of numpy
        arrays) takes one pass with no generator or ABC check (1.5 -> 0.3 us for one input)."""
        if type(inputs) is not dict and not isinstance(inputs, Mapping):
            raise InputError(f"expected a dict of input name -> array, found {type(inputs).__name__}")
        checked = {}
        for name, shape, dtype, expected in self._input_checks:
            array = inputs.get(name, _MISSING)
            if array is _MISSING:
                break
            if not isinstance(array, np.ndarray):
                array = np.asarray(array)
            if array.shape != shape or (array.dtype != dtype if dtype is not None
                                        else str(array.dtype) != expected.dtype):
                raise InputError(f"input '{name}': expected {expected}, found "
                                 f"{array.dtype}[{','.join(map(str, array.shape))}]")
            # ascontiguousarray would turn a 0-d array into shape (1,)
            checked[name] = array if array.flags.c_contiguous or not array.ndim \
                else np.ascontiguousarray(array)
        if len(checked) != len(self.inputs) or len(inputs) != len(checked):
            missing = [n for n in self.input_names if n not in inputs]
            unknown = [n for n in inputs if n not in self.input_names]
            raise InputError(f"expected inputs {self.input_names}, found {list(inputs)}"
                             + (f"; missing {missing}" if missing else "")
                             + (f"; unknown {unknown}" if unknown else ""))
        return checked

    # The one encoding of a signature: `{"inputs": [{"name", "shape", "dtype"}, ...], "outputs":
    # [...]}`. Exported libraries carry it in their metadata, which graphopt.runtime reads on its
    # own (it runs without graphopt): tests/test_export.py checks that both read it alike.
    def to_dict(self) -> dict:
        def encode(items):
            return [{"name": n, "shape": list(t.shape), "dtype": t.dtype} for n, t in items]
        return {"inputs": encode(self.inputs), "outputs": encode(self.outputs)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Signature":
        """The signature in `data` (other keys, such as an export's target, are ignored)."""
        def decode(items):
            return tuple((d["name"], TensorType(tuple(d["shape"]), d["dtype"])) for d in items)
        return cls(decode(data["inputs"]), decode(data["outputs"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "Signature":
        return cls.from_dict(json.loads(text))


def probe_inputs(inputs: Graph | Iterable[tuple[str, Sequence[int], str]],
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs for equivalence checks, comparisons and timing: standard normal
    floats, small integers (0 or 1 for bool, at least 0 for unsigned types). `inputs`: a
    graph, or the (name, shape, dtype) of each input."""
    if isinstance(inputs, Graph):
        inputs = [(v.name, v.shape, v.dtype) for v in inputs.inputs]
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape, dtype in inputs:
        dtype = np.dtype(dtype)
        if is_float_dtype(dtype):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        else:
            low, high = (0, 2) if dtype.kind == "b" else (max(-8, np.iinfo(dtype).min), 8)
            feeds[name] = rng.integers(low, high, size=shape).astype(dtype)
    return feeds
