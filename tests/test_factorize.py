"""factorize and the insert_bottleneck pass, against the interpreter: full-rank factors reproduce
every kind of layer in both forms (plain and data-driven), the error falls as the rank grows,
the cheaper form is chosen, MACs and params drop, data-driven factors beat plain SVD on
correlated inputs, options are checked, and the result verifies, compiles and lines up with
the original layer by layer."""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphopt as go
from graphopt import dsl
from graphopt.analysis import count_macs, count_params
from graphopt.compression.factorize import (Factorizer, RankRule, _spectra, factor_layer,
                                            factorize, layer_moments)
from graphopt.errors import OptionError
from graphopt.passes import PassManager, optimize, probe_inputs
from graphopt.passes.insert_bottleneck import FORMS, insert_bottleneck


def run64(graph, inputs):
    return go.interpret(graph, inputs, dtype=np.float64)


def relative_error(expected: np.ndarray, found: np.ndarray) -> float:
    return float(np.abs(found - expected).max() / np.abs(expected).max())


def conv_net(cin=6, cout=10, kernel=3, stride=1, padding=1, dilation=1, bias=True,
             hw=(9, 9), batch=2):
    with dsl.Builder("conv", 1) as b:
        x = b.input("x", (batch, cin, *hw))
        return b.output(dsl.conv2d(x, cout, kernel, stride=stride, padding=padding,
                                   dilation=dilation, bias=bias, name="layer"))


def linear_net(features=12, out=20, bias=True):
    with dsl.Builder("linear", 2) as b:
        x = b.input("x", (16, features))
        return b.output(dsl.linear(x, out, bias=bias, name="layer"))


def conv_bn_net():
    with dsl.Builder("conv_bn", 3) as b:
        x = b.input("x", (2, 5, 8, 8))
        y = dsl.conv2d(x, 7, 3, padding=1, bias=False, name="layer")
        y = dsl.batch_norm(y, scale=np.linspace(0.5, 2, 7), mean=np.linspace(-1, 1, 7),
                           var=np.linspace(0.5, 3, 7), bias=np.linspace(-0.3, 0.4, 7))
        return b.output(dsl.relu(y))


def residual_block(channels=8, hw=8, batch=2, seed=4):
    """conv-bn-relu-conv-bn + identity, relu: fused into two fused_conv2d by the default
    pipeline, the second with the residual add and the relu."""
    with dsl.Builder("block", seed) as b:
        x = b.input("x", (batch, channels, hw, hw))
        y = dsl.relu(dsl.batch_norm(dsl.conv2d(x, channels, 3, padding=1, bias=False,
                                               name="conv1")))
        y = dsl.batch_norm(dsl.conv2d(y, channels, 3, padding=1, bias=False, name="conv2"))
        return b.output(dsl.relu(dsl.add(y, x)))


def fused_block():
    graph = optimize(residual_block()).graph
    fused = [n for n in graph.nodes if n.op_name == "fused_conv2d"]
    assert len(fused) == 2 and fused[-1].op.has_residual and fused[-1].op.activation
    return graph, fused[-1].name


