"""Quantization: calibration of activation ranges and integer quantization parameters;
`quantize(graph, "float16" | "bfloat16")` (`go.quantize`) converts a graph to half precision,
`quantize(graph, calib)` to int8; `sensitivity(graph, calib, inputs)` says which layers int8
hurts most, and `quantize(..., budget=)` keeps the fewest of them in float32."""
from .calibration import Calibration, ValueRange, calibrate
from .quantize import quantize
from .observers import OBSERVERS, Observer, make_observer
from .params import activation_params, quant_range, weight_params
from .sensitivity import BudgetResult, Sensitivity, sensitivity
