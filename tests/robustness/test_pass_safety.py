"""Passes cannot corrupt the caller's graph: one that edits its input in place, raises, or returns
something other than a PassResult fails with a PassError naming it, in optimize, bisect and
compile alike; the caller's graph is left exactly as it was (same fingerprint, same bytes)."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt import dsl
from graphopt.passes import PassResult, fingerprint
from graphopt.passes.pattern import Rule, any_value, apply_rules, op


def small_net():
    """conv -> batch_norm -> relu -> pool -> fc: fold_batch_norm builds new conv weights."""
    with go.dsl.Builder("small", seed=0) as b:
        x = b.input("input", (1, 3, 8, 8))
        x = dsl.relu(dsl.batch_norm(dsl.conv2d(x, 8, 3, name="conv"), name="bn"), name="relu")
        x = dsl.flatten(dsl.global_avg_pool2d(x, name="pool"), name="flatten")
        return b.output(dsl.linear(x, 4, name="fc"))


def constant_bytes(graph) -> dict[str, bytes]:
    return {name: v.data.tobytes() for name, v in graph.constants.items()}


# ---- passes that break the contract, each reporting changed=False -----------------------------

def rewire_in_place(graph):
    """Bypasses the first relu in the graph it is given."""
    relu = next(n for n in graph.nodes if n.op_name == "relu")
    graph.replace_all_uses(relu.output, relu.inputs[0])
    return PassResult(graph, False)


def scale_weights_in_place(graph):
    graph.node("fc").inputs[1].data[...] *= 2
    return PassResult(graph, False)


def unlock_weights(graph):
    graph.node("fc").inputs[1].data.flags.writeable = True
    return PassResult(graph, False)


def scale_new_weights_behind_the_flag(graph):
    """Writes into an array fold_batch_norm built, after making it writeable again."""
    weight = next(n for n in graph.nodes if n.op_name == "conv2d").inputs[1].data
    weight.flags.writeable = True
    weight *= 2
    return PassResult(graph, False)


def swap_weights(graph):
    fc_weight = graph.node("fc").inputs[1]
    fc_weight.data = fc_weight.data * 2
    return PassResult(graph, False)


def raises(graph):
    raise KeyError("no such thing")


def returns_a_graph(graph):
    return graph.copy()


def returns_a_tuple(graph):
    return graph, False


IN_PLACE = "modified its input graph in place; return a new graph in PassResult"


@pytest.mark.parametrize("bad_pass, message", [
    (rewire_in_place, f"pass 'rewire_in_place' {IN_PLACE}"),
    (scale_weights_in_place, "pass 'scale_weights_in_place' modified its input graph in place "
                             r"\(it wrote into a constant: .*read-only\)"),
    (unlock_weights, "pass 'unlock_weights' modified its input graph in place "
                     r"\(it wrote into a constant: cannot set WRITEABLE"),
    (scale_new_weights_behind_the_flag, f"pass 'scale_new_weights_behind_the_flag' {IN_PLACE}"),
    (swap_weights, f"pass 'swap_weights' {IN_PLACE}"),
    (raises, "pass 'raises' failed: KeyError: 'no such thing'"),
    (returns_a_graph, "pass 'returns_a_graph' returned Graph; expected PassResult"),
    (returns_a_tuple, "pass 'returns_a_tuple' returned tuple; expected PassResult"),
])
@pytest.mark.parametrize("runner", ["optimize", "optimize_checked", "bisect"])
def test_a_bad_pass_is_named_and_the_caller_graph_is_untouched(bad_pass, message, runner):
    g = small_net()
    before, data = fingerprint(g), constant_bytes(g)
    with pytest.raises(go.PassError, match=message) as info:
        if runner == "bisect":
            go.bisect(g, ["fold_batch_norm", bad_pass])
        else:
            go.optimize(g, ["fold_batch_norm", bad_pass], check=runner == "optimize_checked")
    assert fingerprint(g) == before and constant_bytes(g) == data
    assert all(v.data.flags.writeable for v in g.constants.values())
    if bad_pass is raises:
        assert isinstance(info.value.__cause__, KeyError)


def test_a_graphopt_error_inside_a_pass_keeps_its_node():
    def bad_rewrite(graph, m):
        raise go.ShapeError("expected 4-d", node=m.root.name, op="relu")
    rules = [Rule("relu", op("relu", any_value("x")), bad_rewrite)]

    def breaks_on_relu(graph):
        return apply_rules(graph, rules)
    with pytest.raises(go.PassError, match="pass 'breaks_on_relu' failed: expected 4-d") as info:
        go.optimize(small_net(), [breaks_on_relu])
    assert info.value.op == "relu" and info.value.node is not None


@pytest.mark.parametrize("model, options, check", [
    ("resnet18", {"image_size": 32, "num_classes": 10}, True), ("googlenet", {}, False)])
def test_the_default_pipeline_leaves_a_zoo_model_as_it_was(model, options, check):
    g = go.zoo.MODELS[model](seed=1, **options)
    before, data = fingerprint(g), constant_bytes(g)
    result = go.optimize(g, check=check)
    assert result.changed and result.graph is not g
    assert fingerprint(g) == before and constant_bytes(g) == data
    # The optimized graph's arrays are writeable as before: the caller's own, or new ones.
    assert all(v.data.flags.writeable for v in result.graph.constants.values())
    originals = {id(v.data) for v in g.constants.values()}
    assert any(id(v.data) in originals for v in result.graph.constants.values())


def test_a_pass_that_changes_nothing_hands_back_the_caller_graph():
    g = small_net()
    assert go.optimize(g, ["eliminate_dead_code"]).graph is g


def test_views_a_pass_takes_of_the_caller_arrays_become_views_of_them_again():
    with dsl.Builder("g") as b:
        x = b.input("input", (1, 4))
        g = b.output(dsl.relu(x))
    table = g.add_constant("table", np.arange(8.0, dtype="float32")).data

    def take_views(graph):
        new = graph.copy()
        view = new.constants["table"].data
        new.add_constant("half", view[4:])
        new.add_constant("reversed", view[::-1])
        return PassResult(new, True)
    out = go.optimize(g, [take_views]).graph
    assert out.constants["table"].data is table
    for name, expected in (("half", table[4:]), ("reversed", table[::-1])):
        data = out.constants[name].data
        assert data.flags.writeable and np.array_equal(data, expected)
    assert np.shares_memory(out.constants["half"].data, table)


@pytest.mark.parametrize("passes, names", [
    ("fold_batch_norm", ["fold_batch_norm"]),
    ("fold_pad, fold_batch_norm", ["fold_pad", "fold_batch_norm"]),
    ("", []),
    (returns_a_graph, ["returns_a_graph"]),
])
def test_a_str_is_comma_separated_pass_names(passes, names):
    if callable(passes):
        assert go.passes.pass_list(passes) == [passes]
        return
    result = go.optimize(small_net(), passes)
    assert [r.name for r in result.records] == names
    assert go.CompileOptions(passes=passes).passes == tuple(names)


@pytest.mark.parametrize("passes, message", [
    ("fold_everything", "no pass named 'fold_everything'; known passes: .*fold_batch_norm"),
    (["fold_pad", 3], "expected a pass name or a function Graph -> PassResult, found int 3"),
    (3, "expected passes as a list of pass names or functions, or a comma-separated str"),
])
def test_bad_pass_lists_are_option_errors(passes, message):
    for run in (lambda: go.optimize(small_net(), passes),
                lambda: go.bisect(small_net(), passes)):
        with pytest.raises(go.OptionError, match=message):
            run()
