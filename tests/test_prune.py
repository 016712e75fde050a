"""Structured channel pruning: the graph really shrinks, verifies and compiles, and computes
exactly what the original computes once the removed channels are ignored by their readers
(their weights zeroed): checked on the zoo's residual and inception networks and on random
CNNs with residual adds, concats and groups. Also the criteria, the options and unstructured
pruning."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import graphopt as go
from graphopt import dsl
from graphopt.compression.channels import channel_groups
from graphopt.compression.prune import Ranking, _families, _removed, prune, unit_scores
from graphopt.passes import probe_inputs
from test_passes_property import cnn_graphs


def masked(graph, groups, removed):
    """`graph` with every weight that reads a removed channel set to zero (the removed
    channels then cannot change any output)."""
    new = graph.copy()
    for node in new.nodes:
        if node.op_name not in ("conv2d", "fused_conv2d", "linear", "conv_transpose2d"):
            continue
        x, w = node.inputs[0], node.inputs[1]
        if x.name not in groups.channels or getattr(getattr(node.op, "conv", node.op),
                                                    "groups", 1) != 1:
            continue
        gone = [c for c in range(groups.channels[x.name])
                if groups.slot_root[(x.name, c)] in removed]
        if not gone:
            continue
        block = groups.block[x.name]
        data = w.data.copy()
        columns = [c * block + i for c in gone for i in range(block)]
        if node.op_name == "conv_transpose2d":
            data[columns] = 0
        else:
            data[:, columns] = 0
        c = new.add_constant(w.name, data)
        node.inputs[1] = c
        w.users.remove(node)
        c.users.append(node)
    return new


def assert_exact(graph, result, removed, groups):
    go.verify(result.graph)
    feeds = probe_inputs(graph)
    expected = go.interpret(masked(graph, groups, removed), feeds, dtype=np.float64)
    found = go.interpret(result.graph, feeds, dtype=np.float64)
    for name in graph.output_names:
        np.testing.assert_allclose(found[name], expected[name], rtol=1e-9, atol=1e-9)


def removed_units(graph, ratio, criterion="l1"):
    groups = channel_groups(graph)
    families = _families(groups, None)
    scores = Ranking(unit_scores(groups, families, criterion, [probe_inputs(graph)]))
    return groups, _removed(families, scores, {name: ratio for name in families})


SMALL = {"resnet18": {"image_size": 32}, "googlenet": {"image_size": 32}}


# GoogLeNet takes 13 s on a 2-core host: its concatenated families are also covered by the
# random graphs with concats below, by default.
@pytest.mark.parametrize("model", ["resnet18", pytest.param("googlenet", marks=pytest.mark.slow),
                                   "deep_convnet", "lenet5"])
def test_zoo_models_shrink_and_match_the_masked_original(model):
    graph = getattr(go.zoo, model)(**SMALL.get(model, {}))
    groups, removed = removed_units(graph, 0.4)
    result = prune(graph, 0.4)
    assert result.graph.num_params() < 0.7 * graph.num_params()
    assert result.macs_ratio < 0.7
    assert_exact(graph, result, removed, groups)


def test_residual_adds_prune_their_producers_together():
    graph = go.zoo.resnet18(image_size=32)
    result = prune(graph, 0.5)
    g = result.graph
    stem = g.node("conv1").output.shape[1]
    # Every producer of layer1's sums (the stem and each block's second conv) keeps the same
    # channels, and layer2's downsample and second convs keep theirs.
    assert g.node("layer1.0.conv2").output.shape[1] == stem == 32
    assert g.node("layer1.1.conv2").output.shape[1] == stem
    assert g.node("layer2.0.downsample.0").output.shape[1] == \
        g.node("layer2.0.conv2").output.shape[1] == 64
    assert "conv1 (+2 tied)" in result.report


def test_flatten_then_linear_loses_whole_feature_blocks():
    graph = go.zoo.lenet5()
    result = prune(graph, {"conv2": 0.5})
    fc1 = result.graph.node("fc1")
    assert fc1.inputs[1].shape == (120, 8 * 5 * 5)
    assert result.graph.node("conv2").output.shape[1] == 8


def test_depthwise_and_grouped_convs_lose_whole_groups():
    with dsl.Builder("groups", seed=1) as b:
        x = b.input("input", (1, 4, 8, 8))
        y = dsl.relu(dsl.conv2d(x, 16, 3, padding=1, name="expand"))
        y = dsl.relu(dsl.conv2d(y, 16, 3, padding=1, groups=16, name="depthwise"))
        y = dsl.relu(dsl.conv2d(y, 16, 1, groups=4, name="grouped"))
        graph = b.output(dsl.conv2d(y, 3, 1, name="head"))
    groups, removed = removed_units(graph, 0.5)
    result = prune(graph, 0.5)
    g = result.graph
    assert g.node("depthwise").op.groups == g.node("depthwise").output.shape[1] == 8
    assert g.node("expand").output.shape[1] == 8
    assert g.node("grouped").op.groups == 2 and g.node("grouped").output.shape[1] == 8
    assert_exact(graph, result, removed, groups)


def test_channels_that_reach_an_output_or_a_cross_channel_op_stay():
    graph = go.zoo.alexnet()       # lrn after the first two convs; logits are an output
    groups = channel_groups(graph)
    assert any("lrn" in reason for reason in groups.pin_reasons("features.0"))
    with pytest.raises(go.OptionError, match="pinned.*lrn"):
        prune(graph, {"features.0": 0.5})
    result = prune(graph, 0.5)
    assert result.graph.node("features.0").output.shape[1] == 96
    assert result.graph.node("classifier.6").output.shape[1] == 1000


def test_bn_gamma_ranks_by_the_batch_norm_scale():
    with dsl.Builder("slim", seed=0) as b:
        x = b.input("input", (1, 3, 6, 6))
        gamma = np.array([1.0, 0.01, 2.0, 0.02, 3.0, 0.5], "float32")
        y = dsl.relu(dsl.batch_norm(dsl.conv2d(x, 6, 3, padding=1, name="conv"), scale=gamma))
        graph = b.output(dsl.conv2d(y, 2, 1, name="head"))
    result = prune(graph, 0.5, criterion="bn_gamma")
    kept_gamma = result.graph.node(result.graph.node("conv").output.users[0].name).inputs[1].data
    np.testing.assert_array_equal(kept_gamma, [1.0, 2.0, 3.0])
    with pytest.raises(go.OptionError, match="batch_norm right after"):
        prune(go.zoo.lenet5(), 0.5, criterion="bn_gamma")


def test_activation_criterion_removes_channels_that_never_fire():
    with dsl.Builder("dead", seed=0) as b:
        x = b.input("input", (4, 2, 6, 6))
        bias = np.array([0, -100, 0, -100, 0, 0], "float32")   # channels 1 and 3 never fire
        w = np.random.default_rng(0).standard_normal((6, 2, 3, 3)).astype("float32") * 0.1
        y = dsl.relu(dsl.conv2d(x, 6, 3, padding=1, weight=w, bias_value=bias, name="conv"))
        graph = b.output(dsl.conv2d(y, 2, 1, name="head"))
    data = [{"input": np.random.default_rng(i).standard_normal((4, 2, 6, 6)).astype("float32")}
            for i in range(2)]
    result = prune(graph, 0.34, criterion="activation", data=data)
    np.testing.assert_array_equal(result.graph.node("conv").inputs[2].data, [0, 0, 0, 0])
    assert result.layers[0].error == 0.0       # nothing that fired was removed
    with pytest.raises(go.OptionError, match="needs data"):
        prune(graph, 0.5, criterion="activation")


def test_options_are_checked():
    graph = go.zoo.lenet5()
    with pytest.raises(go.OptionError, match="ratio in"):
        prune(graph, 1.0)
    with pytest.raises(go.OptionError, match="criterion"):
        prune(graph, 0.5, criterion="random")
    with pytest.raises(go.OptionError, match="no prunable layer named 'nope'"):
        prune(graph, {"nope": 0.5})
    with pytest.raises(go.OptionError, match="no conv or linear layer"):
        prune(graph, 0.5, layers=["nope"])
    with pytest.raises(go.OptionError, match="needs eval_inputs"):
        prune(graph, budget=0.1)
    calib = go.calibrate(graph, [probe_inputs(graph)])
    with pytest.raises(go.OptionError, match="prune the float graph, then quantize"):
        prune(go.quantize(graph, calib).graph, 0.5)


def test_input_graph_is_unchanged_and_ratio_zero_changes_nothing():
    graph = go.zoo.deep_convnet()
    before = repr(graph)
    result = prune(graph, 0.0)
    assert repr(graph) == before
    assert result.graph.num_params() == graph.num_params()
    feeds = probe_inputs(graph)
    assert go.compare(graph, result.graph, feeds).ok


def test_budget_keeps_the_output_error_within_it():
    graph = go.zoo.deep_convnet()
    data = [probe_inputs(graph, seed=s) for s in range(2)]
    result = prune(graph, budget=0.2, data=data)
    from graphopt.evaluation import Evaluator
    evaluate = Evaluator(graph, data, None)
    assert evaluate(result.graph).error <= 0.2
    assert result.graph.num_params() < graph.num_params()
    assert "budget: error <= 0.2: met" in result.report


def test_unstructured_pruning_reports_sparsity_without_shrinking():
    graph = go.zoo.lenet5()
    result = prune(graph, 0.8, structured=False)
    w = result.graph.node("conv2").inputs[1].data
    assert abs(np.mean(w == 0) - 0.8) < 0.01
    assert result.graph.num_params() == graph.num_params()
    assert "sparsity 80%" in result.report and "no speed-up" in result.report
    kept = np.abs(w[w != 0]).min()
    dropped = np.abs(graph.node("conv2").inputs[1].data[w == 0]).max()
    assert kept >= dropped


@pytest.mark.parametrize("model", ["deep_convnet", pytest.param("resnet18",
                                                                  marks=pytest.mark.slow)])
def test_pruned_models_compile_and_match_the_interpreter(model):
    graph = getattr(go.zoo, model)()
    pruned = prune(graph, 0.3).graph
    feeds = probe_inputs(pruned)
    report = go.compare(pruned, go.compile(pruned, "cpu"), feeds)
    assert report.ok, report


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(graph=cnn_graphs())
def test_random_cnns_prune_to_the_masked_original(graph):
    groups, removed = removed_units(graph, 0.5)
    result = prune(graph, 0.5)
    assert_exact(graph, result, removed, groups)


def test_multiple_of_rounds_each_family_to_whole_vectors():
    graph = go.zoo.deep_convnet()
    result = prune(graph, 0.4, multiple_of=8)
    widths = [result.graph.node(f"conv{i}").output.shape[1] for i in range(1, 7)]
    assert widths == [8, 8, 24, 24, 40, 40]    # 10, 20, 39 kept -> nearest multiples (ties up)
    assert result.graph.node("fc1").output.shape[1] == 32
    with pytest.raises(go.OptionError, match="multiple_of"):
        prune(graph, 0.4, multiple_of=0)


@settings(max_examples=3, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(graph=cnn_graphs())
def test_pruned_random_cnns_compile_to_what_the_interpreter_computes(graph):
    pruned = prune(graph, 0.5).graph
    report = go.compare(pruned, go.compile(pruned, "cpu"), probe_inputs(pruned))
    assert report.ok, report
