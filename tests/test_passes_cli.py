"""`graphopt optimize MODEL [-o out.onnx]`: the per-pass report on a zoo model or an .onnx file,
and the optimized model written as ONNX."""
from __future__ import annotations

import graphopt as go
from graphopt import cli, dsl
from graphopt.passes import probe_inputs


def conv_bn_graph():
    with dsl.Builder("conv_bn", seed=0) as b:
        x = b.input("input", (1, 3, 8, 8))
        y = dsl.relu(dsl.batch_norm(dsl.conv2d(x, 4, 3, padding=1, bias=False)))
        return b.output(dsl.global_avg_pool2d(dsl.dropout(y)))


def test_optimize_a_zoo_model_prints_the_report(capsys, tmp_path):
    out = tmp_path / "lenet.onnx"
    assert cli.main(["-q", "optimize", "lenet5", "-o", str(out)]) == cli.EXIT_OK
    report = capsys.readouterr().out
    assert "optimize 'lenet5'" in report and "fold_batch_norm" in report and "max err" in report
    assert go.compare(go.zoo.lenet5(), go.load_onnx(str(out)), probe_inputs(go.zoo.lenet5())).ok


def test_optimize_an_onnx_file_with_chosen_passes(capsys, tmp_path):
    g = conv_bn_graph()
    source, out = tmp_path / "model.onnx", tmp_path / "folded.onnx"
    go.save_onnx(g, str(source))
    code = cli.main(["-q", "optimize", str(source), "--passes",
                     "remove_identities,fold_batch_norm", "-o", str(out)])
    assert code == cli.EXIT_OK
    report = capsys.readouterr().out
    assert "layer + batch_norm x1" in report and "identity x1" in report
    folded = go.load_onnx(str(out))
    assert [n.op_name for n in folded.topological_order()] == ["conv2d", "relu",
                                                               "global_avg_pool2d"]
    assert go.compare(g, folded, probe_inputs(g)).ok


def test_unknown_pass_is_an_error(capsys):
    assert cli.main(["-q", "optimize", "lenet5", "--passes", "fold_all"]) != cli.EXIT_OK
    assert "no pass named 'fold_all'" in capsys.readouterr().err
