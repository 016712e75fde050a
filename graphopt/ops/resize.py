"""Spatial resize of NCHW tensors to a static size (ONNX Resize semantics)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import is_float_dtype
from .base import Op, accumulator, expect, expect_rank, pair, register, relax

COORDINATE_MODES = ("half_pixel", "align_corners", "asymmetric", "pytorch_half_pixel")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def source_coords(out_size: int, in_size: int, mode: str, acc) -> np.ndarray:
    """Where each output pixel samples the input, in input pixel coordinates."""
    x = np.arange(out_size, dtype=acc)
    scale = acc(out_size) / acc(in_size)
    if mode == "align_corners":
        return x * (in_size - 1) / (out_size - 1) if out_size > 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "pytorch_half_pixel" and out_size == 1:
        return np.zeros_like(x)
    return (x + 0.5) / scale - 0.5


def nearest_index(coords: np.ndarray, in_size: int, mode: str) -> np.ndarray:
    if mode == "floor":
        idx = np.floor(coords)
    elif mode == "ceil":
        idx = np.ceil(coords)
    elif mode == "round_prefer_ceil":
        idx = np.floor(coords + 0.5)
    else:  # round_prefer_floor: halves go down
        idx = np.ceil(coords - 0.5)
    return np.clip(idx, 0, in_size - 1).astype(np.int64)


def linear_weights(coords: np.ndarray, in_size: int):
    """Neighbour indices and weights; out-of-range coordinates clamp to the edge."""
    coords = np.clip(coords, 0, in_size - 1)
    low = np.floor(coords).astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    return low, high, coords - low


@register
@dataclass(frozen=True)
class Resize(Op):
    """Resize H and W to `size` by `mode` ("nearest" or "bilinear")."""

    name = "resize"
    size: tuple[int, int] = (1, 1)
    mode: str = "nearest"
    coordinate_transformation_mode: str = "half_pixel"
    nearest_mode: str = "round_prefer_floor"

    def __post_init__(self):
        object.__setattr__(self, "size", pair(self.size, "size"))
        expect(isinstance(self.mode, str) and self.mode in ("nearest", "bilinear"),
               f"expected mode 'nearest' or 'bilinear', found {self.mode!r}")
        expect(isinstance(self.coordinate_transformation_mode, str)
               and self.coordinate_transformation_mode in COORDINATE_MODES,
               f"expected coordinate_transformation_mode in {COORDINATE_MODES}, "
               f"found {self.coordinate_transformation_mode!r}")
        expect(isinstance(self.nearest_mode, str) and self.nearest_mode in NEAREST_MODES,
               f"expected nearest_mode in {NEAREST_MODES}, found {self.nearest_mode!r}")
        expect(min(self.size) >= 1, f"expected a positive size, found {self.size}")

    def infer(self, x):
        expect_rank(x, 4, "input x")
        if self.mode == "bilinear":
            expect(x.is_float, f"expected a floating-point input for bilinear, found {x}")
        return x.with_shape((*x.shape[:2], *self.size))

    def reference(self, x):
        acc = accumulator(x.dtype) if is_float_dtype(x.dtype) else np.float64
        (oh, ow), (h, w) = self.size, x.shape[2:]
        ys = source_coords(oh, h, self.coordinate_transformation_mode, acc)
        xs = source_coords(ow, w, self.coordinate_transformation_mode, acc)
        if self.mode == "nearest":
            yi, xi = nearest_index(ys, h, self.nearest_mode), nearest_index(xs, w, self.nearest_mode)
            return x[:, :, yi][:, :, :, xi]
        y0, y1, fy = linear_weights(ys, h)
        x0, x1, fx = linear_weights(xs, w)
        xa = x.astype(acc)
        rows = xa[:, :, y0] * (1 - fy)[:, None] + xa[:, :, y1] * fy[:, None]
        out = rows[..., x0] * (1 - fx) + rows[..., x1] * fx
        return out.astype(x.dtype)

    def lower_tvm(self, bb, x):
        method = "nearest_neighbor" if self.mode == "nearest" else "linear"
        return relax().op.image.resize2d(
            x, self.size, method=method,
            coordinate_transformation_mode=self.coordinate_transformation_mode,
            rounding_method=self.nearest_mode if self.mode == "nearest" else "")
