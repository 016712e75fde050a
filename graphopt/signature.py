"""The names, shapes and dtypes a model takes and returns, the check of user inputs against them,
and deterministic probe inputs. Shared by the interpreter, compiled modules, loaded (exported)
models, the pass manager and the command line."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from .ir import Graph, TensorType, is_float_dtype
from .runtime import checked_inputs, numpy_dtype


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
    def input_specs(self) -> tuple:
        """(name, shape, dtype name, numpy dtype or None where numpy lacks it) per input, as
        `runtime.checked_inputs` takes them (built once: `check` runs on every call)."""
        return tuple((name, t.shape, t.dtype, numpy_dtype(t.dtype)) for name, t in self.inputs)

    def check(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs as contiguous arrays in declaration order; InputError names what is wrong."""
        specs = self.input_specs
        return {spec[0]: array for spec, array in zip(specs, checked_inputs(inputs, specs))}

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
