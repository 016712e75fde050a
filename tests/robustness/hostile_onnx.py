"""Hostile ONNX models and a child process to load them in: small files that ask for huge memory,
names that are not UTF-8, external data that lies about its size, and byte mutations of valid
models. Loads run in a child with an address-space limit and a timeout, so that a blow-up fails
the test instead of the machine; the child's peak RSS comes back with the result.

    result = load_in_child([model_bytes], max_constant_bytes=64 << 20)
    assert result.outcomes == [("ModelFormatError", "...")] and result.peak_rss < 400 << 20
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MEMORY_LIMIT = 2 << 30      # RLIMIT_AS of the child
OPSET = 17

# The child: limit the address space first, then load each model; one JSON line per model,
# written before the next starts, so that a crash names the model that caused it.
CHILD = r"""
import json, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from graphopt.errors import GraphoptError
from graphopt.frontends.onnx import load_onnx
options = json.loads(sys.argv[2])
for path in sys.argv[3:]:
    print(json.dumps({"start": path}), flush=True)
    try:
        load_onnx(path, **options)
        outcome = ["ok", ""]
    except GraphoptError as e:
        outcome = [type(e).__name__, str(e)[:300]]
    except BaseException as e:   # MemoryError included: each one fails the test
        outcome = ["not a GraphoptError: " + type(e).__name__, str(e)[:300]]
    print(json.dumps({"path": path, "outcome": outcome}), flush=True)