def correlated_data(graph, rank=3, batches=2, seed=7, noise=0.01, block=1):
    """Inputs whose channels (features) mix `rank` sources (the same mixing for every seed):
    strongly correlated; each source constant over `block` x `block` pixels."""
    (x,) = graph.inputs
    mixing = np.random.default_rng(0).standard_normal((x.shape[1], rank))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        coarse = [-(-size // block) for size in x.shape[2:]]
        sources = rng.standard_normal((x.shape[0], rank, *coarse))
        for axis in range(2, len(x.shape)):
            sources = sources.repeat(block, axis).take(range(x.shape[axis]), axis)
        data = np.einsum("cr,nr...->nc...", mixing, sources)
        out.append({x.name: (data + noise * rng.standard_normal(x.shape)).astype(np.float32)})
    return out


def rewrite(graph, plan):
    return PassManager([insert_bottleneck(plan)]).run(graph)


# ---- full rank reproduces the layer -------------------------------------------------------------
LAYERS = {
    "conv 3x3": (lambda: (conv_net(), "layer")),
    "conv stride 2, uneven padding, dilation 2": (lambda: (conv_net(
        6, 10, 3, stride=2, padding=(1, 0, 2, 1), dilation=2, hw=(11, 10)), "layer")),
    "conv 5x3 no bias": (lambda: (conv_net(4, 9, (5, 3), padding=(2, 1), bias=False), "layer")),
    "conv 1x1 stride 2 padded": (lambda: (conv_net(8, 5, 1, stride=2, padding=1), "layer")),
    "conv wide: Cout > Cin*K*K": (lambda: (conv_net(2, 24, 3), "layer")),
    "linear": (lambda: (linear_net(), "layer")),
    "linear no bias, out < in": (lambda: (linear_net(20, 6, bias=False), "layer")),
    "fused_conv2d with residual and relu": fused_block,
    "conv then batch_norm": (lambda: (conv_bn_net(), "layer")),
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("data_driven", [False, True], ids=["svd", "data"])
@pytest.mark.parametrize("case", list(LAYERS))
def test_full_rank_reproduces_the_layer(case, form, data_driven):
    graph, layer = LAYERS[case]()
    node = graph.node(layer)
    if form == "reduce" and np.prod(node.inputs[1].shape[2:]) == 1:
        with pytest.raises(OptionError, match="linear or 1x1 layer is factored in form 'expand'"):
            factor_layer(node, form)
        return
    inputs = probe_inputs(graph, seed=5)
    moments = layer_moments(graph, [node], [probe_inputs(graph, seed=s) for s in range(3)]) \
        if data_driven else {}
    factors = factor_layer(node, form, moments=moments.get(layer))
    result = rewrite(graph, {layer: factors})
    factored = result.graph
    go.verify(factored)
    assert len(factored.nodes) == len(graph.nodes) + 1
    assert result.records[0].name == "insert_bottleneck" and result.records[0].changed
    assert "insert_bottleneck" in result.report
    assert not any(n.name == layer for n in factored.nodes)
    assert all(n.name.startswith(layer + ".") for n in factored.nodes
               if n.name not in {m.name for m in graph.nodes})
    expected, found = run64(graph, inputs), run64(factored, inputs)
    for name in graph.output_names:
        np.testing.assert_allclose(found[name], expected[name], rtol=1e-5,
                                   atol=1e-5 * np.abs(expected[name]).max())
    # the second factor stands for the layer: compare lines it up, not the first factor
    report = go.compare(graph, factored, inputs, per_layer=True)
    (lined_up,) = [lc for lc in report.layers if lc.name == node.provenance[-1]]
    second = factored.node(lined_up.node)
    assert second.inputs[0].producer.name.startswith(layer + ".") and report.ok


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cin=st.integers(1, 6), cout=st.integers(1, 6), kh=st.integers(1, 3),
       kw=st.integers(1, 3), stride=st.integers(1, 2), dilation=st.integers(1, 2),
       padding=st.tuples(*[st.integers(0, 2)] * 4), bias=st.booleans(),
       form=st.sampled_from(FORMS), data=st.booleans())
def test_full_rank_reproduces_random_convs(cin, cout, kh, kw, stride, dilation, padding, bias,
                                           form, data):
    graph = conv_net(cin, cout, (kh, kw), stride, padding, dilation, bias, hw=(7, 6))
    node = graph.node("layer")
    form = "expand" if kh == kw == 1 else form
    moments = layer_moments(graph, [node], [probe_inputs(graph, seed=s) for s in range(4)]) \
        if data else {}
    factored = rewrite(graph, {"layer": factor_layer(node, form, moments=moments.get("layer"))})
    inputs = probe_inputs(graph, seed=9)
    expected = run64(graph, inputs)["output"]
    found = run64(factored.graph, inputs)["output"]
    np.testing.assert_allclose(found, expected, atol=1e-5 * np.abs(expected).max() + 1e-7)
    again = rewrite(factored.graph, {"layer": factor_layer(node, form)})
    assert not again.records[0].changed      # the layer is gone: nothing left to replace


def test_plan_for_another_weight_shape_is_a_reported_miss():
    graph = conv_net()
    other = conv_net(cin=4)
    plan = {"layer": factor_layer(other.node("layer"), "reduce")}
    result = rewrite(graph, plan)
    assert not result.changed
    (rule, reason, _), = [(*key, n) for key, n in result.misses()]
    assert rule == "insert bottleneck" and "(10, 4, 3, 3)" in reason and "(10, 6, 3, 3)" in reason


# ---- rank, form, cost ---------------------------------------------------------------------------
def frobenius_error(graph, factors, batches):
    result = rewrite(graph, {"layer": factors}).graph
    num = den = 0.0
    for batch in batches:
        expected, found = run64(graph, batch)["output"], run64(result, batch)["output"]
        num += float(((found - expected) ** 2).sum())
        den += float((expected ** 2).sum())
    return np.sqrt(num / den)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("data_driven", [False, True], ids=["svd", "data"])
def test_error_falls_as_the_rank_grows(form, data_driven):
    graph = conv_net(12, 16, 3, hw=(8, 8))
    node = graph.node("layer")
    batches = correlated_data(graph, rank=8, noise=0.3)
    moments = layer_moments(graph, [node], batches)["layer"] if data_driven else None
    full = factor_layer(node, form, moments=moments).rank
    errors = [frobenius_error(graph, factor_layer(node, form, r, moments), batches)
              for r in range(1, full + 1)]
    assert errors[-1] < 1e-5
    # plain SVD minimizes the weight's error, not the outputs': allow a small wobble there
    slack = 1e-9 if data_driven and form == "expand" else 0.02
    assert all(b <= a + slack for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > errors[full // 2] > errors[-1]


def rank_of(change: str) -> tuple[int, int]:
    m = re.match(r"(?:kept: )?rank (\d+)/(\d+)", change)
    return int(m[1]), int(m[2])


# (cin, cout, kernel, stride): which form is cheaper at rank_ratio 0.5
FORM_CASES = [(64, 8, 3, 1), (8, 64, 3, 1), (32, 32, 3, 2), (16, 48, 5, 1)]


@pytest.mark.parametrize("cin, cout, kernel, stride", FORM_CASES)
def test_the_cheaper_form_is_chosen(cin, cout, kernel, stride):
    graph = conv_net(cin, cout, kernel, stride, kernel // 2, hw=(12, 12), batch=1)
    result = factorize(graph, rank_ratio=0.5)
    (change,) = result.layers
    h, w = 12, 12
    oh = ow = (12 + 2 * (kernel // 2) - kernel) // stride + 1
    r_reduce = round(0.5 * min(cin, cout * kernel * kernel))
    r_expand = round(0.5 * min(cout, cin * kernel * kernel))
    reduce = h * w * cin * r_reduce + oh * ow * r_reduce * cout * kernel * kernel
    expand = oh * ow * (r_expand * cin * kernel * kernel + cout * r_expand)
    original = oh * ow * cin * cout * kernel * kernel
    assert change.macs == (original, min(reduce, expand)) == \
        (count_macs(graph), count_macs(result.graph))
    form = "1x1 reduce" if reduce < expand else "1x1 expand"
    assert form in change.change
    assert rank_of(change.change)[0] == (r_reduce if reduce < expand else r_expand)
    assert change.params == (count_params(graph), count_params(result.graph))


def test_energy_rank_is_the_smallest_that_keeps_the_energy():
    graph = linear_net(24, 30)
    weight = graph.node("layer").inputs[1].data.astype(np.float64)
    energy = np.linalg.svd(weight, compute_uv=False) ** 2
    kept = np.cumsum(energy) / energy.sum()
    for fraction in (0.3, 0.6, 0.9):
        (change,) = factorize(graph, fraction).layers
        rank = int(np.argmax(kept >= fraction)) + 1
        assert rank_of(change.change) == (rank, 24)
        assert kept[rank - 1] >= fraction and (rank == 1 or kept[rank - 2] < fraction)


def test_a_layer_that_saves_nothing_is_kept_with_the_reason():
    graph = conv_net(6, 10, 3)
    result = factorize(graph, rank_ratio=0.95)
    (change,) = result.layers
    assert change.change.startswith("kept: rank ") and change.change.endswith("saves nothing")
    assert change.macs[0] == change.macs[1] and change.error is None
    assert not result.changed and result.graph.nodes[0].name == "layer"


def test_grouped_convs_are_left_alone():
    with dsl.Builder("grouped", 0) as b:
        x = b.input("x", (1, 8, 6, 6))
        y = dsl.conv2d(x, 8, 3, padding=1, groups=2, name="grouped")
        g = b.output(dsl.conv2d(y, 8, 3, padding=1, name="plain"))
    assert [c.layer for c in factorize(g, rank_ratio=0.25).layers] == ["plain"]
    named = factorize(g, rank_ratio=0.25, layers=["grouped", "plain"])
    grouped, plain = named.layers
    assert grouped.change == "kept: grouped conv (groups 2)"
    assert plain.change.startswith("rank 2/8")
    with pytest.raises(OptionError, match="grouped conv"):
        factor_layer(g.node("grouped"), "reduce")


def test_zoo_models_get_cheaper_and_still_compute():
    for graph in (go.zoo.lenet5(), go.zoo.deep_convnet()):
        result = factorize(graph, rank_ratio=0.25)
        go.verify(result.graph)
        layers = [n.name for n in graph.nodes if n.op_name in ("conv2d", "linear")]
        assert [c.layer for c in result.layers] == layers
        assert result.macs_ratio < 0.6 and result.params_ratio < 0.6
        changed = [c for c in result.layers if not c.change.startswith("kept")]
        assert sum(c.macs[0] - c.macs[1] for c in changed) == \
            count_macs(graph) - count_macs(result.graph)
        assert sum(c.params[0] - c.params[1] for c in changed) == \
            count_params(graph) - count_params(result.graph)
        assert all(0 < c.error < 1.5 for c in changed)
        report = result.report
        assert all(name in report for name in layers) and "insert_bottleneck" in report
        outputs = go.interpret(result.graph, probe_inputs(graph))
        assert all(np.isfinite(v).all() for v in outputs.values())


def test_fused_residual_block_keeps_its_epilogue():
    graph, layer = fused_block()
    result = factorize(graph, rank_ratio=0.5)
    factors = [n for n in result.graph.topological_order() if n.name.startswith(layer + ".")]
    assert [n.op_name for n in factors] == ["conv2d", "fused_conv2d"]
    assert factors[1].provenance == graph.node(layer).provenance
    fused = factors[1].op
    assert fused.has_residual and fused.activation is not None and fused.has_bias
    assert (result.graph.nodes[-1].outputs[0].name == graph.nodes[-1].outputs[0].name)
    assert all(n.op_name in ("conv2d", "fused_conv2d") for n in result.graph.nodes)


def test_batch_norm_after_a_factored_conv_still_folds():
    graph = conv_bn_net()
    factored = factorize(graph, rank_ratio=0.5).graph
    folded = optimize(factored).graph
    assert not any(n.op_name == "batch_norm" for n in folded.nodes)
    inputs = probe_inputs(graph)
    np.testing.assert_allclose(run64(folded, inputs)[graph.output_names[0]],
                               run64(factored, inputs)[graph.output_names[0]], rtol=1e-5,
                               atol=1e-5)


# ---- errors: measured, and data-driven beats plain SVD ------------------------------------------
@pytest.mark.parametrize("build", [lambda: conv_net(12, 16, 3, stride=2), lambda: linear_net()],
                         ids=["conv", "linear"])
def test_layer_error_is_the_relative_error_of_its_output(build):
    graph = build()
    batches = correlated_data(graph, rank=4, noise=0.2)
    for data in (None, batches):
        result = factorize(graph, rank_ratio=0.3, data=data)
        (change,) = result.layers
        diff = scale = 0.0
        for batch in batches if data is not None else [probe_inputs(graph)]:
            expected, found = run64(graph, batch)["output"], run64(result.graph, batch)["output"]
            diff = max(diff, np.abs(found - expected).max())
            scale = max(scale, np.abs(expected).max())
        assert change.error == pytest.approx(diff / scale, rel=1e-6)
        assert change.error > 1e-3


# (layer, form): ranks, and the largest data-driven / plain error ratio expected at them
BEATS = {
    # the input channels come from 3 sources: from rank 3 on (4 with an offset, one more
    # direction in form "reduce"), the data-driven factors are exact up to the noise; plain
    # SVD is not
    ("3x3", "reduce"): ((4, 5), 0.05),
    ("1x1", "expand"): ((3, 4), 0.05),
    ("linear", "expand"): ((3, 4), 0.05),
    # a 3x3 conv's responses mix 9 pixels of the 3 sources: they span far more than 3 dimensions
    ("3x3", "expand"): ((4, 6), 0.8),
}
BUILDS = {"3x3": lambda: conv_net(16, 24, 3, hw=(12, 12)),
          "1x1": lambda: conv_net(16, 24, 1, padding=0, hw=(12, 12)),
          "linear": lambda: linear_net(16, 24)}


@pytest.mark.parametrize("offset", [0.0, 3.0], ids=["centered", "offset"])
@pytest.mark.parametrize("layer, form", list(BEATS))
def test_data_driven_factors_beat_plain_svd_at_equal_rank(layer, form, offset):
    graph = BUILDS[layer]()
    node = graph.node("layer")
    # an offset, as after a relu
    fit, held_out = ([{k: v + np.float32(offset) for k, v in batch.items()} for batch in
                      correlated_data(graph, seed=s, block=4)] for s in (1, 2))
    moments = layer_moments(graph, [node], fit)["layer"]
    ranks, ratio = BEATS[layer, form]
    for rank in ranks:
        plain = frobenius_error(graph, factor_layer(node, form, rank), held_out)
        data = frobenius_error(graph, factor_layer(node, form, rank, moments), held_out)
        assert data < ratio * plain, (rank, data, plain)


def test_factorize_with_data_beats_plain_end_to_end():
    with dsl.Builder("two", 5) as b:
        x = b.input("x", (4, 16, 8, 8))
        y = dsl.relu(dsl.conv2d(x, 32, 3, padding=1, name="c1"))
        graph = b.output(dsl.conv2d(y, 32, 3, padding=1, name="c2"))
    fit, held_out = (correlated_data(graph, seed=s, block=4) for s in (3, 4))
    plain = factorize(graph, rank_ratio=0.25)
    data = factorize(graph, rank_ratio=0.25, data=fit)
    assert [c.change for c in plain.layers] == [c.change for c in data.layers]
    assert plain.macs_ratio == data.macs_ratio < 0.5

    def error(result):
        return max(relative_error(run64(graph, b)["output"], run64(result.graph, b)["output"])
                   for b in held_out)
    assert error(data) < 0.7 * error(plain)
    # c1 reads the correlated input itself: its data-driven factors (rank 4 > 3 sources) are
    # exact up to the noise
    only_c1 = [factorize(graph, rank_ratio=0.25, layers=["c1"], data=d) for d in (None, fit)]
    assert error(only_c1[1]) < 0.05 * error(only_c1[0])
    # energy from the data's spectrum: correlated inputs need far lower ranks
    ranks = [rank_of(c.change)[0] for c in factorize(graph, 0.9, data=fit).layers]
    plain_ranks = [rank_of(c.change)[0] for c in factorize(graph, 0.9).layers]
    assert all(r < p for r, p in zip(ranks, plain_ranks)) and ranks[0] <= 4


@pytest.mark.parametrize("offset", [0.0, 3.0, 30.0])
def test_energy_is_a_fraction_of_the_responses_variance(offset):
    """After a relu the mean input holds most of the uncentered energy; the rank must not
    collapse to the mean's direction: with inputs from 3 sources, rank 3 (4: one more for the
    mean in form "reduce") keeps 99 % of the variance whatever the offset."""
    graph = conv_net(16, 24, 3, hw=(12, 12))
    node = graph.node("layer")
    data = [{k: v + np.float32(offset) for k, v in batch.items()}
            for batch in correlated_data(graph, block=4)]
    moments = layer_moments(graph, [node], data)["layer"]
    rule = RankRule.of(0.99, None)
    ranks = {s.form: rule.rank("layer", s) for s in _spectra(node, moments)}
    assert ranks["reduce"] in ((3, 4) if offset else (3,))
    assert ranks["expand"] > 3       # 3x3 responses mix 9 pixels of each source
    plain = {s.form: rule.rank("layer", s) for s in _spectra(node, None)}
    assert plain["reduce"] > 10 and plain["expand"] > ranks["expand"]   # random weights


def test_too_few_samples_are_said():
    graph = linear_net(12, 20)      # 16 rows of data for 20 output features
    result = factorize(graph, 0.9, data=correlated_data(graph, batches=1))
    assert "layer: no more responses in the data than output channels" in result.report
    more = factorize(graph, 0.9, data=correlated_data(graph, batches=2))
    assert "no more responses" not in more.report


def test_check_reports_the_output_error():
    graph = conv_net(12, 16, 3)
    result = factorize(graph, rank_ratio=0.3, check=True)
    inputs = probe_inputs(graph)
    error = relative_error(run64(graph, inputs)["output"], run64(result.graph, inputs)["output"])
    assert f"output error end to end: {error:.3g}" in result.report


# ---- options ------------------------------------------------------------------------------------
def two_convs():
    with dsl.Builder("two", 6) as b:
        x = b.input("x", (1, 16, 8, 8))
        y = dsl.relu(dsl.conv2d(x, 32, 3, padding=1, name="c1"), name="act")
        y = dsl.conv2d(y, 32, 3, padding=1, name="c2")
        return b.output(dsl.linear(dsl.flatten(y), 10, name="fc"))


def test_mappings_name_the_layers_and_their_values():
    graph = two_convs()
    result = factorize(graph, rank_ratio={"c2": 0.25, "fc": 0.1})
    assert [c.layer for c in result.layers] == ["c2", "fc"]
    assert [rank_of(c.change) for c in result.layers] == [(8, 32), (1, 10)]
    assert graph.node("c1").op is result.graph.node("c1").op
    by_energy = factorize(graph, energy={"c1": 0.5, "c2": 0.99})
    (c1, c2) = by_energy.layers
    assert rank_of(c1.change)[0] < rank_of(c2.change)[0]
    assert [c.layer for c in factorize(graph, 0.5, layers=["c2"]).layers] == ["c2"]
    assert [c.layer for c in factorize(graph, rank_ratio={"c1": 0.5, "c2": 0.5},
                                       layers=["c2", "fc"]).layers] == ["c2"]


def test_a_factorizer_keeps_its_spectra_across_calls():
    graph = two_convs()
    data = correlated_data(graph, block=4)
    factorizer = Factorizer(graph, data)
    first = factorizer.spectra(graph.node("c2"))
    for options in (dict(rank_ratio=0.25), dict(energy={"c1": 0.5}), dict(energy=0.9)):
        assert factorizer.factorize(**options).layers == \
            factorize(graph, **options, data=data).layers
    assert factorizer.spectra(graph.node("c2")) is first


@pytest.mark.parametrize("options, message", [
    (dict(energy=0), "energy in \\(0, 1\\], found 0"),
    (dict(energy=1.5), "found 1.5"),
    (dict(energy=-0.1), "found -0.1"),
    (dict(energy=True), "found True"),
    (dict(energy="0.9"), "found '0.9'"),
    (dict(energy=float("nan")), "found nan"),
    (dict(rank_ratio=0), "rank_ratio in \\(0, 1\\]"),
    (dict(rank_ratio=1.01), "found 1.01"),
    (dict(energy=0.9, rank_ratio=0.5), "not both"),
    (dict(energy={"c1": 2}), "for layer 'c1' in \\(0, 1\\], found 2"),
    (dict(energy={"nope": 0.5}), "found 'nope'"),
    (dict(energy={1: 0.5}), "found the key 1"),
    (dict(layers=["c1", "missing"]), "found 'missing'; its layers: c1, c2, fc"),
    (dict(layers=["act"]), "found 'act' \\(relu\\)"),
    (dict(layers="act"), "found 'act' \\(relu\\)"),
])
def test_bad_options_raise_option_error(options, message):
    with pytest.raises(OptionError, match=message):
        factorize(two_convs(), **options)


def test_factor_layer_checks_its_arguments():
    node = two_convs().node("c1")
    with pytest.raises(OptionError, match="form one of reduce, expand, found 'sideways'"):
        factor_layer(node, "sideways")
    with pytest.raises(OptionError, match="rank in \\[1, 16\\], found 17"):
        factor_layer(node, "reduce", 17)


# ---- compiled -----------------------------------------------------------------------------------
def test_factored_graph_compiles_and_matches_the_interpreter():
    pytest.importorskip("tvm")
    graph, _ = fused_block()
    result = factorize(graph, rank_ratio=0.5)
    assert result.changed
    inputs = probe_inputs(graph)
    model = go.compile(result.graph, "cpu")
    found = model.run(inputs)
    expected = go.interpret(result.graph, inputs)
    for name in graph.output_names:
        np.testing.assert_allclose(found[name], expected[name], rtol=1e-4, atol=1e-4)


def test_budget_picks_the_lowest_energy_per_layer_within_it():
    from graphopt.evaluation import Evaluator
    graph = go.zoo.deep_convnet()
    data = [probe_inputs(graph, seed=s) for s in range(3)]
    result = factorize(graph, budget=0.1, data=data)
    assert Evaluator(graph, data, None)(result.graph).error <= 0.1
    assert result.macs_ratio < 1.0
    assert "budget: error <= 0.1: met" in result.report
    tighter = factorize(graph, budget=0.01, data=data)
    assert tighter.macs_ratio >= result.macs_ratio


@pytest.mark.parametrize("options, message", [
    ({"budget": 0.1}, "needs eval_inputs"),
    ({"budget": -1.0, "data": None}, "non-negative budget"),
    ({"budget": 0.1, "rank_ratio": 0.5}, "no rank_ratio"),
])
def test_budget_options_are_checked(options, message):
    graph = go.zoo.lenet5()
    with pytest.raises(go.OptionError, match=message):
        factorize(graph, **options)


def test_layers_that_save_little_stay_one_kernel():
    graph = go.zoo.deep_convnet()
    result = factorize(graph, 0.95)
    everything = factorize(graph, 0.95, min_saving=0.0)
    for change in result.layers:
        if not change.change.startswith("kept"):
            assert change.macs[1] <= 0.8 * change.macs[0]
    small = [c for c in result.layers if "saves only" in c.change]
    assert small and all(c.macs[0] == c.macs[1] for c in small)
    assert everything.macs_ratio < result.macs_ratio
    with pytest.raises(go.OptionError, match="min_saving"):
        factorize(graph, 0.9, min_saving=1.0)
