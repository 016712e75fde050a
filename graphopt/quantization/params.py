"""Integer quantization parameters (scale, zero point) from a range or from weights.

`real = scale * (q - zero_point)`. The formulas are ONNX Runtime's
(`onnxruntime.quantization.quant_utils.compute_scale_zp`), so a range gives
the same parameters here as in ORT's quantizer: the range is widened to include 0 (so that 0 is
exactly representable: zero padding, ReLU outputs), symmetric ranges become [-absmax, absmax] on
the symmetric integer range (int8: [-127, 127]), the scale is computed in float64 and stored as
float32, and a range too narrow for a float32 scale (all zeros) gives scale 1, zero point 0.

    scale, zero_point = activation_params(-0.5, 6.0)                  # uint8, asymmetric
    scales, zero_points = weight_params(conv_weight)                  # int8 per output channel
    scales = bias_safe_weight_scales(scales, input_scale, conv_bias)  # int32 bias fits
"""
from __future__ import annotations

import operator

import numpy as np

from ..errors import InputError, OptionError

# (qmin, qmax) per integer dtype; symmetric int8/int16 drop the most negative value, as ORT's
# ONNX_INT_TYPE_SYMMETRIC_RANGE does, so that the range is centred on a zero point of 0.
QUANT_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535),
                "int16": (-32768, 32767)}
SYMMETRIC_RANGES = {"int8": (-127, 127), "int16": (-32767, 32767)}
# reduce_range: 7-bit weights, ORT's ranges (`get_qmin_qmax_for_qType`), symmetric or not. On
# x86 CPUs without VNNI the u8 x s8 product instruction (vpmaddubsw) sums pairs of products in
# int16: 255 * 64 * 2 fits, 255 * 127 * 2 does not.
REDUCED_RANGES = {"int8": (-64, 64), "uint8": (0, 127)}


def quant_range(dtype: str = "uint8", symmetric: bool = False,
                reduce_range: bool = False) -> tuple[int, int]:
    """(qmin, qmax) of the integer `dtype` as the quantizer uses it; `reduce_range`: 7 bits
    (int8 and uint8 only)."""
    if not isinstance(dtype, str) or dtype not in QUANT_RANGES:
        raise OptionError(f"expected a quantized dtype in {list(QUANT_RANGES)}, found {dtype!r}")
    for name, flag in (("symmetric", symmetric), ("reduce_range", reduce_range)):
        if not isinstance(flag, (bool, np.bool_)):
            raise OptionError(f"expected {name} to be a bool, found {flag!r}")
    if reduce_range:
        if dtype not in REDUCED_RANGES:
            raise OptionError(f"reduce_range applies to {' and '.join(REDUCED_RANGES)}, not to "
                              f"{dtype}")
        return REDUCED_RANGES[dtype]
    if symmetric and dtype in SYMMETRIC_RANGES:
        return SYMMETRIC_RANGES[dtype]
    return QUANT_RANGES[dtype]


def _scale_zero_point(rmin: np.ndarray, rmax: np.ndarray, dtype: str, symmetric: bool,
                      reduce_range: bool = False):
    """compute_scale_zp of ORT, elementwise over float32 arrays of range ends."""
    qmin, qmax = quant_range(dtype, symmetric, reduce_range)
    rmin = np.minimum(rmin, np.float32(0))
    rmax = np.maximum(rmax, np.float32(0))
    if symmetric:
        absmax = np.maximum(np.abs(rmin), np.abs(rmax))
        rmin, rmax = -absmax, absmax
    scale = (rmax.astype(np.float64) - rmin.astype(np.float64)) / float(qmax - qmin)
    if symmetric:
        # round((qmin + qmax) / 2): 0 for int8/int16, 128 for uint8, independent of the scale.
        zero_point = np.full(scale.shape, np.round((qmin + qmax) / 2.0))
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            zero_point = np.round(qmin - rmin / scale)
    degenerate = scale < np.finfo(np.float32).tiny
    scale = np.where(degenerate, 1.0, scale).astype(np.float32)
    zero_point = np.where(degenerate, 0, zero_point).astype(dtype)
    return scale, zero_point


def check_finite(values: np.ndarray, what: str = "") -> None:
    """InputError unless every value of the float array is finite, counting those that are not."""
    finite = np.isfinite(values)
    if not finite.all():
        bad = values[~finite]
        raise InputError(f"{what}{': ' if what else ''}expected finite values, found "
                         f"{int(np.isnan(bad).sum())} NaN and {int(np.isinf(bad).sum())} "
                         f"infinite of {values.size}")


