"""graphopt's folders in the user's cache directory (tuning records, built kernel libraries)."""
from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir(name: str, env_var: str) -> Path:
    """`$<env_var>` when set, else `$XDG_CACHE_HOME/graphopt/<name>`, else
    `~/.cache/graphopt/<name>`."""
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "graphopt" / name
