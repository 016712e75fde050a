"""graphopt's folders in the user's cache directory (tuning records, built kernel libraries),
and the one warning a damaged cache file gets before graphopt goes on without it."""
from __future__ import annotations

import os
import warnings
from pathlib import Path


class CorruptCacheWarning(UserWarning):
    """A cache file that cannot be used (truncated, garbage, of the wrong shape): graphopt
    ignores or rebuilds it and goes on."""


_warned: set[tuple[str, str]] = set()


def user_cache_dir(name: str, env_var: str) -> Path:
    """`$<env_var>` when set, else `$XDG_CACHE_HOME/graphopt/<name>`, else
    `~/.cache/graphopt/<name>`."""
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "graphopt" / name


def warn_corrupt(path: str | os.PathLike, problem: str, action: str) -> None:
    """Warn that cache file `path` is unusable (`problem`) and what graphopt does instead
    (`action`), once per file and action per process."""
    key = (os.path.abspath(os.fspath(path)), action)
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(f"{path}: {problem}; {action}", CorruptCacheWarning, stacklevel=3)
