"""Quantization: calibration of activation ranges and integer quantization parameters;
`quantize(graph, "float16" | "bfloat16")` converts a graph to half precision. `go.quantize` is
that function: import this package's other names with `from graphopt.quantize import ...`."""
from .calibration import Calibration, ValueRange, calibrate
from .convert import quantize
from .observers import OBSERVERS, Observer, make_observer
from .params import activation_params, quant_range, weight_params
