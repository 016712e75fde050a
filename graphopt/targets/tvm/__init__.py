"""Compilation through Apache TVM (Relax + TIR). Imported only when a graph is compiled."""
from .compile import CompiledModel, compile_graph

__all__ = ["CompiledModel", "compile_graph"]
