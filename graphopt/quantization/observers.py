"""Observers: fed a tensor's values batch by batch, they choose the range it is quantized over.

    obs = make_observer("entropy")        # or "minmax", "percentile", "mse"; options as keywords
    for batch in batches:
        obs.observe(activation(batch))
    lo, hi = obs.range()

Memory does not grow with the number of batches: `minmax` keeps two numbers, the others one
histogram of a fixed number of bins over [-threshold, threshold] (ONNX Runtime's layout, the
first batch's largest magnitude as threshold). When a batch reaches past it, the bins are merged
k at a time into a histogram k times as wide (k the smallest integer that covers the batch):
old bins nest exactly in the new ones, so no count is split or guessed, and the resolution is
never worse than half of what the final range alone would give. ORT widens by appending bins
of the same width instead, so its histogram grows with the range.

Every observer works in float32 and refuses NaN and infinite values (an InputError): one of
them would otherwise stretch or poison every range computed after it.
"""
from __future__ import annotations

import inspect
import math
from typing import ClassVar

import numpy as np

from ..errors import InputError, OptionError
from ..ir import FLOAT_DTYPES
from .params import check_finite, quant_range


_TINY = float(np.finfo(np.float32).tiny)
_LARGEST = np.float32(np.finfo(np.float32).max / 4)


