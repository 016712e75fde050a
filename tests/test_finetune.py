"""finetune (training a graph's weights with torch autograd, plain or distilled) and accuracy
(top-1 in the interpreter), on a tiny synthetic task: which of three patches of an 8x8 image is
bright."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import graphopt as go
from graphopt.compression.finetune import accuracy, at_batch, finetune, parameters
from graphopt.errors import GraphoptError, InputError, OptionError
from graphopt.frontends import dsl
from graphopt.passes.manager import fingerprint

torch = pytest.importorskip("torch")

PATCHES = ((0, 0), (0, 4), (4, 2))


def patches(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` noisy 1x8x8 images, each with one of PATCHES brighter, and its index."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(PATCHES), count)
    images = (rng.standard_normal((count, 1, 8, 8)) * 0.5).astype("float32")
    for image, label in zip(images, labels):
        row, col = PATCHES[label]
        image[0, row:row + 4, col:col + 4] += 1.0
    return images, labels


TRAIN, TEST = patches(300, seed=0), patches(200, seed=1)


def small_cnn(batch: int = 1, seed: int = 0) -> go.Graph:
    """conv -> batch norm -> relu -> max pool -> reshape (batch, -1) -> linear."""
    with dsl.Builder("small_cnn", seed=seed) as b:
        x = b.input("input", (batch, 1, 8, 8))
        x = dsl.max_pool2d(dsl.relu(dsl.batch_norm(dsl.conv2d(x, 4, 3, padding=1), name="bn")),
                           2)
        return b.output(dsl.linear(dsl.reshape(x, (batch, -1)), 3, name="fc"))


def branchy_cnn(batch: int = 2) -> go.Graph:
    """What the passes leave of a network with a residual add, a grouped convolution, concat,
    leaky relu, average pooling, dropout and flatten: fused convolutions among them."""
    with dsl.Builder("branchy_cnn", seed=4) as b:
        x = b.input("input", (batch, 1, 8, 8))
        x = dsl.relu(dsl.batch_norm(dsl.conv2d(x, 4, 3, padding=1)))
        y = dsl.batch_norm(dsl.conv2d(x, 4, 3, padding=1, groups=2))
        x = dsl.relu(y + x)
        x = dsl.concat([dsl.relu6(dsl.conv2d(x, 2, 1)), dsl.leaky_relu(dsl.conv2d(x, 2, 1), 0.1)])
        x = dsl.dropout(dsl.flatten(dsl.avg_pool2d(x, 2)))
        graph = b.output(dsl.linear(x, 3))
    return go.optimize(graph, ["fold_batch_norm", "fuse_conv_epilogue"]).graph


def kl_to(teacher: go.Graph, student: go.Graph, images: np.ndarray) -> float:
    """Mean KL(softmax(teacher) || softmax(student)) over `images`, in the interpreter."""
    def log_softmax(graph):
        graph = at_batch(graph, len(images))
        logits = go.interpret(graph, {graph.input_names[0]: images})[graph.output_names[0]]
        logits = logits.astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    p, q = log_softmax(teacher), log_softmax(student)
    return float((np.exp(p) * (p - q)).sum(axis=1).mean())


def perturbed(graph: go.Graph, scale: float, seed: int = 9) -> go.Graph:
    """A copy of `graph` with Gaussian noise (relative `scale`) on every parameter."""
    rng = np.random.default_rng(seed)
    noisy = graph.copy()
    for name in parameters(graph):
        c = noisy.constants[name]
        c.data = (c.data + scale * c.data.std() * rng.standard_normal(c.shape)).astype(c.dtype)
    return noisy


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These tensors are tiny: with several threads torch's per-op synchronisation costs more
    than the work (and stalls on a loaded machine), so the tests train on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher() -> go.Graph:
    return finetune(small_cnn(), TRAIN, epochs=3, batch_size=32, lr=1e-2)


def test_finetune_learns_the_task_at_another_batch_size(teacher):
    """A batch-1 graph (reshape included) trains on mini-batches of 32 (300 samples: the last
    of 12) and goes from chance to nearly perfect; the input graph is left as it was."""
    graph = small_cnn()
    before = fingerprint(graph), {n: c.data.copy() for n, c in graph.constants.items()}
    losses = []
    trained = finetune(graph, TRAIN, epochs=3, batch_size=32, lr=1e-2,
                       progress=lambda epoch, loss: losses.append((epoch, loss)))
    assert accuracy(graph, *TEST) < 0.6
    assert accuracy(trained, *TEST) > 0.9
    assert [epoch for epoch, _ in losses] == [1, 2, 3] and losses[-1][1] < losses[0][1] / 2
    assert fingerprint(graph) == before[0]
    assert all(np.array_equal(c.data, before[1][n]) for n, c in graph.constants.items())
    go.verify(trained)
    assert [(v.name, v.type) for v in trained.values()] == \
        [(v.name, v.type) for v in graph.values()]
    assert all(c.data is not graph.constants[n].data for n, c in trained.constants.items()
               if n in parameters(graph))


def test_batch_norm_statistics_stay_frozen_while_its_scale_trains(teacher):
    graph = small_cnn()
    bn = {role: v.name for role, v in zip(("x", "scale", "bias", "mean", "var"),
                                          graph.node("bn").inputs)}
    assert bn["mean"] not in parameters(graph) and bn["scale"] in parameters(graph)
    for role in ("mean", "var"):
        assert np.array_equal(teacher.constants[bn[role]].data, graph.constants[bn[role]].data)
    for role in ("scale", "bias"):
        assert not np.allclose(teacher.constants[bn[role]].data, graph.constants[bn[role]].data)
        assert teacher.constants[bn[role]].dtype == "float32"


def test_distillation_brings_the_student_to_the_teacher(teacher):
    """A student made of the teacher's weights plus noise, trained on the teacher's logits alone
    (no labels), then also with labels: its KL divergence to the teacher falls."""
    student = perturbed(teacher, 1.0)
    images = TEST[0][:60]
    start = kl_to(teacher, student, images)
    distilled = finetune(student, (TRAIN[0],), teacher=teacher, epochs=2, batch_size=50,
                         lr=1e-2, temperature=2.0)
    assert kl_to(teacher, distilled, images) < start / 2, start
    mixed = finetune(student, TRAIN, teacher=teacher, epochs=2, batch_size=50, lr=1e-2,
                     alpha=0.9)
    assert kl_to(teacher, mixed, images) < start / 2
    assert accuracy(mixed, *TEST) > max(accuracy(student, *TEST), 0.9)


def test_distillation_from_a_teacher_of_another_batch_and_input_name(teacher):
    with dsl.Builder("renamed", seed=0) as b:
        x = b.input("image", (4, 1, 8, 8))
        y = dsl.max_pool2d(dsl.relu(dsl.conv2d(x, 4, 3, padding=1)), 2)
        student = b.output(dsl.linear(dsl.flatten(y), 3, name="fc"))
    trained = finetune(student, TRAIN[0], teacher=teacher, epochs=3, batch_size=20, lr=1e-2)
    assert kl_to(teacher, trained, TEST[0][:20]) < kl_to(teacher, student, TEST[0][:20]) / 2


def test_graphs_the_passes_make_train():
    """Fused convolutions (bias, residual, relu / clip / leaky relu epilogues), grouped ones,
    concat, pooling, dropout and flatten: the loss falls, the result verifies, and the
    interpreter and torch agree on it."""
    graph = branchy_cnn()
    assert {"fused_conv2d", "concat", "dropout", "flatten"} <= {n.op_name for n in graph.nodes}
    assert any(n.op.has_residual for n in graph.nodes if n.op_name == "fused_conv2d")
    losses = []
    trained = finetune(graph, ({"input": TRAIN[0]}, TRAIN[1]), epochs=2, batch_size=30,
                       lr=1e-2, progress=lambda epoch, loss: losses.append(loss))
    assert losses[1] < losses[0]
    assert accuracy(trained, {"input": TEST[0]}, TEST[1]) > accuracy(graph, *TEST)
    from graphopt.torch_eager import TorchEager
    feeds = {"input": TEST[0][:2]}
    found = TorchEager(trained)(feeds)[trained.output_names[0]]
    ref = go.interpret(trained, feeds)[trained.output_names[0]]
    np.testing.assert_allclose(found, ref, rtol=1e-4, atol=1e-4)


def test_a_shared_constant_trains_once():
    """Two linear layers reading one weight and bias: four parameters, trained as one."""
    with dsl.Builder("shared", seed=0) as b:
        x = dsl.relu(dsl.linear(dsl.flatten(b.input("input", (1, 1, 8, 8))), 64, name="first"))
        graph = b.output(dsl.linear(x, 3, name="fc"))
    first = graph.node("first")
    between = graph.node("fc").inputs[0]
    again = graph.add_node(first.op, [between, *first.inputs[1:]], name="again")
    graph.replace_all_uses(between, again.output)
    go.verify(graph)
    assert len(parameters(graph)) == 4
    trained = finetune(graph, TRAIN, epochs=1, batch_size=50)
    assert trained.node("again").inputs[1] is trained.node("first").inputs[1]
    assert not np.array_equal(trained.node("again").inputs[1].data, first.inputs[1].data)


def test_runs_are_deterministic_for_a_seed():
    options = dict(epochs=1, batch_size=64, lr=1e-2)
    a, b = (finetune(small_cnn(), TRAIN, seed=3, **options) for _ in range(2))
    c = finetune(small_cnn(), TRAIN, seed=4, **options)
    assert all(np.array_equal(a.constants[n].data, b.constants[n].data) for n in a.constants)
    assert not all(np.array_equal(a.constants[n].data, c.constants[n].data)
                   for n in a.constants)


def test_accuracy_agrees_with_the_interpreter_sample_by_sample(teacher):
    images, labels = TEST[0][:37], TEST[1][:37]
    output = teacher.output_names[0]
    predicted = [go.interpret(teacher, {"input": image[None]})[output].argmax() for image in images]
    expected = float(np.mean(np.array(predicted) == labels))
    assert accuracy(teacher, images, labels) == expected
    assert accuracy(teacher, images, labels, batch_size=8) == expected
    assert accuracy(at_batch(teacher, 5), {"input": images}, labels, batch_size=1) == expected


def test_a_graph_whose_shapes_fix_the_batch_trains_at_that_batch():
    with dsl.Builder("fixed_batch", seed=0) as b:
        x = b.input("input", (2, 1, 8, 8))
        x = dsl.reshape(dsl.reshape(x, (4, 32), name="halves"), (2, 64))
        graph = b.output(dsl.linear(x, 3, name="fc"))
    finetune(graph, (TRAIN[0][:20], TRAIN[1][:20]), epochs=1, batch_size=2)
    with pytest.raises(OptionError, match=r"cannot run on \d+ samples.*node 'halves'"):
        finetune(graph, (TRAIN[0][:20], TRAIN[1][:20]), epochs=1, batch_size=8)
    assert accuracy(graph, *TEST) == accuracy(graph, *TEST, batch_size=2)


def bad_inputs():
    x, y = TRAIN
    return [
        ((x, y[:-1]), {}, InputError, "300 integer class indices"),
        ((x[:, :, :4], y), {}, InputError, r"expected samples \[N, 1, 8, 8\]"),
        ((x[0], y), {}, InputError, "expected samples"),
        ((x, y.astype("float32")), {}, InputError, "integer class indices"),
        ((x, y + 1), {}, InputError, r"labels in \[0, 3\).*from 1 to 3"),
        ((x,), {}, InputError, "needs labels, or a teacher"),
        (({"image": x}, y), {}, InputError, r"expected samples for inputs \['input'\]"),
        ((x, y, y), {}, InputError, "3 items"),
        ((x, y), {"optimizer": "rmsprop"}, OptionError, "unknown optimizer 'rmsprop'"),
        ((x, y), {"distill": True}, OptionError, "needs a teacher"),
        ((x, y), {"batch_size": 0}, OptionError, "batch_size >= 1"),
        ((x, y), {"lr": -1.0}, OptionError, "positive lr"),
        ((x, y), {"alpha": 1.5}, OptionError, r"alpha in \[0, 1\]"),
        ((x, y), {"epochs": 1.5}, OptionError, "epochs"),
        ((x, y), {"progress": 3}, OptionError, "progress as a callable"),
        ((x, y), {"teacher": "big.onnx"}, OptionError, "teacher as a Graph"),
    ]


@pytest.mark.parametrize("data, options, error, message", bad_inputs())
def test_bad_inputs_are_named(data, options, error, message):
    with pytest.raises(error, match=message):
        finetune(small_cnn(), data, **options)


def test_bad_graphs_and_teachers_are_named():
    with dsl.Builder("two_outputs", seed=0) as b:
        x = dsl.flatten(b.input("input", (1, 1, 8, 8)))
        two = b.output(dsl.linear(x, 3), dsl.linear(x, 3))
    with pytest.raises(OptionError, match="one output of class logits"):
        finetune(two, TRAIN)
    with dsl.Builder("five_classes", seed=0) as b:
        five = b.output(dsl.linear(dsl.flatten(b.input("input", (1, 1, 8, 8))), 5))
    with pytest.raises(InputError, match="teacher 'five_classes' gives 5 logits"):
        finetune(small_cnn(), TRAIN, teacher=five)
    with pytest.raises(InputError, match="labels in"):
        accuracy(small_cnn(), TEST[0], TEST[1] + 3)


def test_without_torch_finetune_says_so(monkeypatch, teacher):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(GraphoptError, match="PyTorch, which is not installed"):
        finetune(small_cnn(), TRAIN)
    assert accuracy(teacher, *TEST) > 0.9     # needs no torch
