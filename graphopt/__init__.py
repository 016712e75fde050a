"""graphopt: a compiler-style graph optimization toolkit for convolutional networks.

    g = go.zoo.resnet18()                       # define (DSL) ...
    ref = go.interpret(g, {"input": x})         # ... run in the numpy reference interpreter
    m = go.compile(g, target="cpu")             # ... compile through TVM
    print(go.compare(g, m, {"input": x}))       # ... and compare, output by output
"""
from __future__ import annotations

import importlib

from . import ops
from .compare import CompareReport, compare
from .errors import (GraphoptError, InputError, LoweringError, ModelFormatError, PassError,
                     ShapeError, UnsupportedOpError, VerifyError)
from .frontends import dsl
from .ir import Graph, Node, TensorType, Value
from .targets.reference import interpret
from .verify import verify

__version__ = "0.1.0"


def compile(graph: Graph, target: str = "cpu"):
    """Compile `graph` with TVM for `target` ("cpu", "cuda", "cuda:sm_80", ...); returns a
    CompiledModel (`.run(inputs)`, `.export(path)`)."""
    from .targets.tvm import compile_graph
    return compile_graph(graph, target)


def load(path: str):
    """Load a library written by `CompiledModel.export`; runs with only the TVM runtime."""
    from .runtime import load as load_exported
    return load_exported(path)


def load_onnx(source, **options) -> Graph:
    """Import an ONNX model (path, bytes or onnx.ModelProto) as a verified Graph."""
    from .frontends.onnx import load_onnx as import_onnx
    return import_onnx(source, **options)


def save_onnx(graph: Graph, path=None):
    """Export `graph` as an onnx.ModelProto (written to `path` when given)."""
    from .frontends.onnx import save_onnx as export_onnx
    return export_onnx(graph, path)


def __getattr__(name: str):
    # The zoo is loaded on first use so that `import graphopt` stays fast.
    if name == "zoo":
        return importlib.import_module(".zoo", __name__)
    raise AttributeError(f"module 'graphopt' has no attribute {name!r}")


__all__ = ["Graph", "Node", "TensorType", "Value", "GraphoptError", "InputError", "LoweringError",
           "ModelFormatError", "PassError", "ShapeError", "UnsupportedOpError", "VerifyError",
           "CompareReport", "compare", "compile", "dsl", "interpret", "load", "load_onnx", "ops",
           "save_onnx", "verify", "zoo"]
