"""The GraphoptError family: every error a user can trigger names the node, the op and what was
expected versus what was found."""
from __future__ import annotations


class GraphoptError(Exception):
    """Base of every error graphopt raises on purpose."""

    def __init__(self, message: str, *, node: str | None = None, op: str | None = None):
        self.node, self.op, self.detail = node, op, message
        where = ""
        if node is not None:
            where = f"node '{node}'" + (f" ({op})" if op else "") + ": "
        elif op is not None:
            where = f"{op}: "
        super().__init__(where + message)


class ShapeError(GraphoptError):
    """Input shapes or dtypes that an op cannot accept."""


class VerifyError(GraphoptError):
    """A graph that breaks an IR invariant (SSA, acyclic, types agree with inference, ...)."""


class UnsupportedOpError(GraphoptError):
    """An op (or op form) graphopt has no definition or lowering for."""


class LoweringError(GraphoptError):
    """A failure while turning the IR into a backend (TVM) program."""


class InputError(GraphoptError):
    """Bad runtime inputs: missing, unexpected, or of the wrong shape or dtype."""


class PassError(GraphoptError):
    """An optimization pass produced an invalid or non-equivalent graph."""


class ModelFormatError(GraphoptError):
    """A model file (ONNX, exported library) that is malformed or unreadable."""


class WriteError(GraphoptError):
    """A file that could not be written (no space, over the size limit, no such folder, no
    permission); whatever was at the path before is left as it was."""


class OptionError(GraphoptError):
    """A request graphopt cannot accept: an unknown pass, or an argument of the wrong kind."""


class DeclaredShapeWarning(UserWarning):
    """An imported model declares a value's shape (ONNX value_info or graph output) that
    disagrees with graphopt's shape inference; the inferred shape is used, as ONNX Runtime does."""


class ScheduleFallbackWarning(UserWarning):
    """A CPU schedule rule that took a kernel failed part-way (a schedule primitive refused it):
    a later rule, often the generic one and many times slower, scheduled the kernel instead."""
