"""Ways into the IR: the Python DSL (`dsl`) and ONNX (`onnx`: import, export, conformance)."""