with open("/proc/self/status") as f:   # VmHWM: this program's own peak RSS, reset at exec
    peak = [int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")]
print(json.dumps({"peak_rss": peak[0]}), flush=True)
"""


@dataclasses.dataclass
class ChildResult:
    outcomes: list[tuple[str, str]]   # per model loaded to the end: (error type or "ok", message)
    returncode: int                   # negative: killed by that signal
    timed_out: bool
    peak_rss: int                     # bytes
    stderr: str
    unfinished: str | None            # the model being loaded when the child died

    @property
    def clean(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.unfinished is None


def load_in_child(models: list[bytes], *, timeout: float = 120.0, memory: int = MEMORY_LIMIT,
                  files: dict[str, bytes | int] | None = None, **options) -> ChildResult:
    """Write `models` (and `files`, e.g. external data, by name: bytes, or an int for a sparse
    file of that many zero bytes) to a temporary folder and load each with
    `load_onnx(path, **options)` in one child process."""
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i, data in enumerate(models):
            paths.append(os.path.join(folder, f"model{i}.onnx"))
            with open(paths[-1], "wb") as f:
                f.write(data)
        for name, data in (files or {}).items():
            with open(os.path.join(folder, name), "wb") as f:
                if isinstance(data, int):
                    f.truncate(data)
                else:
                    f.write(data)
        return run_child([str(memory), json.dumps(options), *paths], timeout)


def run_child(args: list[str], timeout: float) -> ChildResult:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=out, stderr=err,
                                env=env)
        # The child reports its own peak RSS (VmHWM) when it finishes; for a child that died,
        # os.wait4's ru_maxrss is the fallback (on Linux it may include this process's RSS
        # at the fork, so it only ever overstates).
        deadline, timed_out = time.monotonic() + timeout, False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                timed_out = True
                break
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        lines = [json.loads(line) for line in out.read().decode().splitlines()
                 if line.startswith("{")]
        stderr = err.read().decode(errors="replace")
    outcomes = [tuple(line["outcome"]) for line in lines if "outcome" in line]
    started = [line["start"] for line in lines if "start" in line]
    unfinished = started[-1] if len(started) > len(outcomes) else None
    peaks = [line["peak_rss"] for line in lines if "peak_rss" in line]
    peak_rss = peaks[-1] if peaks else usage.ru_maxrss * 1024
    return ChildResult(outcomes, proc.returncode, timed_out, peak_rss, stderr, unfinished)


# ---- models ------------------------------------------------------------------------------------
def model_bytes(nodes, inputs, outputs, initializers=(), name="hostile") -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return model.SerializeToString()


def ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def int_output(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.INT64, [None])


def concat_of_one_name(elements: int = 1 << 22, repeats: int = 40) -> bytes:
    """ConstantOfShape makes `elements` int64 values, which one Concat reads `repeats` times
    (a few hundred bytes of file; 1.25 GB of folded constants at the defaults)."""
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="make",
                              value=numpy_helper.from_array(np.array([7], np.int64))),
             helper.make_node("Concat", ["big"] * repeats, ["bigger"], name="repeat", axis=0),
             helper.make_node("Shape", ["bigger"], ["out"], name="size")]
    return model_bytes(nodes, [], [int_output("out")], [ints("shape", [elements])])


def many_constant_of_shape(count: int = 20, elements: int = (1 << 24) - 1) -> bytes:
    """`count` ConstantOfShape nodes, each just under the per-fold limit (int64: 128 MB each)."""
    nodes = [helper.make_node("ConstantOfShape", ["shape"], [f"c{i}"], name=f"make{i}",
                              value=numpy_helper.from_array(np.array([1], np.int64)))
             for i in range(count)]
    nodes += [helper.make_node("Shape", [f"c{i}"], [f"s{i}"], name=f"shape{i}")
              for i in range(count)]
    outputs = [int_output(f"s{i}") for i in range(count)]
    return model_bytes(nodes, [], outputs, [ints("shape", [elements])])


def expanding_fold(op: str) -> bytes:
    """One Tile, Expand or Range whose folded output would hold 2**40 elements."""
    if op == "Tile":
        node = helper.make_node("Tile", ["small", "reps"], ["big"], name="bomb")
        inits = [ints("small", [1, 2]), ints("reps", [1 << 20, 1 << 19])]
    elif op == "Expand":
        node = helper.make_node("Expand", ["small", "shape"], ["big"], name="bomb")
        inits = [ints("small", [1]), ints("shape", [1 << 20, 1 << 20])]
    else:
        node = helper.make_node("Range", ["start", "limit", "delta"], ["big"], name="bomb")
        inits = [ints("start", 0), ints("limit", 1 << 40), ints("delta", 1)]
    return model_bytes([node, helper.make_node("Shape", ["big"], ["out"], name="size")], [],
                       [int_output("out")], inits)


def lying_initializer(dims=(1 << 20, 1 << 20)) -> bytes:
    """An initializer whose dims promise 2**40 floats with 4 bytes of raw data."""
    weight = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=list(dims),
                              raw_data=b"\0\0\0\0")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])
    return model_bytes([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [x], [y],
                       [weight])


def small_external_weight(length: int | None = None) -> bytes:
    """Add(x, w) with w float32[1, 4] in 'weights.bin'; without a `length` entry unless given."""
    weight = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1, 4])
    weight.data_location = TensorProto.EXTERNAL
    entries = {"location": "weights.bin", "offset": "0"}
    if length is not None:
        entries["length"] = str(length)
    for key, value in entries.items():
        weight.external_data.add(key=key, value=value)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    return model_bytes([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [x], [y],
                       [weight])


def relu_model(name: str = "relu") -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name=name)], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def with_invalid_utf8(field: str) -> bytes:
    """A valid one-node model whose `field` (node name, value name, graph name, op type) holds
    bytes that are not UTF-8 (protobuf accepts them when parsing)."""
    model = relu_model(name="NODE_NAME")
    model.graph.name = "GRAPH_NAME"
    marker = {"node": b"NODE_NAME", "graph": b"GRAPH_NAME", "value": b"\x12\x01x",
              "op_type": b"Relu"}[field]
    data = model.SerializeToString()
    if field == "value":   # every reference to the input 'x' (same length, so no re-framing)
        return data.replace(b"\x12\x01x", b"\x12\x01\xff").replace(b"\n\x01x", b"\n\x01\xff")
    bad = marker[:-1] + b"\xff"
    assert data.count(marker) == 1
    return data.replace(marker, bad)


# ---- byte mutations ----------------------------------------------------------------------------
def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four edits: a bit flipped, a byte set, bytes inserted, deleted or duplicated, or
    the file cut off."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        at = rng.randrange(len(data))
        kind = rng.randrange(6)
        if kind == 0:
            data[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[at] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif kind == 2:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 3:
            del data[at:at + rng.randint(1, 8)]
        elif kind == 4:
            data[at:at] = data[at:at + rng.randint(1, 32)]
        else:
            del data[at:]
    return bytes(data)


def parses(data: bytes) -> bool:
    try:
        onnx.ModelProto.FromString(data)
    except Exception:   # protobuf's DecodeError
        return False
    return True


def mutants(seeds: list[bytes], count: int, seed: int, parseable: float = 0.8) -> list[bytes]:
    """`count` mutations of the `seeds`, deterministic for a given `seed`. Most edits break the
    protobuf wire format, which the parser refuses at once; so a `parseable` share of the
    mutants is drawn again (up to 50 times) until it still parses, to reach the importer."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        original = rng.choice(seeds)
        data = mutate(original, rng)
        if rng.random() < parseable:
            for _ in range(50):
                if data != original and parses(data):
                    break
                data = mutate(original, rng)
        out.append(data)
    return out
