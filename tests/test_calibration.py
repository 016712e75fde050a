"""Calibration for int8 quantization: observers on known distributions and against ONNX Runtime's
calibrators, streaming, quantization parameters against ORT's compute_scale_zp, and
go.calibrate on LeNet-5 (ranges, serialization, bad batches)."""
from __future__ import annotations

import contextlib
import io
import itertools
import json

import numpy as np
import onnx
import pytest
from onnxruntime.quantization.calibrate import (CalibrationDataReader, CalibrationMethod,
                                                HistogramCollector, create_calibrator)
from onnxruntime.quantization.quant_utils import (compute_data_quant_params, compute_scale_zp,
                                                  get_qmin_qmax_for_qType)

import graphopt as go
from graphopt.errors import InputError, ModelFormatError, OptionError
from graphopt.quantization import activation_params, make_observer, quant_range, weight_params

N = 100_000


def observed(method: str, batches, **options):
    obs = make_observer(method, **options)
    for batch in batches:
        obs.observe(batch)
    return obs


def ort_histogram(method: str, batches, bins: int, percentile: float = 99.999):
    """ORT's HistogramCollector fed `batches` as ORT's HistogramCalibrater feeds it (asymmetric);
    its ranges and its (hist, edges, min, max, threshold)."""
    collector = HistogramCollector(method=method, symmetric=False, num_bins=bins,
                                   num_quantized_bins=128, percentile=percentile, scenario="same")
    with contextlib.redirect_stdout(io.StringIO()):   # ORT prints its progress
        for batch in batches:
            collector.collect({"x": [batch]})
        result = collector.compute_collection_result()["x"]
    return (float(result[0]), float(result[1])), collector.get_histogram_dict()["x"]


def fake_quant_mse(x: np.ndarray, lo: float, hi: float, dtype: str, symmetric: bool) -> float:
    """Mean squared error of quantizing `x` over [lo, hi] and back (QuantizeLinear semantics)."""
    scale, zero_point = activation_params(lo, hi, dtype, symmetric)
    qmin, qmax = quant_range(dtype, symmetric)
    q = np.clip(np.round(x / np.float64(scale)) + int(zero_point), qmin, qmax)
    return float(np.mean(((q - int(zero_point)) * np.float64(scale) - x) ** 2))


@pytest.fixture(scope="module")
def outlier_data() -> np.ndarray:
    """Standard normal values and three outliers each side at +-50."""
    rng = np.random.default_rng(7)
    return np.concatenate([rng.standard_normal(N), [50, 49, -50, -48]]).astype(np.float32)


# --- observers on known distributions --------------------------------------------------------

def test_uniform_every_method_keeps_the_range():
    data = np.random.default_rng(0).uniform(-1, 3, N).astype(np.float32)
    assert observed("minmax", [data]).range() == (float(data.min()), float(data.max()))
    for method in ("percentile", "entropy", "mse"):
        lo, hi = observed(method, [data]).range()
        # No tails to cut: within 1% of [-1, 3] (the 99.999th percentile of U(-1, 3) is 2.99998).
        assert lo == pytest.approx(-1, abs=0.04) and hi == pytest.approx(3, abs=0.04), method


def test_outliers_are_clipped_by_histogram_methods_not_by_minmax(outlier_data):
    assert observed("minmax", [outlier_data]).range() == (-50.0, 50.0)
    # 99.99: 5 values of 100,004 cut from each end, more than the outliers. The 0.005th and
    # 99.995th percentiles of N(0, 1) are -+3.89; the sample's own are np.percentile's.
    lo, hi = observed("percentile", [outlier_data], percentile=99.99).range()
    exact = np.percentile(outlier_data, [0.005, 99.995])
    assert abs(lo - exact[0]) < 100 / 2048 and abs(hi - exact[1]) < 100 / 2048
    assert -4.4 < lo < -3.4 and 3.4 < hi < 4.4
    lo, hi = observed("entropy", [outlier_data]).range()
    assert -20 < lo < -3 and 3 < hi < 20
    # mse clips every outlier, but weighs their squared clipping error against the rounding
    # error of 100,000 values: with 8 bits and this few of them, it stops far from the bulk.
    lo, hi = observed("mse", [outlier_data]).range()
    assert -48 < lo < -20 and 20 < hi < 49


