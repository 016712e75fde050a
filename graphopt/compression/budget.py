"""The budget search shared by `prune` and `factorize`: the most compression per layer that
keeps a loss (a metric's drop, or the relative output error) within a budget.

Each layer is first scanned alone over its levels, weakest to strongest compression, and gets
the strongest level whose loss alone fits the budget (the scan of a layer stops at the first
level over it). The layers' choices are then applied together; while the combined loss is over
the budget, the layer whose chosen level cost the most alone steps back one level (to none
after its weakest). Like the int8 budget (`quantize(..., budget=)`), it trusts the per-layer
scan's order rather than searching every combination."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable, Mapping, Sequence

from ..table import format_table


@dataclass
class BudgetScan:
    """What the search measured: `alone[layer]` the (level, loss) pairs of its scan, `steps`
    the combined choices tried (choice, loss), the last one being the result."""

    alone: dict[str, list[tuple[Hashable, float]]] = field(default_factory=dict)
    steps: list[tuple[dict, float]] = field(default_factory=list)

    def summary(self, budget: float, what: str, metric: bool) -> str:
        measure = "metric drop" if metric else "error"
        rows = []
        chosen = self.steps[-1][0] if self.steps else {}
        for layer, scan in self.alone.items():
            tried = ", ".join(f"{level}: {loss:.3g}" for level, loss in scan)
            rows.append([layer, str(chosen.get(layer, "-")), tried])
        loss = self.steps[-1][1] if self.steps else 0.0
        met = "met" if loss <= budget else "NOT met"
        head = [f"budget: {measure} <= {budget:g}: {met} with {measure} {loss:.3g} after "
                f"{len(self.steps)} combined trial(s)"]
        if rows:
            head.append(format_table(rows, ["layer", f"chosen {what}", f"{measure} alone at "
                                            f"each {what} scanned"], rule=True))
        return "\n".join(head)


def search_levels(levels: Mapping[str, Sequence[Hashable]],
                  loss: Callable[[Mapping[str, Hashable]], float],
                  budget: float) -> tuple[dict[str, Hashable], BudgetScan]:
    """{layer: chosen level} (layers left out stay uncompressed) and the scan. `levels[layer]`
    lists that layer's levels from weakest to strongest compression; `loss({layer: level,
    ...})` measures a choice."""
    scan = BudgetScan()
    chosen: dict[str, int] = {}        # layer -> index into its levels
    cost: dict[str, float] = {}
    for layer, options in levels.items():
        scan.alone[layer] = []
        for index, level in enumerate(options):
            value = loss({layer: level})
            scan.alone[layer].append((level, value))
            if value > budget:
                break
            chosen[layer], cost[layer] = index, value
    while True:
        choice = {layer: levels[layer][i] for layer, i in chosen.items()}
        value = loss(choice) if choice else 0.0
        scan.steps.append((choice, value))
        if value <= budget or not chosen:
            return choice, scan
        worst = max(chosen, key=lambda layer: (cost[layer], layer))
        if chosen[worst] == 0:
            del chosen[worst]
        else:
            chosen[worst] -= 1
            cost[worst] = dict(scan.alone[worst]).get(levels[worst][chosen[worst]], 0.0)
