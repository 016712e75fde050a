"""graphopt: a compiler-style graph optimization toolkit for convolutional networks.

    g = go.zoo.resnet18()                       # define (DSL) ...
    ref = go.interpret(g, {"input": x})         # ... run in the numpy reference interpreter
    p = go.prune(g, ratio=0.4)                  # ... compress (or go.factorize, go.quantize)
    m = go.compile(g, target="cpu")             # ... compile through TVM
    print(go.compare(g, m, {"input": x}))       # ... and compare, output by output
"""
from __future__ import annotations

import importlib

from . import ops
from . import compare as _compare
from .compare import CompareReport
from .errors import (DeclaredShapeWarning, GraphoptError, InputError, LoweringError,
                     ModelFormatError, OptionError, PassError, ScheduleFallbackWarning,
                     ShapeError, UnsupportedOpError, VerifyError, WriteError)
from .frontends import dsl
from .ir import Graph, Node, TensorType, Value
from .quantization import Calibration, calibrate, quantize, sensitivity
from .targets.reference import interpret
# go.report, the function (graphopt.report, the subpackage, stays importable by name)
from .report import report
from .verify import verify

__version__ = "0.1.0"   # the one place the version is written (pyproject.toml reads it)


def compare(reference: Graph, candidate, inputs, **options) -> CompareReport:
    """Compare `candidate` (an optimized Graph, a compiled or a loaded model) with `reference`
    run in the float64 interpreter, output by output (`per_layer=True`: layer by layer too);
    with `target=` ("cpu", "cuda"), a Graph candidate is compiled by TVM first. The options are
    `graphopt.compare.compare`'s."""
    if options.get("target") is not None and options.get("compiler") is None:
        from .targets.tvm import compile_graph
        options["compiler"] = compile_graph
    return _compare.compare(reference, candidate, inputs, **options)


def compile(graph: Graph, target: str = "cpu", options=None, **overrides):
    """Run graphopt's passes for `target` ("cpu", "cuda", "cuda:sm_80", ...) on `graph`, then
    compile the result with TVM; returns a CompiledModel (`.run(inputs)`, `.export(path)`,
    `.report`). `options`: a `CompileOptions`; keywords override its fields (passes, mcpu,
    threads, tuning, kernels, weights, bounds_check)."""
    from .targets.tvm import compile_graph
    return compile_graph(graph, target, options, **overrides)


def load(path: str, threads: int | None = None):
    """Load a library written by `CompiledModel.export`; runs with only the TVM runtime, on
    `threads` threads (None: every core the process may use)."""
    from .runtime import load as load_exported
    return load_exported(path, threads=threads)


def load_onnx(source, **options) -> Graph:
    """Import an ONNX model (path, bytes or onnx.ModelProto) as a verified Graph. Options:
    `input_shapes`, `constant_inputs`, `max_constant_bytes` (the bound on the constant arrays
    the import creates, 1 GiB by default)."""
    from .frontends.onnx import load_onnx as import_onnx
    return import_onnx(source, **options)


def save_onnx(graph: Graph, path=None):
    """Export `graph` as an onnx.ModelProto (written to `path` when given, atomically: a failed
    write raises WriteError and leaves what was there)."""
    from .frontends.onnx import save_onnx as export_onnx
    return export_onnx(graph, path)


def optimize(graph: Graph, passes=None, **options):
    """Run graph passes (names; None: the default pipeline) on a copy of `graph`; returns an
    OptimizeResult (`.graph`, `.report`). `check=True` verifies every pass on a probe input."""
    from .passes import optimize as run_passes
    return run_passes(graph, passes, **options)


def factorize(graph: Graph, energy=None, **options):
    """Factor convolutions and linear layers into two thinner ones (1x1 bottlenecks): a
    CompressionResult (`.graph`, `.report` with one row per layer). Options: `rank_ratio`,
    `data`, `layers`, `budget` (with `eval_inputs`, `metric`); see
    `graphopt.compression.factorize`."""
    from .compression import factorize as factorize_layers
    return factorize_layers(graph, energy, **options)


def prune(graph: Graph, ratio=None, **options):
    """Remove the least important output channels of each layer (structured; channels tied by
    residual adds, concats and groups go together) so that the graph really shrinks, or zero
    weights with `structured=False`: a CompressionResult. Options: `criterion` ("l1", "l2",
    "bn_gamma", "activation"), `data`, `layers`, `budget` (with `eval_inputs`, `metric`); see
    `graphopt.compression.prune`."""
    from .compression import prune as prune_channels
    return prune_channels(graph, ratio, **options)


def finetune(graph: Graph, data, teacher: Graph | None = None, epochs: int = 3, **options) -> Graph:
    """Train `graph`'s weights with torch autograd on `data` = (inputs, labels), distilling from
    `teacher`'s logits when given; returns the trained copy. Needs torch. See
    `graphopt.compression.finetune`."""
    from .compression import finetune as train
    return train(graph, data, teacher, epochs, **options)


def bisect(graph: Graph, passes, inputs=None, **options):
    """The first pass, and the first rewrite within it, that breaks equivalence (or None)."""
    from .passes import bisect as bisect_passes
    return bisect_passes(graph, passes, inputs, **options)


def _spell_out_keywords() -> None:
    """help() and inspect.signature of go.compile, go.optimize and go.compare show the keyword
    arguments their **options take: CompileOptions' fields, and those of the functions called."""
    import dataclasses
    import inspect
    from .passes import optimize as run_passes
    from .targets.tvm.options import CompileOptions
    head = [p for p in inspect.signature(compile).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD]
    keywords = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                  annotation=f.type) for f in dataclasses.fields(CompileOptions)]
    compile.__signature__ = inspect.Signature(head + keywords, return_annotation="CompiledModel")
    optimize.__signature__ = inspect.signature(run_passes)
    compare.__signature__ = inspect.signature(_compare.compare)


_spell_out_keywords()


def __getattr__(name: str):
    # The zoo is loaded on first use so that `import graphopt` stays fast.
    if name in ("zoo", "passes"):
        return importlib.import_module(f".{name}", __name__)
    if name == "CompileOptions":
        return importlib.import_module(".targets.tvm.options", __name__).CompileOptions
    raise AttributeError(f"module 'graphopt' has no attribute {name!r}")


__all__ = ["CompileOptions", "DeclaredShapeWarning", "Graph", "Node", "TensorType", "Value", "GraphoptError", "InputError", "LoweringError",
           "ModelFormatError", "OptionError", "PassError", "ScheduleFallbackWarning", "ShapeError", "UnsupportedOpError", "VerifyError", "WriteError",
           "Calibration", "CompareReport", "bisect", "calibrate", "compare", "compile", "dsl", "interpret", "load", "load_onnx",
           "ops", "optimize", "passes", "quantize", "report", "save_onnx", "sensitivity", "verify", "zoo",
           "factorize", "finetune", "prune"]