def test_percentile_of_relu_output_starts_at_zero():
    data = np.maximum(np.random.default_rng(1).standard_normal(N), 0).astype(np.float32)
    lo, hi = observed("percentile", [data], percentile=99.9).range()
    assert lo == 0.0
    assert hi == pytest.approx(np.percentile(data, 99.95), abs=2 * float(data.max()) / 2048)


@pytest.mark.parametrize("dtype, symmetric", [("uint8", False), ("int8", True)])
@pytest.mark.parametrize("case", ["outliers", "relu", "skewed"])
def test_mse_range_is_as_good_as_a_brute_force_search(case, dtype, symmetric, outlier_data):
    """The observer's range quantizes the raw data within 2% of the best range a grid search
    finds (coarse, then refined around the best: 2 x 24 x 24 ranges for uint8, 2 x 200
    thresholds for int8), and better than minmax."""
    rng = np.random.default_rng(2)
    data = {"outliers": outlier_data,
            "relu": np.maximum(rng.standard_normal(N), 0),
            "skewed": np.concatenate([rng.standard_normal(N), rng.exponential(5, 200)]),
            }[case].astype(np.float32)
    x = data.astype(np.float64)
    lo, hi = observed("mse", [data], dtype=dtype, symmetric=symmetric).range()
    found = fake_quant_mse(x, lo, hi, dtype, symmetric)
    if symmetric:
        def error(a):
            return fake_quant_mse(x, -a, a, dtype, symmetric)
        step = float(np.abs(x).max()) / 200
        a = min(np.linspace(step, 200 * step, 200), key=error)
        best = min(error(t) for t in np.linspace(max(a - step, step / 10), a + step, 200))
    else:
        def error(ends):
            return fake_quant_mse(x, *ends, dtype, symmetric)
        los, his = np.linspace(min(x.min(), 0), 0, 24), np.linspace(0, x.max(), 25)[1:]
        a, b = min(itertools.product(los, his), key=error)
        da, db = los[1] - los[0], his[1] - his[0]
        best = min(error(ends) for ends in itertools.product(
            np.linspace(a - da, min(a + da, 0), 24), np.linspace(max(b - db, db / 10), b + db, 24)))
    assert found <= 1.02 * best
    assert found < fake_quant_mse(x, x.min(), x.max(), dtype, symmetric)


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_degenerate_data(method):
    assert observed(method, []).range() == (0.0, 0.0)
    assert observed(method, [np.zeros(100), np.zeros((2, 0))]).range() == (0.0, 0.0)
    assert observed(method, [np.full(1000, 3.0)]).range() == (3.0, 3.0)
    assert observed(method, [np.full(1000, -2.5)]).range() == (-2.5, -2.5)
    for bad in (np.nan, np.inf, -np.inf, 1e39):
        with pytest.raises(InputError, match="expected finite values, found"):
            observed(method, [np.array([0.0, 1.0, bad])])


@pytest.mark.parametrize("method, options, match", [
    ("minmax", {"bins": 10}, "unknown option"),
    ("histogram", {}, "expected a calibration method in"),
    ("percentile", {"percentile": 0}, r"percentile in \(0, 100\]"),
    ("percentile", {"percentile": 101}, r"percentile in \(0, 100\]"),
    ("entropy", {"bins": 2047}, "even integer"),
    ("entropy", {"bins": 256, "quantized_bins": 512}, "quantized_bins <= bins"),
    ("mse", {"dtype": "int4"}, "quantized dtype"),
])
def test_bad_observer_options(method, options, match):
    with pytest.raises(OptionError, match=match):
        make_observer(method, **options)


# --- streaming --------------------------------------------------------------------------------

