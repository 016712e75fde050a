"""Caches heal: a damaged tuning database (cut short, garbage, wrong shapes, a folder in place of a
file) is reported once per file and ignored, and compiles go on with graphopt's own schedules; a
damaged cached oneDNN kernel library is found before it is loaded and rebuilt. Damaged caches are
read in child processes (TVM's reader ended the process on some of them), always in temporary
folders named by GRAPHOPT_TUNING_DIR / GRAPHOPT_ONEDNN_DIR, never the user's cache."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

pytest.importorskip("tvm")
from graphopt.targets.tvm import onednn  # noqa: E402
from graphopt.targets.tvm.tuning_database import RECORDS, WORKLOADS  # noqa: E402
from graphopt.targets.tvm.user_cache import CorruptCacheWarning  # noqa: E402


def _truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


def _edit_record(records, edit):
    line = json.loads(records.read_text())
    edit(line)
    records.write_text(json.dumps(line) + "\n")


def _replace_by_folder(path):
    path.unlink()
    path.mkdir()


# kind: (damage(records, workloads), the file the warning names, what it says)
DAMAGES = {
    "truncated_record_line": (lambda r, w: _truncate(r, -40), RECORDS, "line 1 is not JSON"),
    "truncated_workload_line": (lambda r, w: _truncate(w, 500), WORKLOADS, "line 1 is not JSON"),
    "garbage_records": (lambda r, w: r.write_bytes(b"\x00\xff\xfe garbage \x01" * 20), RECORDS,
                        "not text"),
    "binary_noise_workloads": (lambda r, w: w.write_bytes(np.random.default_rng(0).bytes(4000)),
                               WORKLOADS, "not text"),
    "empty_workloads_with_records": (lambda r, w: w.write_bytes(b""), RECORDS,
                                     "workload index 0 is out of range"),
    "record_is_an_object": (lambda r, w: r.write_text('{"workload": 0}\n'), RECORDS,
                            "expected a record"),
    "trace_is_an_object": (lambda r, w: _edit_record(r, lambda x: x[1].__setitem__(0, {"a": 1})),
                           RECORDS, "expected a trace"),
    "workload_index_out_of_range": (lambda r, w: _edit_record(r, lambda x: x.__setitem__(0, 7)),
                                    RECORDS, "workload index 7 is out of range"),
    "records_is_a_folder": (lambda r, w: _replace_by_folder(r), RECORDS, "is a folder"),
    "workloads_is_a_folder": (lambda r, w: _replace_by_folder(w), WORKLOADS, "is a folder"),
    "unknown_instruction": (lambda r, w: r.write_text(r.read_text().replace("GetSBlock", "Nope")),
                            "", "TVM cannot read the tuning database"),
}

# Builds a sound database with one record for the graph's dense kernel, then per damaged copy:
# loads it (warnings recorded), compiles with it, and lets `tune`'s writer add a record to it.
TUNING_CHILD = """
import json, sys, warnings
from pathlib import Path
import numpy as np
import tvm
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms
import graphopt as go
from graphopt.frontends import dsl
from graphopt.targets.tvm import tuning
from graphopt.targets.tvm.cpu import host_target

with dsl.Builder("heal", seed=0) as b:
    x = b.input("input", (1, 4, 6, 6))
    graph = b.output(dsl.linear(dsl.flatten(dsl.relu(dsl.conv2d(x, 8, 3))), 10))
target = host_target()
mod, _ = tuning.fused_module(graph)
name, func = next((gv.name_hint, f) for gv, f in mod.functions.items() if "matmul" in gv.name_hint)
workload = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
sch = s_tir.Schedule(workload)
i, j, k = sch.get_loops(sch.get_sblock("matmul"))
sch.parallel(sch.fuse(i, j))
record = ms.database.TuningRecord(sch.trace, ms.database.Workload(workload), [1e-6], target,
                                  ms.arg_info.ArgInfo.from_prim_func(func))
root = Path(sys.argv[1])
tuning.save_records(tuning.database_dir(target, root / "sound"), [(record, workload)])
print(tuning.database_dir(target, root / "sound").name, flush=True)
input()   # the test damages copies of the database now
results = {}
for kind in json.loads(sys.argv[2]):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = tuning.load_database(target, root / kind) is not None
        compiled = go.compile(graph, tuning=root / kind)
        ok = go.compare(graph, compiled, {"input": np.ones((1, 4, 6, 6), "float32")}).ok
        tuning.save_records(tuning.database_dir(target, root / kind), [(record, workload)])
        healed = tuning.load_database(target, root / kind) is not None
    results[kind] = {"loaded": loaded, "schedule": compiled.schedules[name], "ok": ok,
                     "healed": healed,
                     "warnings": [[w.category.__name__, str(w.message)] for w in caught]}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def tuning_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuning")
    kinds = ["sound", *DAMAGES]
    child = subprocess.Popen([sys.executable, "-c", TUNING_CHILD, str(root), json.dumps(kinds)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "GRAPHOPT_TUNING_DIR": str(root)})
    folder = child.stdout.readline().strip()
    assert folder, child.communicate()[1]
    for kind, (damage, _, _) in DAMAGES.items():
        shutil.copytree(root / "sound" / folder, root / kind / folder)
        damage(root / kind / folder / RECORDS, root / kind / folder / WORKLOADS)
    out, err = child.communicate("\n", timeout=600)
    assert child.returncode == 0, err[-3000:]
    return root, folder, json.loads(out.strip().splitlines()[-1])


