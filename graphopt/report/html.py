"""The report page: `template.html` (Jinja2, autoescaped; the SVGs are inlined as they are) with
its styles inline, so that the file needs nothing but itself."""
from __future__ import annotations

from importlib import resources

from .. import __version__
from ..analysis import _human
from .graph_svg import FAMILY_COLORS


def size(n: int | float | None) -> str:
    """Bytes as B, KiB, MiB or GiB."""
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def render(**context) -> str:
    """The page, from the report's pieces (see `graphopt.report.report`)."""
    import jinja2
    environment = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True,
                                     undefined=jinja2.StrictUndefined)
    environment.filters.update(human=_human, size=size, number=number)
    source = resources.files(__package__).joinpath("template.html").read_text(encoding="utf-8")
    return environment.from_string(source).render(version=__version__,
                                                  family_colors=FAMILY_COLORS, **context)
