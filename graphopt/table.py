"""Plain-text tables for reports: columns padded to their widest cell, two spaces apart."""
from __future__ import annotations

from typing import Container, Sequence


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None, *,
                 right: Container[int] = (), rule: bool = False) -> str:
    """`rows` (and `header` above them) as lines; columns whose index is in `right` are aligned
    right (numbers), and `rule` puts a line of dashes under the header."""
    lines = ([list(header)] if header is not None else []) + [list(r) for r in rows]
    if not lines:
        return ""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]

    def format_line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    text = [format_line(line) for line in lines]
    if rule and header is not None:
        text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)
