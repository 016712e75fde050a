"""A CPU model's intermediate tensors are made once per VM (`targets/tvm/workspace.py`): a run
allocates only its outputs, a returned tensor is never written by a later run, threads and
exported libraries each get their own, and a storage that anything but its tensors reads stays
allocated per run."""
import threading

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

import graphopt as go  # noqa: E402
from graphopt import runtime  # noqa: E402
from graphopt.frontends import dsl  # noqa: E402
from graphopt.targets.reference import interpret  # noqa: E402
from graphopt.zoo import lenet5  # noqa: E402


def _feeds(graph, seed):
    rng = np.random.default_rng(seed)
    return {v.name: rng.standard_normal(v.type.shape).astype(np.float32) for v in graph.inputs}


def _main_instructions(model) -> str:
    """The VM bytecode of `main` (up to the next function)."""
    text = model.executable.as_text()
    return text.split("@main:", 1)[1].split("\n\n", 1)[0]


def _pointwise_outputs():
    """Two outputs, the first a view of an intermediate the second conv reads (the pointwise
    rule's flat planes, `output_views.py`), the second a fresh tensor."""
    with dsl.Builder("pointwise_outputs", seed=4) as b:
        x = b.input("x", (1, 32, 32, 32))
        first = dsl.relu(dsl.conv2d(x, 64, 1))
        return b.output(first, dsl.relu(dsl.conv2d(dsl.relu(dsl.conv2d(first, 16, 3,
                                                                        padding=1)), 8, 1)))


def test_a_run_allocates_only_its_output():
    graph = lenet5()
    model = go.compile(graph)
    main = _main_instructions(model)
    assert main.count("vm.builtin.alloc_storage") == 1      # the logits
    assert main.count("vm.builtin.alloc_tensor") == 1
    assert len(model.vm["graphopt_workspace"]()) == 6       # conv, pool, conv, pool, 2 linear
    for seed in range(3):
        feeds = _feeds(graph, seed)
        np.testing.assert_allclose(model.run(feeds)["output"], interpret(graph, feeds)["output"],
                                   rtol=1e-4, atol=1e-5)


def test_returned_tensors_stay_as_they_were_after_later_runs(tmp_path):
    graph = _pointwise_outputs()
    loaded = go.load(go.compile(graph).export(str(tmp_path / "pointwise_outputs.so")))
    kept = []
    for seed in range(3):
        feeds = _feeds(graph, seed)
        tensors = loaded.run_device([runtime.copy_to_device(feeds["x"], loaded.device)])
        kept.append((tensors, interpret(graph, feeds)))
    for tensors, want in kept:       # each run's own tensors, after every later run
        for name, tensor in zip(loaded.output_names, tensors):
            np.testing.assert_allclose(runtime.copy_to_host(tensor), want[name],
                                       rtol=1e-4, atol=1e-4)


def test_threads_running_one_model_use_their_own_workspace():
    graph = lenet5()
    model = go.compile(graph)
    feeds = [_feeds(graph, seed) for seed in range(4)]
    want = [interpret(graph, f)["output"] for f in feeds]
    errors = []

    def worker(index):
        for _ in range(200):
            got = model.run(feeds[index])["output"]
            if not np.allclose(got, want[index], rtol=1e-4, atol=1e-5):
                errors.append(index)
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def _planned_main(storage_reader: bool):
    """A lowered `main` with two planned storages of one tensor each (the first killed after
    its allocation, as TVM's KillAfterLastUse does) and its output's storage; with
    `storage_reader`, a call reads the second storage itself."""
    from tvm import relax
    from tvm.script import relax as R
    builder = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor((4,), "float32"))

    def storage():
        return builder.emit(relax.op.vm.alloc_storage(relax.ShapeExpr([16]), 0, "uint8",
                                                      "global"))

    def tensor(on):
        return builder.emit(relax.op.vm.alloc_tensor(on, 0, relax.ShapeExpr([4]), "float32"))

    with builder.function("main", [x], attrs={"relax.force_pure": True}):
        first, second = storage(), storage()
        tensor(first)
        builder.emit(relax.op.vm.kill_object(first))
        if storage_reader:
            builder.emit(relax.Call(relax.ExternFunc("reads_storage"), [second],
                                    ty_args=[R.Tuple()]))
        tensor(second)
        builder.emit_func_output(tensor(storage()))
    return builder.get()["main"]


@pytest.mark.parametrize("storage_reader, lifted", [(False, 2), (True, 1)])
def test_only_storages_that_tensors_alone_use_and_no_output_lives_in_are_lifted(storage_reader,
                                                                               lifted):
    from tvm import relax
    from graphopt.targets.tvm.workspace import _with_workspace
    main, workspace = _with_workspace(_planned_main(storage_reader))
    assert len(main.params) == 1 + lifted
    assert len(workspace.body.body.fields) == lifted
    calls = [b.value.op for block in main.body.blocks for b in block.bindings
             if isinstance(b.value, relax.Call)]
    kept = sum(isinstance(op, tvm.ir.Op) and op.name == "relax.vm.alloc_storage" for op in calls)
    assert kept == 3 - lifted                  # the output's storage (and the one read) stay
    assert not any(isinstance(op, tvm.ir.Op) and op.name == "relax.vm.kill_object"
                   for op in calls)            # the lifted storage's kill went with it
