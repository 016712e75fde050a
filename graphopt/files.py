"""Writing files so that a reader never sees half of one.

Every file graphopt writes goes through `atomic_output` (or `atomic_open`, `write_bytes`,
`write_text`): the content is written to a hidden temporary file beside the destination, synced,
and renamed over it. A full disk, a file-size limit, Ctrl-C or SIGTERM leave the old file as it
was and no temporary file behind; a failed write is a `WriteError` naming the path and the cause.

    with atomic_open("model.onnx") as f:      # or: with atomic_output(path) as tmp: tool(tmp)
        f.write(data)
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import threading
from contextlib import contextmanager
from typing import IO, Callable, Iterator

from .errors import WriteError

TERMINATED_STATUS = 128 + signal.SIGTERM   # what a shell reports for a process ended by SIGTERM


class Terminated(SystemExit):
    """SIGTERM, raised inside `terminate_as_exception` so that `finally` blocks and context
    managers clean up; uncaught, the process exits with status 143 like one ended by SIGTERM."""

    def __init__(self) -> None:
        super().__init__(TERMINATED_STATUS)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def terminate_as_exception() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` instead of ending the process on the spot.

    Only SIGTERM's default action is replaced: a handler the program installed itself (or an
    enclosing `terminate_as_exception`) and an ignored SIGTERM are left as they are, and the
    previous handler is restored on the way out. Signals reach only the main thread, so in
    other threads this does nothing. A second SIGTERM while the first one's exception unwinds
    is ignored, so that clean-up is not cut short."""
    if not _in_main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    fired = False

    def raise_terminated(signum, frame):
        nonlocal fired
        if not fired:
            fired = True
            raise Terminated()

    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def _file_size_limit_as_error() -> Iterator[None]:
    """Past `ulimit -f` the kernel sends SIGXFSZ, whose default action kills the process;
    ignored, the write fails with EFBIG instead. (CPython ignores it already; an embedding
    program may not.)"""
    if not _in_main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGXFSZ)
    if previous is None or previous is signal.SIG_IGN:   # None: set outside Python, leave it
        yield
        return
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGXFSZ, previous)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGTERM and SIGINT deferred while inside and handled on leaving: around making a
    temporary file or folder and keeping its name, so that the clean-up always knows what to
    remove (a signal between the two left an export's scratch folder behind), and around the
    removal, so that a signal does not cut it short; and while threads running native code
    are waited for (`graphopt.worker_threads`).

    Python runs signal handlers in the main thread whichever thread the kernel picked, so the
    handlers are swapped for ones that only note the signal; blocking the signals with
    `pthread_sigmask` is not enough, as other threads (TVM's, a test runner's) still take
    them. Only Python-level handlers are deferred: a default or ignored SIGTERM is left as it
    is (outside `terminate_as_exception` SIGTERM ends the process anyway)."""
    if not _in_main_thread():
        yield
        return
    noted: list[int] = []
    handlers = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(signum)
        if callable(handler):
            handlers[signum] = handler
            signal.signal(signum, lambda signum, frame: noted.append(signum))
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(noted):   # each signal once, in the order they came
            handlers[signum](signum, sys._getframe())


def _unique_path(folder: str, prefix: str, suffix: str, create: Callable[[str], None]) -> str:
    """Create a new file or folder named prefix<random>suffix in `folder` with `create`."""
    for _ in range(100):
        path = os.path.join(folder, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            create(path)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", folder)


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)   # the portable way to read it is to set it
    os.umask(mask)
    return mask


def _permissions(old_mode: int | None, executable: bool) -> int:
    """The old file's permissions, else the umask's; execute bits where the writer (a linker)
    set some."""
    mode = old_mode if old_mode is not None else 0o666 & ~_umask()
    return mode | (0o111 & ~_umask() if executable else 0)


def _fsync(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cause(error: OSError, path: str) -> str:
    folder = os.path.dirname(path) or "."
    if error.errno == errno.ENOENT and not os.path.isdir(folder):
        return f"the folder {folder} does not exist"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{error.strerror} (the disk or quota is full)"
    if error.errno == errno.EFBIG:
        return f"{error.strerror} (over the file size limit, `ulimit -f`)"
    return error.strerror or str(error)


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path in the same folder as `path` (hidden: '.<name>.<random>.tmp')
    for the block to write. When the block succeeds the file is synced, renamed onto `path`
    and the folder synced: readers see the old file or the whole new one, never a part.

    When the block raises (KeyboardInterrupt and, inside, SIGTERM too) or the write fails
    (ENOSPC, EFBIG under `ulimit -f`, ...), the temporary file is removed and `path` is left as
    it was. An OSError becomes a `WriteError` ('cannot write <path>: <cause>'); any other
    exception propagates as it is. A symbolic link at `path` is replaced, not followed. The
    new file keeps the old one's permissions (else the umask's), plus execute bits if the
    writer set any."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    if os.path.isdir(path):
        raise WriteError(f"cannot write {path}: it is a folder; expected a file path")
    try:
        old_mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        old_mode = None
    temporary = None
    with terminate_as_exception(), _file_size_limit_as_error():
        try:
            with signals_deferred():
                temporary = _unique_path(folder, f".{name[:200]}.", ".tmp", lambda p: os.close(
                    os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)))
            yield temporary
            # Created 0600 (private until complete); a linker may have made it executable.
            executable = bool(os.stat(temporary).st_mode & 0o111)
            os.chmod(temporary, _permissions(old_mode, executable))
            _fsync(temporary)
            os.replace(temporary, path)
            temporary = None
            try:
                _fsync(folder, directory=True)
            except OSError:   # some file systems cannot sync a folder; the rename is done
                pass
        except OSError as e:
            raise WriteError(f"cannot write {path}: {_cause(e, path)}") from e
        finally:
            if temporary is not None:
                with signals_deferred():   # a signal now must not cut the removal short
                    _remove(temporary)


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    except OSError:
        pass


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """`open(path, mode)` for writing ("w" or "wb", text as UTF-8) through `atomic_output`:
    the file appears at `path` complete when the block ends, or not at all."""
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_open writes whole files: expected mode 'w' or 'wb', "
                         f"found {mode!r}")
    with atomic_output(path) as temporary:
        with open(temporary, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically, as UTF-8."""
    with atomic_open(path, "w") as f:
        f.write(text)


@contextmanager
def temporary_directory(prefix: str, dir: str | os.PathLike | None = None) -> Iterator[str]:
    """A new folder (in `dir`, default the system's temporary folder) removed with all it holds
    when the block ends, however it ends: exception, KeyboardInterrupt or SIGTERM."""
    parent = os.fspath(dir) if dir is not None else tempfile.gettempdir()
    folder = None
    with terminate_as_exception():
        try:
            with signals_deferred():
                folder = _unique_path(parent, prefix, "", lambda p: os.mkdir(p, 0o700))
            yield folder
        finally:
            if folder is not None:
                with signals_deferred():   # a signal now must not cut the removal short
                    shutil.rmtree(folder, ignore_errors=True)


def safe_file_name(name: str, fallback: str = "model") -> str:
    """`name` made into one plain file name for the current folder: no path separators, no
    '..', no leading dot or dash, no control or odd characters (each becomes '_'); `fallback`
    when nothing is left."""
    kept = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)
    while ".." in kept:
        kept = kept.replace("..", ".")
    kept = kept.lstrip("._-")[:120].rstrip("._")
    return kept or fallback
