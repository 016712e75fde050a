"""What a compression did, layer by layer: `LayerChange` rows and `CompressionResult`, the
OptimizeResult that `factorize` and `prune` return (its report is the per-layer table, then the
pass table)."""
from __future__ import annotations

from dataclasses import dataclass

from ..analysis import _human, count_macs, count_params
from ..passes.manager import OptimizeResult
from ..table import format_table


@dataclass(frozen=True)
class LayerChange:
    """One compressed layer (or channel group): `layer` names it in the original graph, `change`
    says what was done ("rank 12/64, 1x1 reduce then 3x3", "channels 64 -> 38"), `params` and
    `macs` are (before, after), `error` the relative error it alone causes (None: not measured)."""

    layer: str
    op: str
    change: str
    params: tuple[int, int]
    macs: tuple[int, int]
    error: float | None = None

    def row(self) -> list[str]:
        err = "-" if self.error is None else f"{self.error:.3g}"
        return [self.layer, self.op, self.change, f"{_human(self.params[0])} -> "
                f"{_human(self.params[1])}", f"{_human(self.macs[0])} -> {_human(self.macs[1])}",
                err]


@dataclass
class CompressionResult(OptimizeResult):
    """`factorize`'s or `prune`'s result: `.graph`, `.original`, the pass records, and
    `.layers`, one LayerChange per layer it considered (changed or not, with the reason)."""

    kind: str = "compress"
    layers: tuple[LayerChange, ...] = ()
    note: str = ""

    @property
    def macs_ratio(self) -> float:
        """MACs after / before (< 1 when the model got cheaper)."""
        return count_macs(self.graph) / max(count_macs(self.original), 1)

    @property
    def params_ratio(self) -> float:
        return count_params(self.graph) / max(count_params(self.original), 1)

    def table(self) -> str:
        head = ["layer", "op", "change", "params", "MACs", "error"]
        before, after = self.original, self.graph
        lines = [f"{self.kind} '{before.name}': params {_human(count_params(before))} -> "
                 f"{_human(count_params(after))} ({self.params_ratio:.2f}x), MACs "
                 f"{_human(count_macs(before))} -> {_human(count_macs(after))} "
                 f"({self.macs_ratio:.2f}x)"]
        if self.layers:
            lines.append(format_table([c.row() for c in self.layers], head, right=(3, 4, 5),
                                      rule=True))
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    @property
    def report(self) -> str:
        return self.table() + "\n" + super().report

    def __str__(self) -> str:
        return self.report
