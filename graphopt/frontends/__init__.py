"""Ways into the IR: the Python DSL (`dsl`) and, later, model formats such as ONNX."""