def _finite_float32(array, what: str) -> np.ndarray:
    try:
        with np.errstate(over="ignore"):   # beyond float32 becomes inf, refused just below
            values = np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(f"{what}: expected real numbers, found {array!r}") from None
    check_finite(values, f"{what} (as float32)")
    return values


def activation_params(lo: float, hi: float, dtype: str = "uint8",
                      symmetric: bool = False) -> tuple[np.float32, np.integer]:
    """(scale, zero_point) quantizing the range [lo, hi] to `dtype`, as ORT's compute_scale_zp:
    uint8 asymmetric by default (the range widened to include 0); `symmetric=True` for int8
    activations ([-absmax, absmax] on [-127, 127], zero point 0). A range of zeros gives (1, 0).
    A NaN or infinite end, or lo > hi, is an InputError."""
    ends = _finite_float32([lo, hi], f"activation range ({lo!r}, {hi!r})")
    if ends[0] > ends[1]:
        raise InputError(f"activation range: expected lo <= hi, found ({lo!r}, {hi!r})")
    scale, zero_point = _scale_zero_point(ends[:1], ends[1:], dtype, symmetric)
    return scale[0], zero_point[0]


def weight_params(array: np.ndarray, axis: int = 0, dtype: str = "int8", per_channel: bool = True,
                  symmetric: bool = True, reduce_range: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(scales, zero_points) of a weight tensor from its own min and max, as ORT quantizes
    initializers: symmetric int8 (zero point 0, [-127, 127]) per slice along `axis` (0: the
    output channels of conv and linear weights) by default, arrays of shape (array.shape[axis],);
    `per_channel=False` gives 0-d arrays for the whole tensor; `reduce_range=True`, 7-bit
    weights ([-64, 64]). A slice of zeros (or an empty one) gets scale 1; NaN or infinite
    weights are an InputError."""
    values = _finite_float32(array, "weights")
    if not isinstance(per_channel, (bool, np.bool_)):
        raise OptionError(f"expected per_channel to be a bool, found {per_channel!r}")
    if not per_channel:
        # Including 0 in min and max costs nothing: the range is widened to include 0 anyway.
        rmin = values.min(initial=0.0)
        rmax = values.max(initial=0.0)
        return _scale_zero_point(np.asarray(rmin), np.asarray(rmax), dtype, symmetric,
                                 reduce_range)
    try:
        axis = operator.index(axis)
    except TypeError:
        raise OptionError(f"expected an integer axis, found {axis!r}") from None
    if not -values.ndim <= axis < values.ndim:
        raise OptionError(f"expected an axis in [{-values.ndim}, {values.ndim}) for weights of "
                          f"shape {values.shape}, found {axis}")
    channels = values.shape[axis]
    rows = np.moveaxis(values, axis, 0).reshape(channels, values.size // max(channels, 1))
    return _scale_zero_point(rows.min(axis=1, initial=0.0), rows.max(axis=1, initial=0.0),
                             dtype, symmetric, reduce_range)


# A bias's int32 range as ORT counts it (`_adjust_weight_scale_for_int32_bias`), and the margin
# it leaves below the limits.
INT32_BIAS_RANGE = float(2**31 - 1) - float(-2**31 + 1)
INT32_BIAS_MARGIN = 1.0001


def bias_safe_weight_scales(weight_scale: np.ndarray, input_scale, bias: np.ndarray
                            ) -> np.ndarray:
    """`weight_scale` (per output channel, or one 0-d scale) raised where the bias's step,
    input scale x weight scale, would be too fine for the bias in int32, as ORT's quantizer
    raises it (`_adjust_weight_scale_for_int32_bias`, after TFLite): an input whose calibrated
    range is nearly zero (a mean subtracted, then averaged) has a scale near 1e-10, and its
    bias, divided by that step, saturated int32 and the layer's outputs came out wrong. The
    weights are then quantized with the raised scale."""
    scale = np.asarray(weight_scale, np.float64)
    limit = np.abs(np.asarray(bias, np.float64))
    limit = limit.max(initial=0.0) if scale.ndim == 0 else limit
    smallest = INT32_BIAS_MARGIN * 2.0 * limit / INT32_BIAS_RANGE
    step = float(np.asarray(input_scale, np.float64).reshape(-1)[0]) * scale
    raised = np.where((step > 0) & (step < smallest),
                      scale * (smallest / np.maximum(step, 1e-300)), scale)
    return raised.astype(np.asarray(weight_scale).dtype)
