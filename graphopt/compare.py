"""Compare a candidate (an optimized Graph, a compiled or a loaded model) with a reference graph,
output by output, with tolerances derived from the dtypes involved."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .errors import GraphoptError
from .ir import Graph
from .targets.reference import interpret

# Error allowed relative to the reference's largest magnitude, by the candidate's dtype: a few
# hundred ulps for fp32 (deep nets accumulate rounding), fp16's 10 bits, exact for integers.
TOLERANCE = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "int8": 0.0, "uint8": 0.0,
             "int32": 0.0, "int64": 0.0, "bool": 0.0}


@dataclass
class OutputComparison:
    name: str
    dtype: str
    max_abs: float
    max_rel: float        # max |candidate - reference| / max |reference|
    cosine: float
    tolerance: float
    ok: bool

    def row(self) -> tuple[str, ...]:
        return (self.name, self.dtype, f"{self.max_abs:.3g}", f"{self.max_rel:.3g}",
                f"{self.cosine:.7f}", f"{self.tolerance:.0e}", "ok" if self.ok else "MISMATCH")


@dataclass
class CompareReport:
    outputs: list[OutputComparison] = field(default_factory=list)
    reference_dtype: str = "float64"

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def __getitem__(self, name: str) -> OutputComparison:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(name)

    def __str__(self) -> str:
        head = ("output", "dtype", "max abs", "max rel", "cosine", "tol", "")
        rows = [head] + [o.row() for o in self.outputs]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = [f"compare against the {self.reference_dtype} reference: "
                 + ("all outputs ok" if self.ok else "MISMATCH")]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines)


def compare_arrays(name: str, reference: np.ndarray, candidate: np.ndarray,
                   tolerance: float | None = None) -> OutputComparison:
    if reference.shape != candidate.shape:
        raise GraphoptError(f"output '{name}': reference shape {reference.shape} differs from "
                            f"candidate shape {candidate.shape}")
    dtype = str(candidate.dtype)
    tol = TOLERANCE.get(dtype, 1e-4) if tolerance is None else tolerance
    ref = reference.astype(np.float64).ravel()
    cand = candidate.astype(np.float64).ravel()
    if not (np.isfinite(ref).all() and np.isfinite(cand).all()):
        same = np.array_equal(ref, cand, equal_nan=True)
        return OutputComparison(name, dtype, 0.0 if same else float("inf"),
                                0.0 if same else float("inf"), 1.0 if same else float("nan"),
                                tol, same)
    diff = np.abs(cand - ref)
    max_abs = float(diff.max(initial=0.0))
    scale = float(np.abs(ref).max(initial=0.0))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    denom = float(np.linalg.norm(ref) * np.linalg.norm(cand))
    cosine = float(ref @ cand / denom) if denom > 0 else (1.0 if max_abs == 0 else 0.0)
    ok = bool(max_abs <= tol * scale) if tol > 0 else max_abs == 0
    return OutputComparison(name, dtype, max_abs, max_rel, cosine, tol, ok)


def run_candidate(candidate, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if isinstance(candidate, Graph):
        return interpret(candidate, inputs)
    if hasattr(candidate, "run"):
        return candidate.run(inputs)
    raise GraphoptError(f"cannot compare with a {type(candidate).__name__}: expected a Graph or a "
                        "compiled/loaded model")


def compare(reference: Graph, candidate, inputs: Mapping[str, np.ndarray], *,
            tolerance: float | None = None, reference_dtype=np.float64) -> CompareReport:
    """Run the reference graph in the interpreter (float64 by default) and the candidate, and
    compare every output of the reference with the candidate's output of the same name."""
    expected = interpret(reference, inputs, dtype=reference_dtype)
    found = run_candidate(candidate, inputs)
    missing = [n for n in expected if n not in found]
    if missing:
        raise GraphoptError(f"candidate lacks outputs {missing}; it has {list(found)}")
    report = CompareReport(reference_dtype=np.dtype(reference_dtype).name)
    for name, ref in expected.items():
        report.outputs.append(compare_arrays(name, ref, np.asarray(found[name]), tolerance))
    return report
