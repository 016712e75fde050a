"""The optional packages the report and the viewer need, imported on use: a missing one is a
MissingExtraError naming the pip extra that brings it."""
from __future__ import annotations

import importlib
import os
import shutil
from importlib import metadata
from pathlib import Path

from ..errors import GraphoptError


class MissingExtraError(GraphoptError):
    """An optional package (or program) a command needs is not installed."""


def require(module: str, extra: str, why: str):
    """`import module`, or a MissingExtraError saying `pip install graphopt[extra]`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(f"{why} needs the Python package '{e.name or module}': "
                                f"pip install graphopt[{extra}]") from None


def dot_executable() -> str:
    """The Graphviz `dot` to lay graphs out with: the one the `graphviz-pure` wheel installs
    (its console program, found through the wheel's file list), else a `dot` on PATH."""
    try:
        files = metadata.distribution("graphviz-pure").files or ()
    except metadata.PackageNotFoundError:
        files = ()
    for file in files:
        path = Path(file.locate()).resolve()
        if path.stem == "graphviz-pure" and path.parent.name in ("bin", "Scripts") and \
                os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("dot")
    if found:
        return found
    raise MissingExtraError("drawing graphs needs Graphviz's dot: pip install graphopt[report] "
                            "(the graphviz-pure wheel) or install Graphviz (apt install graphviz)")