def test_streaming_matches_one_batch():
    rng = np.random.default_rng(3)
    # Widths growing from batch to batch: the histogram is merged several times.
    parts = [rng.standard_normal(n).astype(np.float32) * s
             for n, s in [(7, 0.1), (500, 1), (3000, 3), (20000, 2), (5000, 40)]]
    data = np.concatenate(parts)
    assert observed("minmax", parts).range() == observed("minmax", [data]).range()
    streamed = observed("percentile", parts)
    # The histogram stays `bins` long; merging kept every count in its bin.
    assert streamed.histogram.shape == (2048,)
    expected = np.histogram(data, 2048, range=(-streamed.threshold, streamed.threshold))[0]
    np.testing.assert_array_equal(streamed.histogram, expected)
    width = 2 * float(streamed.threshold) / 2048
    for method in ("percentile", "mse"):
        lo, hi = observed(method, parts).range()
        one_lo, one_hi = observed(method, [data]).range()
        assert abs(lo - one_lo) <= 2 * width and abs(hi - one_hi) <= 2 * width, method
    # When the first batch holds the largest magnitude, nothing is merged: identical ranges.
    first = [data[np.argsort(-np.abs(data))[:1000]], *np.array_split(data, 9)]
    for method in ("percentile", "entropy", "mse"):
        assert observed(method, first).range() == observed(method, [np.concatenate(first)]).range()


def test_ranges_many_orders_of_magnitude_apart():
    """A batch far beyond the histogram merges all its bins at once; denormal magnitudes and
    values near float32's largest stay within what np.histogram can bin."""
    parts = [np.array([1e-44, -3e-45]), np.array([1e3, 2.0, -7.0]), np.array([8e37, 0.0])]
    data = np.concatenate(parts).astype(np.float32)
    for method in ("percentile", "entropy", "mse"):
        obs = observed(method, parts)
        expected = np.histogram(data, 2048, range=(-obs.threshold, obs.threshold))[0]
        np.testing.assert_array_equal(obs.histogram, expected)
        lo, hi = obs.range()
        assert data.min() <= lo <= hi <= data.max()
        with pytest.raises(InputError, match=r"within \+-8.51e\+37"):
            obs.observe(np.array([-1e38]))
        assert obs.count == data.size


def test_zeros_before_the_first_nonzero_batch_are_kept():
    data = np.random.default_rng(4).standard_normal(5000).astype(np.float32)
    obs = observed("percentile", [np.zeros(300), data])
    zero_bin = np.searchsorted(obs.edges, 0, side="right") - 1
    expected = np.histogram(data, 2048, range=(-obs.threshold, obs.threshold))[0]
    expected[zero_bin] += 300
    np.testing.assert_array_equal(obs.histogram, expected)
    assert obs.zeros == 300 and obs.count == 5300


# --- against ONNX Runtime's HistogramCollector -----------------------------------------------

@pytest.mark.parametrize("case, bins", [("outliers", 2048), ("relu", 2048), ("laplace", 1024)])
def test_entropy_and_percentile_match_onnxruntime(case, bins, outlier_data):
    """One batch: the same histogram as ORT's HistogramCollector, the same entropy range, and
    percentile cutting the same values as ORT (which takes the lower edge of the bin where its
    float cumulative fractions cross, graphopt interpolates in exact counts), within one bin of
    numpy's exact percentile."""
    rng = np.random.default_rng(5)
    data = {"outliers": outlier_data,
            "relu": np.maximum(rng.standard_normal(N), 0).astype(np.float32),
            "laplace": rng.laplace(size=N).astype(np.float32)}[case]
    ort_range, (hist, edges, *_) = ort_histogram("entropy", [data], bins)
    ours = observed("entropy", [data], bins=bins)
    np.testing.assert_array_equal(ours.histogram, hist)
    np.testing.assert_array_equal(ours.edges, edges)
    assert ours.range() == ort_range
    ort_range, _ = ort_histogram("percentile", [data], bins, percentile=99.99)
    lo, hi = observed("percentile", [data], bins=bins, percentile=99.99).range()
    for ours, theirs in zip((lo, hi), ort_range):
        assert np.count_nonzero((data > min(ours, theirs)) & (data < max(ours, theirs))) <= 2
    width = float(edges[1] - edges[0])
    exact = np.percentile(data, [0.005, 99.995])
    assert abs(lo - exact[0]) <= width and abs(hi - exact[1]) <= width