def test_a_sound_database_is_used(tuning_results):
    _, _, results = tuning_results
    assert results["sound"] == {"loaded": True, "schedule": "meta_schedule", "ok": True,
                                "healed": True, "warnings": []}


@pytest.mark.parametrize("kind", DAMAGES)
def test_a_damaged_database_is_reported_once_and_ignored(tuning_results, kind):
    root, folder, results = tuning_results
    _, file, problem = DAMAGES[kind]
    result = results[kind]
    assert not result["loaded"]
    assert result["ok"] and result["schedule"] == "dense"   # compiled with graphopt's rule
    reports = [message for category, message in result["warnings"]
               if category == CorruptCacheWarning.__name__]
    assert len(reports) == 2, result["warnings"]   # the reader's, then the writer's
    reader, writer = reports
    assert reader.startswith(f"{root / kind / folder / file}".rstrip("/") + ":")
    assert problem in reader and "ignoring these tuning records" in reader
    assert problem in writer and "replacing it with the new records" in writer
    assert result["healed"]   # `tune`'s writer replaced the damaged files


# ---- the oneDNN kernel library ------------------------------------------------------------------

needs_onednn = pytest.mark.skipif(not onednn.available(),
                                  reason="oneDNN not installed (pip install -e '.[onednn]')")

ONEDNN_CHILD = """
import numpy as np
import graphopt as go
from graphopt.frontends import dsl
with dsl.Builder("heal_onednn", seed=0) as b:
    x = b.input("input", (1, 4, 8, 8))
    graph = b.output(dsl.relu(dsl.conv2d(x, 8, 3, padding=1)))
model = go.compile(graph, "cpu", kernels="onednn")
feeds = {"input": np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype("float32")}
print(len(model.offloaded), go.compare(graph, model, feeds).ok)
"""


@pytest.fixture(scope="module")
def healed_library(tmp_path_factory):
    """A cache holding garbage where the library should be, used by a fresh process that
    compiles with kernels="onednn": the library is rebuilt (a real build), then loaded."""
    cache = tmp_path_factory.mktemp("onednn")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(onednn.CACHE_ENV, str(cache))
        path = onednn.library_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(4096))
    path.with_name(path.name + ".sha256").write_text("0" * 64 + "\n")
    done = subprocess.run([sys.executable, "-c", ONEDNN_CHILD], capture_output=True, text=True,
                          timeout=600, env={**os.environ, onednn.CACHE_ENV: str(cache)})
    return path, done


@needs_onednn
def test_a_damaged_onednn_library_is_rebuilt_not_loaded(healed_library):
    path, done = healed_library
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["1", "True"]
    assert f"CorruptCacheWarning: {path}: does not match its checksum" in done.stderr
    assert onednn._sound(path)


def _damage_library(path):
    return {
        "truncated": lambda: _truncate(path, 5000),
        "garbage_of_the_same_size": lambda: path.write_bytes(bytes(path.stat().st_size)),
        "no_checksum": lambda: path.with_name(path.name + ".sha256").unlink(),
        "a_folder_in_its_place": lambda: (path.unlink(), path.mkdir()),
    }


@needs_onednn
@pytest.mark.parametrize("kind, problem", [
    ("truncated", "does not match its checksum from the build (truncated or overwritten)"),
    ("garbage_of_the_same_size", "does not match its checksum from the build (truncated or "
                                 "overwritten)"),
    ("no_checksum", "has no checksum beside it (a build cut short, or an older graphopt's)"),
    ("a_folder_in_its_place", "is not a file"),
])
def test_each_damage_is_found_and_rebuilt(healed_library, tmp_path, monkeypatch, kind, problem):
    """The cached library damaged in place; the rebuild copies the sound one (instead of
    running the compiler again)."""
    sound, _ = healed_library
    path = tmp_path / sound.parent.name / sound.name
    path.parent.mkdir()
    shutil.copy(sound, path)
    shutil.copy(sound.with_name(sound.name + ".sha256"), path.parent)
    monkeypatch.setattr(onednn, "library_path", lambda: path)
    monkeypatch.setattr(onednn, "compile_command", lambda out: ["cp", str(sound), out])
    assert onednn._sound(path)
    _damage_library(path)[kind]()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert onednn.build() == path
        assert onednn.build() == path   # sound again: no second report
    assert [str(w.message) for w in caught] == [f"{path}: {problem}; rebuilding it"]
    assert path.read_bytes() == sound.read_bytes() and onednn._sound(path)
