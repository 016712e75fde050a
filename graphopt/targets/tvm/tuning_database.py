"""Where tuning records live: one MetaSchedule JSON database per target under the user cache
directory (`$GRAPHOPT_TUNING_DIR`, else `$XDG_CACHE_HOME/graphopt/tuning`, else
`~/.cache/graphopt/tuning`). Read by the CPU pipeline, written by `tuning.tune`.

A damaged database (cut short by a crash, overwritten, edited by hand) is checked here before
TVM reads it, because TVM's reader ends the process on some malformed lines; it is reported
once (a `CorruptCacheWarning`) and compiles go on without it."""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path

from .user_cache import user_cache_dir, warn_corrupt

CACHE_ENV = "GRAPHOPT_TUNING_DIR"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir) if cache_dir is not None else user_cache_dir("tuning", CACHE_ENV)


def database_dir(target, cache_dir=None) -> Path:
    """One directory per target: records tuned for another CPU or core count never apply."""
    config = {k: str(v) for k, v in sorted(dict(target.export()).items())
              if k in ("kind", "mcpu", "mtriple", "num-cores", "mattr")}
    digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root(cache_dir) / f"{config.get('mcpu', 'generic')}-{config.get('num-cores', '?')}c-{digest}"


def load_database(target, cache_dir=None):
    """The target's MetaSchedule database, or None when nothing was tuned for it or its files
    are damaged (then a warning names the file and what is wrong with it)."""
    database, problem = read_database(database_dir(target, cache_dir))
    if problem is not None:
        warn_corrupt(*problem, "ignoring these tuning records (`graphopt tune` rebuilds them)")
    return database


def read_database(directory: Path):
    """(the MetaSchedule database in `directory` or None, None) when it is sound or absent;
    (None, (the damaged file, what is wrong)) when it is not."""
    if not (directory / RECORDS).exists():
        return None, None
    problem = check_database(directory)
    if problem is not None:
        return None, problem
    if (directory / RECORDS).stat().st_size == 0:
        return None, None
    from tvm.s_tir import meta_schedule as ms
    try:
        return ms.database.JSONDatabase(work_dir=str(directory), allow_missing=False), None
    except (RuntimeError, ValueError) as e:   # what TVM's reader rejects beyond check_database
        message = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        message = message.replace("parallel_for_dynamic error with ", "")
        return None, (directory, f"TVM cannot read the tuning database: {message}")


def check_database(directory: Path) -> tuple[Path, str] | None:
    """The first damaged file of the database in `directory` and what is wrong with it, or
    None. Checks the line shapes TVM's JSONDatabase expects: workloads
    `["<structural hash>", "<base64 module>"]`, records
    `[workload index, [trace, run_secs, target, args_info]]`."""
    workloads, problem = _read_lines(directory / WORKLOADS)
    if problem is None:
        problem = _first_bad_line(workloads, _workload_problem)
    if problem is not None:
        return directory / WORKLOADS, problem
    records, problem = _read_lines(directory / RECORDS)
    if problem is None:
        problem = _first_bad_line(records, lambda r: _record_problem(r, len(workloads)))
    return (directory / RECORDS, problem) if problem is not None else None


def _read_lines(path: Path) -> tuple[list[tuple[int, object]], str | None]:
    """(line number, parsed JSON) of each non-empty line, or the reason the file is unreadable."""
    if not path.exists():
        return [], None if path.name == WORKLOADS else "missing"
    if not path.is_file():
        return [], "is a folder or special file, not a file"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        return [], f"not text (byte {e.start} is not UTF-8)"
    except OSError as e:
        return [], f"unreadable ({e.strerror})"
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                lines.append((number, json.loads(line)))
            except json.JSONDecodeError as e:
                return [], f"line {number} is not JSON ({e.msg})"
    return lines, None


def _first_bad_line(lines, problem_of) -> str | None:
    for number, value in lines:
        problem = problem_of(value)
        if problem is not None:
            return f"line {number}: {problem}"
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _list_of(value, size: int | None = None) -> bool:
    return isinstance(value, list) and (size is None or len(value) == size)


def _workload_problem(line) -> str | None:
    if not (_list_of(line, 2) and all(isinstance(v, str) for v in line)):
        return "expected a workload [\"<hash>\", \"<base64 module>\"]"
    if not line[0].isdigit():
        return f"expected a decimal structural hash, found {line[0][:20]!r}"
    try:
        base64.b64decode(line[1], validate=True)
    except binascii.Error:
        return "the module is not base64"
    return None


def _record_problem(line, workload_count: int) -> str | None:
    if not (_list_of(line, 2) and _is_int(line[0]) and _list_of(line[1], 4)):
        return "expected a record [workload index, [trace, run_secs, target, args_info]]"
    if not 0 <= line[0] < workload_count:
        return (f"workload index {line[0]} is out of range: the workload file holds "
                f"{workload_count}")
    trace, run_secs, target, args_info = line[1]
    if not (_list_of(trace, 2) and _list_of(trace[0]) and _list_of(trace[1])):
        return "expected a trace [instructions, decisions]"
    for inst in trace[0]:
        if not (_list_of(inst, 4) and isinstance(inst[0], str)
                and all(_list_of(part) for part in inst[1:])):
            return "expected each instruction as [name, inputs, attributes, outputs]"
    if not all(_list_of(d, 2) and _is_int(d[0]) for d in trace[1]):
        return "expected each decision as [instruction index, value]"
    if run_secs is not None and not (_list_of(run_secs) and all(
            isinstance(s, (int, float)) and not isinstance(s, bool) for s in run_secs)):
        return "expected run_secs as a list of numbers"
    if not isinstance(target, dict):
        return "expected the target as an object"
    if args_info is not None and not (_list_of(args_info) and all(_list_of(a) for a in args_info)):
        return "expected args_info as a list of lists"
    return None
