"""Compilation through Apache TVM (Relax + TIR). Imported only when a graph is compiled."""
from .compile import CompiledModel, compile_graph
from .options import CompileOptions

__all__ = ["CompileOptions", "CompiledModel", "compile_graph"]
