"""Quantization: calibration of activation ranges and integer quantization parameters."""
from .calibration import Calibration, ValueRange, calibrate
from .observers import OBSERVERS, Observer, make_observer
from .params import activation_params, quant_range, weight_params
