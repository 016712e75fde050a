"""Exported libraries are checked before they are loaded: a truncated, byte-flipped or foreign
library is refused with ModelFormatError, and describing one (`graphopt show`, `read_export`)
never runs its code. Mutants are loaded in child processes: a crash fails the test, it does not
take the suite down."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphopt as go
from graphopt import runtime
from graphopt.errors import ModelFormatError
from graphopt.frontends import dsl

pytest.importorskip("tvm")


def tiny_net():
    with dsl.Builder("tiny_export", seed=0) as b:
        x = b.input("input", (1, 2, 6, 6))
        return b.output(dsl.relu(dsl.conv2d(x, 4, 3, padding=1)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> str:
    return go.compile(tiny_net(), "cpu").export(str(tmp_path_factory.mktemp("lib") / "tiny.so"))


def mutants(data: bytes, count: int, seed: int) -> list[bytes]:
    """Truncations, byte flips, zeroed runs, inserted and appended bytes, spread over the file."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        b = bytearray(data)
        kind = i % 5
        at = int(rng.integers(0, len(b)))
        if kind == 0:
            del b[at:]
        elif kind == 1:
            for pos in rng.integers(0, len(b), size=int(rng.integers(1, 4))):
                b[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == 2:
            end = min(len(b), at + int(rng.integers(1, 4096)))
            b[at:end] = bytes(end - at)
        elif kind == 3:
            b[at:at] = bytes(rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8))
        else:
            b += bytes(rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8))
        if bytes(b) != data:
            out.append(bytes(b))
    return out


CHILD = textwrap.dedent("""
    import json, sys
    import graphopt as go
    from graphopt.errors import GraphoptError
    results = []
    for path in sys.argv[1:]:
        try:
            go.load(path)
            results.append("loaded")
        except GraphoptError as e:
            results.append("refused: " + str(e).splitlines()[0])
        except BaseException as e:
            results.append(f"raw {type(e).__name__}: {e}")
    print(json.dumps(results))
""")


CHILD_MEMORY = 4 << 30   # address space, bytes: a mutant must not make loading allocate more


def limit_memory() -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


def load_in_child(paths: list[str]) -> list[str]:
    done = subprocess.run([sys.executable, "-c", CHILD, *paths], capture_output=True,
                          text=True, timeout=300, preexec_fn=limit_memory)
    assert done.returncode == 0, f"child died ({done.returncode}): {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_mutants(exported: str, folder, count: int, seed: int) -> None:
    data = open(exported, "rb").read()
    paths = []
    for i, mutant in enumerate(mutants(data, count, seed)):
        path = folder / f"mutant{i}.so"
        path.write_bytes(mutant)
        paths.append(str(path))
    results = load_in_child(paths)
    bad = [(p, r) for p, r in zip(paths, results) if not r.startswith("refused")]
    assert not bad, bad[:5]


def test_damaged_libraries_are_refused_before_loading(exported, tmp_path):
    check_mutants(exported, tmp_path, count=60, seed=0)


@pytest.mark.slow
def test_damaged_libraries_long_run(exported, tmp_path):
    check_mutants(exported, tmp_path, count=1000, seed=1)


def test_the_intact_library_still_loads_in_a_child(exported):
    assert load_in_child([exported]) == ["loaded"]


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.999])
def test_truncated_library_is_named_damaged(exported, tmp_path, keep):
    data = open(exported, "rb").read()
    path = tmp_path / "cut.so"
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ModelFormatError, match="not a graphopt export|damaged"):
        runtime.read_export(str(path))


def test_flipped_byte_is_named_damaged(exported, tmp_path):
    data = bytearray(open(exported, "rb").read())
    data[len(data) // 3] ^= 0x10
    path = tmp_path / "flipped.so"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="damaged .*sha256"):
        go.load(str(path))


@pytest.fixture(scope="module")
def library_with_constructor(tmp_path_factory):
    """A shared library whose constructor leaves a marker file: loading it runs code."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("needs a C compiler to build the test library")
    folder = tmp_path_factory.mktemp("evil")
    source = folder / "evil.c"
    marker = folder / "constructor-ran"
    source.write_text(textwrap.dedent(f"""
        #include <stdio.h>
        __attribute__((constructor)) static void ran(void) {{
            FILE *f = fopen("{marker}", "w"); if (f) fclose(f);
        }}
    """))
    library = folder / "evil.so"
    subprocess.run([shutil.which("cc") or "gcc", "-shared", "-fPIC", str(source), "-o",
                    str(library)], check=True)
    return library, marker


def test_describing_a_foreign_library_runs_none_of_its_code(library_with_constructor):
    library, marker = library_with_constructor
    done = subprocess.run([sys.executable, "-m", "graphopt.cli", "show", str(library)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "not a graphopt export" in done.stderr + done.stdout
    with pytest.raises(ModelFormatError, match="not a graphopt export"):
        go.load(str(library))
    assert not marker.exists()


def test_metadata_names_the_libraries_it_needs_before_loading(exported):
    metadata, fatbin = runtime.read_export(exported)
    assert metadata["format"] == runtime.FORMAT and metadata["version"] == 2
    assert fatbin is None and "cuda_fatbin" not in metadata


EXPORT_CHILD = textwrap.dedent("""
    import resource, sys
    import graphopt as go
    from graphopt.errors import GraphoptError
    from graphopt.frontends import dsl
    with dsl.Builder("tiny_export", seed=1) as b:
        x = b.input("input", (1, 2, 6, 6))
        graph = b.output(dsl.relu(dsl.conv2d(x, 4, 3, padding=1)))
    model = go.compile(graph, "cpu")
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
    try:
        model.export(sys.argv[1])
    except GraphoptError as e:
        print("refused:", e)
""")


@pytest.mark.parametrize("limit", [4096, 1 << 20])
def test_export_over_the_file_size_limit_keeps_the_old_library(exported, tmp_path, limit):
    """Under `ulimit -f` the export is refused cleanly: the library already at the path still
    loads, and neither its folder nor the temporary folder keeps a partial file."""
    target = tmp_path / "model.so"
    target.write_bytes(open(exported, "rb").read())
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = subprocess.run([sys.executable, "-c", EXPORT_CHILD, str(target), str(limit)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(scratch)})
    assert done.returncode == 0 and "refused: cannot write" in done.stdout, done.stderr[-2000:]
    assert "ulimit -f" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.so", "tmp"]
    assert list(scratch.iterdir()) == []
    assert runtime.read_export(str(target))[0]["graph"] == "tiny_export"


SIGTERM_CHILD = textwrap.dedent("""
    import sys
    import graphopt as go
    model = go.compile(go.zoo.MODELS["lenet5"](batch=1, seed=0), "cpu")
    print("exporting", flush=True)
    while True:   # until the signal comes
        model.export(sys.argv[1])
""")


def test_sigterm_during_export_leaves_nothing_behind(exported, tmp_path):
    import signal
    import time
    target = tmp_path / "model.so"
    target.write_bytes(open(exported, "rb").read())
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    child = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD, str(target)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "TMPDIR": str(scratch)})
    assert child.stdout.readline().strip() == "exporting"
    time.sleep(1.5)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.so", "tmp"]
    assert list(scratch.iterdir()) == []
    runtime.read_export(str(target))     # whole: the old library or a complete new one
