"""Recover a compressed graph's accuracy by training its weights with torch autograd
(`finetune`): cross entropy on labels, or Hinton et al.'s distillation from a teacher graph's
logits; the trained weights go back into a copy of the graph. `accuracy` measures top-1 in the
reference interpreter. torch is needed by `finetune` alone, imported when it runs.

    t = finetune(pruned, data=(x_train, y_train), teacher=original, epochs=3)
    print(accuracy(original, x_test, y_test), accuracy(t, x_test, y_test))
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import numpy as np

from ..errors import GraphoptError, InputError, OptionError, ShapeError
from ..ir import Graph, is_float_dtype
from ..ops.base import integer, real
from ..targets.reference import interpret
from ..verify import verify

OPTIMIZERS = ("adam", "adamw", "sgd")   # sgd: with momentum 0.9


def finetune(graph: Graph, data, teacher: Graph | None = None, epochs: int = 3,
             distill: bool | None = None, *, batch_size: int = 64, lr: float = 1e-3,
             optimizer: str = "adam", temperature: float = 4.0, alpha: float = 0.7,
             seed: int = 0, progress: Callable[[int, float], object] | None = None) -> Graph:
    """A copy of `graph` (whose single output are class logits [batch, classes]) with its
    parameters trained for `epochs` on `data`, in shuffled mini-batches of `batch_size` samples
    whatever batch the graph declares; `graph` is left unchanged.

    `data`: (inputs, labels), (inputs,) or inputs alone, where inputs are one array [N, ...]
    (the graph input's shape after its batch dimension) or an {input name: array} dict, and
    labels N integer class indices. The loss is the cross entropy on the labels; with a
    `teacher` graph (`distill` defaults to True then), Hinton's distillation:
    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(labels),
    the KL term alone without labels. The teacher's logits are computed once, in torch; with
    `distill=False` a teacher is not used.

    Trained: every float constant a node reads as a parameter (what `Graph.num_params` counts:
    not an op's `buffer_inputs`, so batch norm keeps its running statistics and normalizes with
    them while its scale and bias train), a constant shared by several nodes once. The graph
    runs with inference semantics (dropout is the identity), in float32; trained weights are
    stored back in each constant's dtype. `optimizer`: one of OPTIMIZERS. `progress(epoch,
    loss)` is called after each epoch (from 1) with its mean training loss. Shuffling uses
    numpy's default_rng(`seed`), the one source of randomness."""
    torch = _import_torch()
    import torch.nn.functional as F
    from ..torch_eager import TorchEager

    _check_logits_graph(graph, "graph")
    if teacher is not None:
        _check_logits_graph(teacher, "teacher")
    if distill is None:
        distill = teacher is not None
    if not isinstance(distill, (bool, np.bool_)):
        raise OptionError(f"expected distill True, False or None, found {distill!r}")
    if distill and teacher is None:
        raise OptionError("distill=True needs a teacher graph whose logits to learn from")
    epochs = _count(epochs, "epochs", 0)
    batch_size = _count(batch_size, "batch_size", 1)
    seed = _count(seed, "seed", 0)
    lr = _positive(lr, "lr")
    temperature = _positive(temperature, "temperature")
    alpha = _option(real, alpha, "alpha")
    if not 0 <= alpha <= 1:
        raise OptionError(f"expected alpha in [0, 1], found {alpha}")
    if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
        raise OptionError(f"unknown optimizer {optimizer!r}; expected one of "
                          f"{', '.join(OPTIMIZERS)}")
    if progress is not None and not callable(progress):
        raise OptionError(f"expected progress as a callable(epoch, loss), found "
                          f"{type(progress).__name__}")

    inputs, labels = _split(data)
    features = {name: np.ascontiguousarray(array, dtype=np.float32)
                for name, array in _samples(graph, inputs).items()}
    count = len(next(iter(features.values())))
    classes = graph.outputs[0].shape[1]
    if labels is not None:
        labels = torch.from_numpy(_labels(labels, count, classes))
    elif not distill:
        raise InputError("finetune needs labels, or a teacher to distill from: found neither")
    sizes = sorted({min(batch_size, count), count % batch_size} - {0})

    targets = None
    if distill:
        targets = torch.from_numpy(_teacher_logits(torch, TorchEager, teacher, graph, features,
                                                   sizes, batch_size))

    trainable = parameters(graph)
    if not trainable:
        raise OptionError(f"graph '{graph.name}' has no float parameters to train")
    weights = _float32_weights(torch, graph)
    for name in trainable:
        weights[name].requires_grad_(True)
    forwards = {size: TorchEager(_rebatched(graph, size, "graph"), weights=weights)
                for size in sizes}
    params = [weights[name] for name in trainable]
    step = {"adam": lambda: torch.optim.Adam(params, lr=lr),
            "adamw": lambda: torch.optim.AdamW(params, lr=lr),
            "sgd": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9)}[optimizer]()

    def loss_of(logits, index):
        if targets is None:
            return F.cross_entropy(logits, labels[index])
        kl = F.kl_div(F.log_softmax(logits / temperature, dim=1),
                      F.log_softmax(targets[index] / temperature, dim=1),
                      reduction="batchmean", log_target=True) * temperature ** 2
        if labels is None:
            return kl
        return alpha * kl + (1 - alpha) * F.cross_entropy(logits, labels[index])

    # Nothing draws from torch's generator (no dropout, no initialization), so the shuffle is
    # the only randomness and torch's global seed is left as the caller set it.
    rng = np.random.default_rng(seed)
    for epoch in range(1, epochs + 1):
        order = rng.permutation(count)
        total = 0.0
        for start in range(0, count, batch_size):
            index = order[start:start + batch_size]
            feeds = {name: torch.from_numpy(array[index]) for name, array in features.items()}
            loss = loss_of(forwards[len(index)].forward(feeds)[0], torch.from_numpy(index))
            step.zero_grad()
            loss.backward()
            step.step()
            total += float(loss.detach()) * len(index)
        mean = total / count
        if not math.isfinite(mean):
            raise GraphoptError(f"finetune diverged in epoch {epoch} (mean loss {mean}); try a "
                                f"smaller lr than {lr:g}")
        if progress is not None:
            progress(epoch, mean)

    trained = graph.copy()
    for name in trainable:
        constant = trained.constants[name]
        constant.data = weights[name].detach().cpu().numpy().astype(constant.dtype)
    return verify(trained)


def accuracy(graph: Graph, x, y, batch_size: int = 256) -> float:
    """Top-1 accuracy of `graph`'s logits on samples `x` (one array [N, ...] or an {input name:
    array} dict) against integer labels `y`, computed by the reference interpreter
    (`graphopt.interpret`) on `batch_size` samples at a time (a copy of the graph re-batched to
    that size; at the graph's own batch size where its shapes fix it). Needs no torch."""
    _check_logits_graph(graph, "graph")
    batch_size = _count(batch_size, "batch_size", 1)
    samples = _samples(graph, x)
    count = len(next(iter(samples.values())))
    labels = _labels(y, count, graph.outputs[0].shape[1])
    try:
        chunked = at_batch(graph, min(batch_size, count))
    except ShapeError:
        chunked = graph
    size = chunked.inputs[0].shape[0]
    predictions = []
    for start in range(0, count, size):
        feeds = {}
        for v in chunked.inputs:
            chunk = samples[v.name][start:start + size].astype(v.dtype, copy=False)
            pad = size - len(chunk)   # the last chunk, padded with zeros that are then dropped
            feeds[v.name] = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]),
                                                            chunk.dtype)]) if pad else chunk
        logits = interpret(chunked, feeds)[chunked.output_names[0]]
        predictions.append(logits.argmax(axis=1)[:min(size, count - start)])
    return float((np.concatenate(predictions) == labels).mean())


def parameters(graph: Graph) -> list[str]:
    """Names of the float constants `finetune` trains, in order of first use: those some node
    reads as a parameter and none as a statistics buffer (`Op.buffer_inputs`)."""
    params, buffers = {}, set()
    for node in graph.topological_order():
        for i, v in enumerate(node.inputs):
            if v.is_constant and is_float_dtype(v.dtype):
                (buffers.add(v.name) if i in node.op.buffer_inputs else
                 params.setdefault(v.name, None))
    return [name for name in params if name not in buffers]


def at_batch(graph: Graph, batch: int) -> Graph:
    """A copy of `graph` taking `batch` samples at once (sharing its constants): its inputs'
    leading dimension changed, as is every reshape that keeps the graph's batch dimension
    leading (flatten follows on its own); every type is inferred anew, so a node whose shapes
    fix the batch raises ShapeError naming it (as does an output that no longer leads with the
    batch). `graph` itself when its batch is `batch`."""
    old = graph.inputs[0].shape[0]
    if old == batch and all(v.shape[:1] == (batch,) for v in graph.inputs):
        return graph
    new = Graph(graph.name)
    values = {}
    for v in graph.inputs:
        values[id(v)] = new.add_input(v.name, v.type.with_shape((batch, *v.shape[1:])))
    for c in graph.constants.values():
        values[id(c)] = new.add_constant(c.name, c.data)
    for node in graph.topological_order():
        op = node.op
        if op.name == "reshape" and \
                node.inputs[0].shape[:1] == node.outputs[0].shape[:1] == (old,):
            op = dataclasses.replace(op, shape=(batch, *node.outputs[0].shape[1:]))
        added = new.add_node(op, [values[id(v)] for v in node.inputs], name=node.name,
                             output_names=[o.name for o in node.outputs],
                             provenance=node.provenance)
        values.update((id(o), n) for o, n in zip(node.outputs, added.outputs))
    new.set_outputs([values[id(v)] for v in graph.outputs])
    for before, after in zip(graph.outputs, new.outputs):
        if before.shape[:1] == (old,) and after.shape[:1] != (batch,):
            raise ShapeError(f"output '{before.name}' {after.type} does not follow the batch "
                             f"of {batch}", node=after.producer.name if after.producer else None)
    return new


def _rebatched(graph: Graph, batch: int, what: str) -> Graph:
    try:
        return at_batch(graph, batch)
    except ShapeError as e:
        raise OptionError(f"{what} '{graph.name}' cannot run on {batch} samples at once (its "
                          f"batch is {graph.inputs[0].shape[0]}): {e}; choose a batch_size that "
                          f"divides the number of samples and equals the graph's batch") from None


def _teacher_logits(torch, TorchEager, teacher: Graph, student: Graph,
                    features: Mapping[str, np.ndarray], sizes, batch_size: int) -> np.ndarray:
    """The teacher's logits on every sample, in order, at the student's mini-batch sizes."""
    if len(teacher.inputs) == 1 and len(student.inputs) == 1:
        names = {teacher.inputs[0].name: student.inputs[0].name}
    else:
        names = {v.name: v.name for v in teacher.inputs}
    student_types = {v.name: v.type for v in student.inputs}
    for v in teacher.inputs:
        found = student_types.get(names[v.name])
        if found is None or found.shape[1:] != v.shape[1:]:
            raise InputError(f"teacher '{teacher.name}' input '{v.name}' {v.type} has no "
                             f"counterpart among the student's inputs "
                             f"{[f'{n}: {t}' for n, t in student_types.items()]}")
    student_classes = student.outputs[0].shape[1]
    if teacher.outputs[0].shape[1] != student_classes:
        raise InputError(f"teacher '{teacher.name}' gives {teacher.outputs[0].shape[1]} logits "
                         f"per sample, the student {student_classes}")
    weights = _float32_weights(torch, teacher)
    forwards = {size: TorchEager(_rebatched(teacher, size, "teacher"), weights=weights)
                for size in sizes}
    count = len(next(iter(features.values())))
    logits = []
    with torch.inference_mode():
        for start in range(0, count, batch_size):
            feeds = {name: torch.from_numpy(features[own][start:start + batch_size])
                     for name, own in names.items()}
            logits.append(forwards[len(next(iter(feeds.values())))].forward(feeds)[0].numpy())
    return np.concatenate(logits)


def _float32_weights(torch, graph: Graph) -> dict:
    """Every float constant of `graph` as a float32 tensor of its own (training and the teacher
    compute in float32 whatever the graph's dtypes)."""
    return {name: torch.tensor(c.data.astype(np.float32))
            for name, c in graph.constants.items() if is_float_dtype(c.dtype)}


def _import_torch():
    try:
        import torch
    except ImportError:
        raise GraphoptError("finetune trains with PyTorch, which is not installed: "
                            "pip install 'graphopt[finetune]' (or torch itself)") from None
    return torch


def _check_logits_graph(graph, what: str) -> None:
    """`graph` is a Graph of float inputs with a batch dimension and one output of logits."""
    if not isinstance(graph, Graph):
        raise OptionError(f"expected {what} as a Graph, found {type(graph).__name__}")
    if not graph.inputs:
        raise OptionError(f"{what} '{graph.name}' has no inputs")
    batch = graph.inputs[0].shape[:1]
    if len(graph.outputs) != 1 or graph.outputs[0].type.ndim != 2 or \
            graph.outputs[0].shape[:1] != batch:
        outputs = [f"{v.name}: {v.type}" for v in graph.outputs]
        raise OptionError(f"{what} '{graph.name}': expected one output of class logits "
                          f"[{batch[0] if batch else 'batch'}, classes], found {outputs}")
    for v in graph.inputs:
        if not is_float_dtype(v.dtype) or v.type.ndim == 0:
            raise OptionError(f"{what} '{graph.name}': input '{v.name}' {v.type} is not a "
                              f"batch of floating-point samples")


def _split(data) -> tuple[object, object]:
    """(inputs, labels or None) from (inputs, labels), (inputs,) or inputs alone."""
    if isinstance(data, (tuple, list)):
        if len(data) not in (1, 2):
            raise InputError(f"expected data as (inputs, labels), (inputs,) or inputs, found a "
                             f"{type(data).__name__} of {len(data)} items")
        return data[0], data[1] if len(data) == 2 else None
    return data, None


def _samples(graph: Graph, inputs) -> dict[str, np.ndarray]:
    """The samples of each graph input, [N, ...] with the input's shape after its batch
    dimension, from an array (a single-input graph) or an {input name: array} dict."""
    names = graph.input_names
    if not isinstance(inputs, Mapping):
        if len(names) != 1:
            raise InputError(f"graph '{graph.name}' takes inputs {names}: give the samples as "
                             f"an {{input name: array}} dict")
        inputs = {names[0]: inputs}
    if sorted(inputs) != sorted(names):
        raise InputError(f"expected samples for inputs {names}, found {list(inputs)}")
    samples, counts = {}, set()
    for v in graph.inputs:
        array = np.asarray(inputs[v.name])
        expected = f"[N, {', '.join(map(str, v.shape[1:]))}]" if v.type.ndim > 1 else "[N]"
        if not (is_float_dtype(array.dtype) or array.dtype.kind in "iu") or \
                array.shape[1:] != v.shape[1:] or array.ndim != v.type.ndim or not len(array):
            raise InputError(f"input '{v.name}': expected samples {expected} of numbers (the "
                             f"graph takes {v.type}), found {array.dtype}{list(array.shape)}")
        samples[v.name] = array
        counts.add(len(array))
    if len(counts) > 1:
        raise InputError(f"expected as many samples for every input, found "
                         f"{ {n: len(a) for n, a in samples.items()} }")
    return samples


def _labels(labels, count: int, classes: int) -> np.ndarray:
    """`labels` as int64 class indices, one per sample, each in [0, classes)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.shape != (count,):
        raise InputError(f"expected labels as {count} integer class indices, one per sample, "
                         f"found {labels.dtype}{list(labels.shape)}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        raise InputError(f"expected labels in [0, {classes}) (the graph gives {classes} "
                         f"logits), found labels from {low} to {high}")
    return labels.astype(np.int64)


def _option(check, value, what: str):
    """`check(value, what)` (an attribute check of ops.base) with an OptionError."""
    try:
        return check(value, what)
    except ShapeError as e:
        raise OptionError(e.detail) from None


def _count(value, what: str, low: int) -> int:
    value = _option(integer, value, what)
    if value < low:
        raise OptionError(f"expected {what} >= {low}, found {value}")
    return value


def _positive(value, what: str) -> float:
    value = _option(real, value, what)
    if value <= 0:
        raise OptionError(f"expected a positive {what}, found {value}")
    return value
