"""Where tuning records live: one MetaSchedule JSON database per target under the user cache
directory (`$GRAPHOPT_TUNING_DIR`, else `$XDG_CACHE_HOME/graphopt/tuning`, else
`~/.cache/graphopt/tuning`). Read by the CPU pipeline, written by `tuning.tune`."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .user_cache import user_cache_dir

CACHE_ENV = "GRAPHOPT_TUNING_DIR"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir) if cache_dir is not None else user_cache_dir("tuning", CACHE_ENV)


def database_dir(target, cache_dir=None) -> Path:
    """One directory per target: records tuned for another CPU or core count never apply."""
    config = {k: str(v) for k, v in sorted(dict(target.export()).items())
              if k in ("kind", "mcpu", "mtriple", "num-cores", "mattr")}
    digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root(cache_dir) / f"{config.get('mcpu', 'generic')}-{config.get('num-cores', '?')}c-{digest}"


def load_database(target, cache_dir=None):
    """The target's MetaSchedule database, or None when nothing was tuned for it."""
    directory = database_dir(target, cache_dir)
    records = directory / "database_tuning_record.json"
    if not records.is_file() or records.stat().st_size == 0:
        return None
    from tvm.s_tir import meta_schedule as ms
    return ms.database.JSONDatabase(work_dir=str(directory), allow_missing=False)