def _positive_even(value, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < 2 or value % 2:
        raise OptionError(f"expected {what} to be an even integer >= 2, found {value!r}")
    return int(value)


class Observer:
    """Tracks the count, minimum and maximum of the values seen; subclasses choose the range."""

    method: ClassVar[str]

    def __init__(self) -> None:
        self.count = 0
        self.minimum = math.inf
        self.maximum = -math.inf

    @property
    def options(self) -> dict:
        """The options this observer was made with (keywords of `make_observer`)."""
        return {}

    @property
    def observed(self) -> tuple[float, float]:
        """(min, max) of every value seen; (0, 0) before any."""
        return (self.minimum, self.maximum) if self.count else (0.0, 0.0)

    def observe(self, array) -> None:
        """Add the values of `array` (any shape; empty arrays are ignored)."""
        values = np.asarray(array)
        if values.dtype.kind not in "fiu" and str(values.dtype) not in FLOAT_DTYPES:
            raise InputError(f"{self.method} observer: expected real numbers, found an array of "
                             f"{values.dtype}")
        with np.errstate(over="ignore"):   # beyond float32 becomes inf, refused below
            values = values.astype(np.float32, copy=False).ravel()
        if values.size == 0:
            return
        lo, hi = values.min(), values.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            check_finite(values)
        self._update(values, float(lo), float(hi))
        self.count += values.size
        self.minimum = min(self.minimum, float(lo))
        self.maximum = max(self.maximum, float(hi))

    def _update(self, values: np.ndarray, lo: float, hi: float) -> None:
        """Subclasses add `values` (finite float32, flat, non-empty) to their state."""

    def range(self) -> tuple[float, float]:
        """The chosen (lo, hi); (0, 0) before any value."""
        return self.observed


class MinMaxObserver(Observer):
    """The range is the smallest and largest value seen (ORT's MinMaxCalibrater, without its
    moving average): nothing is clipped, an outlier widens the range."""

    method = "minmax"


class HistogramObserver(Observer):
    """A histogram of `bins` equal bins over [-threshold, threshold], as ORT's HistogramCollector
    (`collect_value`) builds it, widened by merging bins (see the module's docstring)."""

    def __init__(self, bins: int = 2048) -> None:
        super().__init__()
        self.bins = _positive_even(bins, "bins")
        self.histogram: np.ndarray | None = None   # int64 counts, None while every value was 0
        self.threshold = np.float32(0)
        self.zeros = 0                             # values exactly 0 (exactly representable)

    @property
    def options(self) -> dict:
        return {"bins": self.bins}

    @property
    def edges(self) -> np.ndarray:
        """The bins' bounds, float32, computed as np.histogram computes them."""
        return np.linspace(-self.threshold, self.threshold, self.bins + 1, dtype=np.float32)

    def _count(self, values: np.ndarray) -> np.ndarray:
        return np.histogram(values, self.bins, range=(-self.threshold, self.threshold))[0]

    def _update(self, values: np.ndarray, lo: float, hi: float) -> None:
        magnitude = np.float32(max(-lo, hi))
        if magnitude > _LARGEST:
            raise InputError(f"expected values within +-{_LARGEST:.3g} (a histogram over twice "
                             f"their range must stay finite in float32), found {lo:.3g} to "
                             f"{hi:.3g}")
        self.zeros += int(np.count_nonzero(values == 0))
        if self.histogram is None:
            if magnitude == 0:
                return
            # np.histogram needs bins wider than float32's smallest normal number.
            self.threshold = max(magnitude, np.float32(_TINY * self.bins))
            self.histogram = self._count(values)
            # Every value seen before this batch was 0, which falls in the bin starting at 0.
            self.histogram[np.searchsorted(self.edges, 0, side="right") - 1] += self.count
            return
        if magnitude > self.threshold:
            self._widen(magnitude)
        self.histogram += self._count(values)

    def _widen(self, magnitude: np.float32) -> None:
        """Merge every k bins into one over [-k t, k t], the smallest k with k t >= magnitude."""
        k = math.ceil(float(magnitude) / float(self.threshold))
        # The old range sits (k - 1) * bins / 2 old bins from each end of the new one (bins is
        # even), so old bin j falls entirely in new bin (j + (k - 1) * bins / 2) // k, which is
        # bins / 2 + (j - bins / 2) // k: bins / 2 - 1 or bins / 2 alone once k >= bins / 2.
        half = self.bins // 2
        target = half + (np.arange(self.bins) - half) // min(k, self.bins)
        merged = np.zeros(self.bins, dtype=np.int64)
        np.add.at(merged, target, self.histogram)
        self.histogram = merged
        # k t rounded to float32 may fall a hair short of the magnitude; the bins must cover it.
        self.threshold = max(np.float32(k * float(self.threshold)), magnitude)

    def range(self) -> tuple[float, float]:
        if self.histogram is None:
            return self.observed
        # As ORT: a threshold from the bins never reaches beyond the values seen (and both ends
        # stay within them: a constant tensor's range is that constant).
        lo, hi = (min(max(float(end), self.minimum), self.maximum) for end in self._choose())
        return lo, hi

    def _choose(self) -> tuple[float, float]:
        raise NotImplementedError


class PercentileObserver(HistogramObserver):
    """Cuts (100 - percentile) / 2 percent of the values off each end (ORT's percentile method,
    asymmetric; 2048 bins as ORT's PercentileCalibrater). ORT takes the lower edge of the bin
    where its cumulative fractions (floats) cross the cut; here the crossing is found in exact
    counts and the value interpolated inside that bin."""

    method = "percentile"

    def __init__(self, percentile: float = 99.999, bins: int = 2048) -> None:
        super().__init__(bins)
        if isinstance(percentile, (bool, np.bool_)) or not isinstance(
                percentile, (int, float, np.integer, np.floating)) or not 0 < percentile <= 100:
            raise OptionError(f"expected a percentile in (0, 100], found {percentile!r}")
        self.percentile = float(percentile)

    @property
    def options(self) -> dict:
        return {"percentile": self.percentile, "bins": self.bins}

    def _choose(self) -> tuple[float, float]:
        cut = (100.0 - self.percentile) / 200.0
        return self.quantile(cut), self.quantile(1.0 - cut)

    def quantile(self, fraction: float) -> float:
        """The value below which `fraction` of the histogram lies: the values spread evenly
        within each bin, except the exact zeros, which sit at 0 first in theirs."""
        counts = self.histogram
        cumulative = np.cumsum(counts)
        target = fraction * cumulative[-1]
        j = min(int(np.searchsorted(cumulative, target)), self.bins - 1)
        below, spread = cumulative[j] - counts[j], counts[j]
        edges = self.edges.astype(np.float64)
        if edges[j] <= 0 < edges[j + 1] and self.zeros:
            if target - below <= self.zeros:
                return 0.0
            below, spread = below + self.zeros, spread - self.zeros
        inside = (target - below) / spread if spread else 0.0
        return float(edges[j] + min(max(inside, 0.0), 1.0) * (edges[j + 1] - edges[j]))


def _smooth(p: np.ndarray, eps: float = 1e-4) -> np.ndarray | None:
    """ORT's smooth_distribution: zeros become eps, taken evenly off the nonzero bins (float32).
    None when every bin is zero or the nonzero bins cannot pay for the zeros."""
    zeros = (p == 0).astype(np.float32)
    n_zeros = float(zeros.sum())
    n_nonzeros = p.size - n_zeros
    if not n_nonzeros:
        return None
    eps1 = eps * n_zeros / n_nonzeros
    smoothed = p.astype(np.float32) + (eps * zeros + (-eps1) * (1 - zeros))
    return smoothed if (smoothed > 0).all() else None


def _kl_divergence(p: np.ndarray, q: np.ndarray) -> np.float32:
    """KL(p || q) of two positive float32 histograms, normalised as ORT's `entropy` does."""
    p = p / p.sum(keepdims=True)
    q = q / q.sum(keepdims=True)
    return np.sum(p * np.log(p / q))


class EntropyObserver(HistogramObserver):
    """TensorRT's calibration: the threshold whose clipped histogram, requantized to
    `quantized_bins` levels, keeps the least KL divergence from the original (Migacz, "8-bit
    inference with TensorRT", 2017). The search is ORT's (`HistogramCollector.
    get_entropy_threshold`) step for step, on ORT's signed histogram, so one batch gives the
    same range as ORT: windows symmetric around the zero bin from `quantized_bins` bins to
    all of them, outliers folded into the end bins of the reference, each group's count spread
    (as an integer) over its nonzero bins, both smoothed. TensorRT's original spreads over the
    nonzero bins only, in floats, and picks somewhat tighter ranges. Defaults: 2048 bins,
    128 levels (TensorRT's; ORT's EntropyCalibrater defaults to 128 bins, which leaves one
    window, the full range). The divergence's minimum is flat and ragged, so the range moves by
    several percent with the histogram's resolution (ORT's, on the same data fed in one batch
    or in ten, too): streamed batches give one batch's range exactly only when the first holds
    the largest magnitude."""

    method = "entropy"

    def __init__(self, bins: int = 2048, quantized_bins: int = 128) -> None:
        super().__init__(bins)
        self.quantized_bins = _positive_even(quantized_bins, "quantized_bins")
        if self.quantized_bins > self.bins:
            raise OptionError(f"expected quantized_bins <= bins ({self.bins}), found "
                              f"{self.quantized_bins}")

    @property
    def options(self) -> dict:
        return {"bins": self.bins, "quantized_bins": self.quantized_bins}

    def _choose(self) -> tuple[float, float]:
        hist, levels = self.histogram, self.quantized_bins
        zero = self.bins // 2
        cumulative = np.concatenate([[0], np.cumsum(hist)])
        windows = range(levels // 2, zero + 1)
        divergence = np.empty(len(windows))
        for w, i in enumerate(windows):
            start, end = zero - i, min(zero + i + 1, self.bins)
            sliced = hist[start:end]
            reference = sliced.copy()
            reference[0] += cumulative[start]
            reference[-1] += cumulative[-1] - cumulative[end]
            merged = sliced.size // levels
            body = levels * merged
            groups = sliced[:body].reshape(levels, merged).sum(axis=1)
            groups[-1] += sliced[body:].sum()
            nonzero = np.count_nonzero(reference[:body].reshape(levels, merged), axis=1)
            candidate = np.zeros(sliced.size, dtype=np.int64)
            candidate[:body] = np.repeat(np.where(nonzero > 0, groups // np.maximum(nonzero, 1),
                                                  0), merged)
            p, q = _smooth(reference), _smooth(candidate)
            divergence[w] = np.inf if p is None or q is None else _kl_divergence(p, q)
        i = windows[int(np.argmin(divergence))]
        edges = self.edges
        return edges[zero - i], edges[min(zero + i + 1, self.bins)]


class MSEObserver(HistogramObserver):
    """The range with the least expected squared error once quantized to `dtype` (uint8
    asymmetric by default; `symmetric=True` for int8 activations): every pair of bin edges
    lo <= 0 <= hi (symmetric: every edge as the threshold) is tried at once. The error of a
    range is exact for the clipped values (at their bin centres) plus scale**2 / 12 for each
    value inside, the mean rounding error of values spread over a step; values exactly 0 are
    exact and cost nothing."""

    method = "mse"

    # Candidate pairs scored at once: bounds the temporary arrays to a few tens of MB.
    _CHUNK = 1 << 20

    def __init__(self, bins: int = 2048, dtype: str = "uint8", symmetric: bool = False) -> None:
        super().__init__(bins)
        qmin, qmax = quant_range(dtype, symmetric)
        self.dtype, self.symmetric, self.levels = dtype, bool(symmetric), qmax - qmin

    @property
    def options(self) -> dict:
        return {"bins": self.bins, "dtype": self.dtype, "symmetric": self.symmetric}

    def _choose(self) -> tuple[float, float]:
        edges = self.edges.astype(np.float64)
        centres = (edges[:-1] + edges[1:]) / 2
        counts = self.histogram.astype(np.float64)
        counts[np.searchsorted(edges, 0, side="right") - 1] -= self.zeros
        cumulative = np.concatenate([[0], np.cumsum(counts)])
        first = np.concatenate([[0], np.cumsum(counts * centres)])
        second = np.concatenate([[0], np.cumsum(counts * centres ** 2)])
        lowest, highest = min(self.minimum, 0.0), max(self.maximum, 0.0)

        def clipped(bound: np.ndarray, below: bool) -> tuple[np.ndarray, np.ndarray]:
            """Squared distance to `bound` of the values beyond it, and how many they are."""
            if below:
                k = np.searchsorted(centres, bound, side="left")
                n, s1, s2 = cumulative[k], first[k], second[k]
            else:
                k = np.searchsorted(centres, bound, side="right")
                n, s1, s2 = (cumulative[-1] - cumulative[k], first[-1] - first[k],
                             second[-1] - second[k])
            return np.maximum(s2 - 2 * bound * s1 + bound ** 2 * n, 0.0), n

        inside_total = cumulative[-1]
        if self.symmetric:
            amax = max(-lowest, highest)
            bounds = np.unique(np.concatenate([np.minimum(np.abs(edges), amax), [amax]]))
            error_lo, n_lo = clipped(-bounds, True)
            error_hi, n_hi = clipped(bounds, False)
            step = 2 * bounds / self.levels
            error = error_lo + error_hi + step ** 2 / 12 * (inside_total - n_lo - n_hi)
            best = bounds[int(np.argmin(error))]
            return -best, best
        los = np.unique(np.concatenate([np.clip(edges, lowest, 0.0), [lowest, 0.0]]))
        his = np.unique(np.concatenate([np.clip(edges, 0.0, highest), [0.0, highest]]))
        error_lo, n_lo = clipped(los, True)
        error_hi, n_hi = clipped(his, False)
        best, best_error = (lowest, highest), math.inf
        rows = max(1, self._CHUNK // his.size)
        for r in range(0, los.size, rows):
            lo = los[r:r + rows, None]
            step = (his[None, :] - lo) / self.levels
            error = (error_lo[r:r + rows, None] + error_hi[None, :]
                     + step ** 2 / 12 * (inside_total - n_lo[r:r + rows, None] - n_hi[None, :]))
            index = np.unravel_index(int(np.argmin(error)), error.shape)
            if error[index] < best_error:
                best_error = float(error[index])
                best = (float(los[r + index[0]]), float(his[index[1]]))
        return best


OBSERVERS: dict[str, type[Observer]] = {
    cls.method: cls for cls in (MinMaxObserver, PercentileObserver, EntropyObserver, MSEObserver)}


def make_observer(method: str, **options) -> Observer:
    """A new observer for `method` ("minmax", "percentile", "entropy", "mse") with `options`;
    an unknown method or option is an OptionError listing the known ones."""
    if not isinstance(method, str) or method not in OBSERVERS:
        raise OptionError(f"expected a calibration method in {list(OBSERVERS)}, found {method!r}")
    cls = OBSERVERS[method]
    known = list(inspect.signature(cls).parameters)
    unknown = [name for name in options if name not in known]
    if unknown:
        raise OptionError(f"{method} calibration: unknown option(s) {unknown}; expected "
                          + (", ".join(known) if known else "none"))
    return cls(**options)