def test_onnxruntime_calibrators_on_the_exported_model(tmp_path):
    """ORT's MinMax and Percentile calibrators on go.save_onnx(lenet5) and go.calibrate on the
    graph give the same ranges for the same tensors (percentile within one bin)."""
    graph = go.zoo.lenet5(batch=2, activation="relu")
    rng = np.random.default_rng(6)
    batches = [{"input": rng.standard_normal((2, 1, 32, 32), dtype=np.float32)} for _ in range(3)]
    go.save_onnx(graph, tmp_path / "lenet5.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            return next(self.batches, None)

    for method, ort_method in [("minmax", CalibrationMethod.MinMax),
                               ("percentile", CalibrationMethod.Percentile)]:
        with contextlib.redirect_stdout(io.StringIO()):
            calibrator = create_calibrator(tmp_path / "lenet5.onnx", calibrate_method=ort_method,
                                           augmented_model_path=tmp_path / "augmented.onnx")
            calibrator.collect_data(Reader())
            ort_ranges = calibrator.compute_data()
        ours = go.calibrate(graph, batches, method)
        assert set(ort_ranges.keys()) == set(ours)
        for name in ours:
            ort_lo, ort_hi = (np.asarray(x).item() for x in ort_ranges[name].range_value)
            lo, hi = ours.range(name)
            vmin, vmax = ours[name].observed
            tolerance = 1e-6 * max(abs(vmin), abs(vmax)) + (
                2 * max(-vmin, vmax) / 2048 if method == "percentile" else 0)
            assert abs(lo - ort_lo) <= tolerance and abs(hi - ort_hi) <= tolerance, \
                (method, name, (lo, hi), (ort_lo, ort_hi))


# --- quantization parameters ------------------------------------------------------------------

RANGES = [(-1.0, 1.0), (0.0, 6.0), (-0.5, 6.0), (0.3, 2.0), (-3.0, -1.0), (0.0, 0.0),
          (5.0, 5.0), (-1e-40, 1e-40), (-2.5e-3, 7.1e-2), (-1e30, 3e30), (-7.7, 0.1)]
ONNX_TYPES = {"uint8": onnx.TensorProto.UINT8, "int8": onnx.TensorProto.INT8,
              "uint16": onnx.TensorProto.UINT16, "int16": onnx.TensorProto.INT16}


@pytest.mark.parametrize("dtype", list(ONNX_TYPES))
@pytest.mark.parametrize("symmetric", [False, True])
def test_activation_params_match_onnxruntime(dtype, symmetric):
    qmin, qmax = get_qmin_qmax_for_qType(ONNX_TYPES[dtype], symmetric=symmetric)
    assert quant_range(dtype, symmetric) == (int(qmin), int(qmax))
    for lo, hi in RANGES:
        zero_point, scale = compute_scale_zp(np.array(lo, np.float32), np.array(hi, np.float32),
                                             qmin, qmax, symmetric=symmetric)
        found = activation_params(lo, hi, dtype, symmetric)
        assert found[0].dtype == np.float32 and found[1].dtype == np.dtype(dtype)
        assert (found[0], found[1]) == (scale, zero_point), (lo, hi)


def test_activation_params_include_zero_exactly():
    for lo, hi in RANGES:
        scale, zero_point = activation_params(lo, hi)
        q = np.clip(np.round(np.float32(0) / scale) + int(zero_point), 0, 255)
        assert (q - int(zero_point)) * scale == 0.0
    assert activation_params(0.0, 0.0) == (1.0, 0)    # ORT's choice for an empty range


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_reduced_ranges_match_onnxruntime(dtype, symmetric):
    qmin, qmax = get_qmin_qmax_for_qType(ONNX_TYPES[dtype], reduce_range=True,
                                         symmetric=symmetric)
    assert quant_range(dtype, symmetric, reduce_range=True) == (int(qmin), int(qmax))


@pytest.mark.parametrize("per_channel, dtype, symmetric, reduce_range", [
    (True, "int8", True, False), (False, "int8", True, False), (True, "uint8", False, False),
    (False, "uint8", True, False), (True, "int8", True, True), (False, "int8", False, True)])
def test_weight_params_match_onnxruntime(per_channel, dtype, symmetric, reduce_range):
    weight = np.random.default_rng(8).standard_normal((6, 3, 3, 3)).astype(np.float32)
    weight[2] = 0                   # a channel of zeros: scale 1
    weight[4] = np.abs(weight[4])   # a positive channel
    scales, zero_points = weight_params(weight, dtype=dtype, per_channel=per_channel,
                                        symmetric=symmetric, reduce_range=reduce_range)
    slices = list(weight) if per_channel else [weight]
    expected = [compute_data_quant_params(s.ravel(), ONNX_TYPES[dtype], symmetric, reduce_range)
                for s in slices]
    assert scales.shape == zero_points.shape == ((6,) if per_channel else ())
    np.testing.assert_array_equal(scales.ravel(), [scale for _, scale in expected])
    np.testing.assert_array_equal(zero_points.ravel(), [zp for zp, _ in expected])
    assert scales.dtype == np.float32 and zero_points.dtype == np.dtype(dtype)


def test_weight_params_along_another_axis():
    weight = np.random.default_rng(9).standard_normal((4, 5)).astype(np.float32)
    scales, _ = weight_params(weight, axis=-1)
    np.testing.assert_array_equal(scales, np.float32(np.abs(weight).max(axis=0) / 127))
    assert weight_params(np.zeros((3, 0)))[0].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("input_scale", [1e-10, 1e-6, 0.02])
def test_weight_scales_raised_for_an_int32_bias_as_onnxruntime_raises_them(per_channel,
                                                                           input_scale):
    """Where input x weight scale is too fine a step for the bias in int32, the weight scale is
    raised as ORT's quantizer raises it; elsewhere it is left alone."""
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from graphopt.quantization.params import bias_safe_weight_scales
    rng = np.random.default_rng(10)
    weight = rng.standard_normal((5, 3, 3, 3)).astype(np.float32) * 0.1
    bias = (rng.standard_normal(5) * [0.5, 20, 0, 3, 1e-4]).astype(np.float32)
    scales, _ = weight_params(weight, per_channel=per_channel)
    x_scale = np.array(input_scale, np.float32)
    raised = bias_safe_weight_scales(scales, x_scale, bias)
    _, expected = QDQQuantizer._adjust_weight_scale_for_int32_bias(
        None, x_scale, scales.copy(), "w", onnx.numpy_helper.from_array(bias, "b"),
        per_channel)
    np.testing.assert_allclose(raised, expected, rtol=1e-6)   # ORT rounds some steps to float32
    assert raised.dtype == scales.dtype and raised.shape == scales.shape
    steps = np.round(bias / (x_scale * raised).astype(np.float64))
    assert np.abs(steps).max() < 2**31 - 1
    assert (raised != scales).any() == (input_scale < 1e-6)


@pytest.mark.parametrize("call, error, match", [
    (lambda: activation_params(1.0, -1.0), InputError, "lo <= hi"),
    (lambda: activation_params(np.nan, 1.0), InputError, "1 NaN"),
    (lambda: activation_params(0.0, 1e39), InputError, "1 infinite"),
    (lambda: activation_params(0.0, 1.0, dtype="int4"), OptionError, "quantized dtype"),
    (lambda: activation_params(0.0, 1.0, symmetric="yes"), OptionError, "bool"),
    (lambda: weight_params(np.array([[1.0, np.inf]])), InputError, "weights"),
    (lambda: weight_params(np.ones((2, 2)), axis=2), OptionError, r"axis in \[-2, 2\)"),
    (lambda: weight_params(np.ones((2, 2)), axis=0.5), OptionError, "integer axis"),
    (lambda: weight_params(np.ones((2, 2)), reduce_range=1), OptionError, "reduce_range.*bool"),
    (lambda: quant_range("int16", reduce_range=True), OptionError, "not to int16"),
])
def test_bad_quantization_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- go.calibrate -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lenet():
    graph = go.zoo.lenet5(batch=2, activation="relu")
    rng = np.random.default_rng(10)
    batches = [{"input": rng.standard_normal((2, 1, 32, 32), dtype=np.float32)} for _ in range(3)]
    return graph, batches


def test_calibrate_observes_every_activation(lenet):
    graph, batches = lenet
    seen = []
    calib = go.calibrate(graph, (b for b in batches), "minmax", progress=seen.append)
    assert seen == [0, 1, 2] and calib.batches == 3 and calib.samples == 6
    activations = [graph.inputs[0].name] + [n.output.name for n in graph.topological_order()]
    assert list(calib) == activations
    runs = [go.interpret(graph, b, keep=True) for b in batches]
    for name in activations:
        values = np.concatenate([run[name].ravel() for run in runs])
        entry = calib[name]
        assert entry.count == values.size
        assert entry.observed == entry.range == (float(values.min()), float(values.max()))
        assert name in calib.table()
    assert str(calib) == calib.table()
    assert "3 batches, 6 samples" in str(calib)


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_calibrate_chooses_ranges_within_what_it_saw(lenet, method):
    graph, batches = lenet
    calib = go.calibrate(graph, batches, method, bins=256)
    assert calib.options["bins"] == 256
    for entry in calib.values.values():
        (vmin, vmax), (lo, hi) = entry.observed, entry.range
        assert vmin <= lo <= hi <= vmax
    restored = go.Calibration.from_dict(json.loads(json.dumps(calib.to_dict())))
    assert restored == calib


def test_calibration_save_load_and_params(lenet, tmp_path):
    graph, batches = lenet
    calib = go.calibrate(graph, batches, "percentile", values=["conv1_0", "act1_1"],
                         percentile=99.9)
    assert list(calib) == ["conv1_0", "act1_1"]
    calib.save(tmp_path / "lenet5.json")
    loaded = go.Calibration.load(tmp_path / "lenet5.json")
    assert loaded == calib and loaded.options == {"percentile": 99.9, "bins": 2048}
    scale, zero_point = loaded.params("act1_1")
    assert (scale, zero_point) == activation_params(*calib.range("act1_1"))
    assert zero_point == 0   # a ReLU output starts at 0
    with pytest.raises(OptionError, match="no value named 'fc1_7'"):
        loaded.params("fc1_7")


def _nan_input(batch):
    batch["input"][0, 0, 3, 4] = np.nan
    return batch


@pytest.mark.parametrize("bad, match", [
    (lambda b: {}, r"batch 1: expected inputs \['input'\]"),
    (lambda b: {**b, "extra": b["input"]}, "batch 1: .*unknown"),
    (lambda b: {"input": b["input"][:1]}, r"batch 1: input 'input': expected float32\[2,1,32,32\]"),
    (lambda b: {"input": b["input"].astype(np.float64)}, "batch 1: input 'input': expected"),
    (lambda b: [b["input"]], "batch 1: expected a dict"),
    (_nan_input, r"batch 1: input 'input': expected finite values, found 1 NaN"),
    (lambda b: {"input": np.full_like(b["input"], 3e38)},   # finite, but conv1 overflows
     r"node 'conv1' \(conv2d\): batch 1: value 'conv1_0': expected finite values"),
])
def test_bad_batches_name_the_batch(lenet, bad, match):
    graph, batches = lenet
    broken = [batches[0], bad({"input": batches[1]["input"].copy()}), batches[2]]
    with pytest.raises(InputError, match=match):
        go.calibrate(graph, broken)


def test_values_infinite_by_design_are_left_without_a_range(tmp_path):
    """A pad with -inf before a max pool: its output has no range (the calibration says so) and
    the layers around it still quantize; an overflow elsewhere is still a bad batch."""
    with go.dsl.Builder("inf_pad", seed=0) as b:
        x = b.input("input", (1, 4, 8, 8))
        y = go.dsl.relu(go.dsl.conv2d(x, 8, 3, padding=1, name="conv1"), name="act1")
        y = go.dsl.max_pool2d(go.dsl.pad(y, (1, 1, 1, 1), value=-np.inf, name="pad"), 3,
                              name="pool")
        graph = b.output(go.dsl.conv2d(y, 8, 3, name="conv2"))
    rng = np.random.default_rng(0)
    batches = [{"input": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(3)]
    calib = go.calibrate(graph, batches)
    pad_out = graph.node("pad").output.name
    assert calib.unbounded == (pad_out,) and pad_out not in calib
    assert graph.node("pool").output.name in calib
    assert f"not finite, left without a range: {pad_out}" in str(calib)
    calib.save(tmp_path / "c.json")
    assert go.Calibration.load(tmp_path / "c.json") == calib
    q = go.quantize(graph, calib).graph
    assert [n.op_name for n in q.nodes].count("qlinear_conv2d") == 2
    assert go.compare(graph, q, batches[0]).ok


@pytest.mark.parametrize("batches, error, match", [
    ([], InputError, "at least one batch, found none"),
    (iter(()), InputError, "at least one batch"),
    ({"input": np.zeros((2, 1, 32, 32), np.float32)}, InputError, "one dict; pass"),
    (3, InputError, "iterable of batches"),
])
def test_calibrate_refuses_no_batches(lenet, batches, error, match):
    with pytest.raises(error, match=match):
        go.calibrate(lenet[0], batches)


@pytest.mark.parametrize("options, match", [
    ({"method": "kl"}, "calibration method"),
    ({"method": "minmax", "percentile": 99}, "unknown option"),
    ({"values": ["nope"]}, "no values named"),
    ({"values": ["conv1.weight"]}, "are constants"),
    ({"values": []}, "at least one value name"),
    ({"progress": 3}, "progress to be a callable"),
])
def test_calibrate_refuses_bad_options(lenet, options, match):
    graph, batches = lenet
    assert "conv1.weight" in graph.constants
    with pytest.raises(OptionError, match=match):
        go.calibrate(graph, batches, **options)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(format="onnx"), "format 'graphopt.calibration'"),
    (lambda d: d.update(version=2), "version 1"),
    (lambda d: d.update(method="kl"), "calibration method"),
    (lambda d: d["options"].update(bins=3), "even integer"),
    (lambda d: d.pop("values"), "a field 'values'"),
    (lambda d: d["values"][0].update(lo=float("nan")), "'lo' to be a finite number"),
    (lambda d: d["values"][0].update(lo=5.0, hi=1.0), "lo <= hi"),
    (lambda d: d["values"][0].update(count=-1), "integer >= 0"),
    (lambda d: d["values"][0].update(count=True), "'count' to be an integer"),
    (lambda d: d["values"].append(dict(d["values"][0])), "each value once"),
])
def test_malformed_calibration_data(lenet, edit, match):
    graph, batches = lenet
    data = go.calibrate(graph, batches[:1], "percentile").to_dict()
    edit(data)
    with pytest.raises(ModelFormatError, match=match):
        go.Calibration.from_dict(data)


def test_load_refuses_files_that_are_not_calibrations(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="is not JSON"):
        go.Calibration.load(tmp_path / "bad.json")
    with pytest.raises(ModelFormatError, match="cannot read calibration"):
        go.Calibration.load(tmp_path / "missing.json")
