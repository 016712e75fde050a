"""ONNX in and out: `load_onnx(path | bytes | ModelProto) -> Graph` and
`save_onnx(graph, path=None) -> onnx.ModelProto`.

The pieces: `onnx_load` (safe reading, external data, structure checks), `onnx_import` (the walk
and constant folding), `onnx_ops` (the conversion table), `onnx_export` (the export table)."""
from __future__ import annotations

from .onnx_export import save_onnx
from .onnx_import import load_onnx

__all__ = ["load_onnx", "save_onnx"]
