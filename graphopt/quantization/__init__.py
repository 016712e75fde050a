"""Quantization: calibration of activation ranges and integer quantization parameters;
`quantize(graph, "float16" | "bfloat16")` (`go.quantize`) converts a graph to half precision,
`quantize(graph, calib)` to int8."""
from .calibration import Calibration, ValueRange, calibrate
from .convert import quantize
from .observers import OBSERVERS, Observer, make_observer
from .params import activation_params, quant_range, weight_params
