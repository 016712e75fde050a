"""Every file graphopt writes appears whole or not at all: over a good file, a full disk
(`ulimit -f`, via RLIMIT_FSIZE in a child process), SIGTERM or Ctrl-C mid-write leave the old file
as it was and no temporary file behind, and the failure is one clean GraphoptError line."""
from __future__ import annotations

import os
import resource
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time

import onnx
import pytest

import graphopt as go
from graphopt import cli, files
from graphopt.errors import WriteError
from graphopt.frontends import dsl

# Ctrl-C as an interactive shell delivers it (`interruptible` in tests/conftest.py)
pytestmark = pytest.mark.usefixtures("interruptible")

OLD = b"the old content\n" * 64


def conv_net(channels: int = 8, name: str = "atomic"):
    """A one-conv graph; `channels` sets the weights' size (4 * 9 * channels**2 bytes)."""
    with dsl.Builder(name, seed=0) as b:
        x = b.input("input", (1, channels, 8, 8))
        return b.output(dsl.relu(dsl.conv2d(x, channels, 3, padding=1)))


def leftovers(folder) -> list[str]:
    """Hidden temporary files left in `folder`."""
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


def python(code: str, cwd, file_size_limit: int | None = None, **popen) -> subprocess.Popen:
    """A child Python running `code` in `cwd`, under `ulimit -f` = `file_size_limit` bytes."""
    def limit():
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                            preexec_fn=limit, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def finished(child: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = child.communicate(timeout=timeout)
    return child.returncode, out, err


# ---- in process ---------------------------------------------------------------------------------

def test_a_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(OLD)
    os.chmod(target, 0o640)
    files.write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640   # the old file's permissions kept
    files.write_text(tmp_path / "new.txt", "grüße")
    assert (tmp_path / "new.txt").read_text(encoding="utf-8") == "grüße"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("error, raised", [
    (ValueError("a bug in the writer"), ValueError),
    (KeyboardInterrupt(), KeyboardInterrupt),
    (OSError(28, "No space left on device"), WriteError),
])
def test_a_failed_block_leaves_the_old_file(tmp_path, error, raised):
    target = tmp_path / "out.bin"
    target.write_bytes(OLD)
    with pytest.raises(raised) as info:
        with files.atomic_open(target) as f:
            f.write(b"half")
            raise error
    assert target.read_bytes() == OLD
    assert leftovers(tmp_path) == []
    if raised is WriteError:
        assert str(info.value) == f"cannot write {target}: No space left on device (the disk or " \
                                  "quota is full)"


@pytest.mark.parametrize("where, message", [
    ("missing/out.onnx", "the folder .*missing does not exist"),
    (".", "it is a folder"),
])
def test_unwritable_paths_are_named(tmp_path, where, message):
    with pytest.raises(WriteError, match=f"cannot write .*: {message}"):
        go.save_onnx(conv_net(), tmp_path / where)
    assert leftovers(tmp_path) == []


def test_save_onnx_past_the_protobuf_limit_writes_model_and_weights_whole(tmp_path, monkeypatch):
    from graphopt.frontends import onnx_export
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 1000)
    target = tmp_path / "big.onnx"
    for channels in (8, 16):   # the second write replaces both files, it does not append
        go.save_onnx(conv_net(channels), target)
        assert (tmp_path / "big.onnx.data").stat().st_size == 4 * 9 * channels**2   # weights
    weight = onnx.load(str(target), load_external_data=False).graph.initializer[0]
    assert weight.data_location == onnx.TensorProto.EXTERNAL
    loaded = go.load_onnx(str(target))
    assert loaded.constants["conv.weight"].data.shape == (16, 16, 3, 3)
    assert leftovers(tmp_path) == []


def test_terminate_as_exception_installs_and_restores():
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("this process already handles SIGTERM")
    with files.terminate_as_exception():
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        with files.terminate_as_exception():   # nested: the outer handler stays
            assert signal.getsignal(signal.SIGTERM) is handler
        assert signal.getsignal(signal.SIGTERM) is handler
        seen = []
        thread = threading.Thread(target=lambda: seen.append(_enter_in_thread()))
        thread.start()
        thread.join()
        assert seen == [handler]               # a no-op outside the main thread
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.parametrize("made", ["folder", "file"])
@pytest.mark.parametrize("signum, raised", [(signal.SIGTERM, files.Terminated),
                                            (signal.SIGINT, KeyboardInterrupt)])
def test_a_signal_while_a_temporary_is_made_comes_once_its_name_is_kept(tmp_path, monkeypatch,
                                                                       made, signum, raised):
    """SIGTERM or Ctrl-C arriving between creating a temporary folder (or file) and keeping its
    name is handled once the name is kept, so the temporary is removed (one was left behind,
    now and then, by a SIGTERM mid-export). Another thread is alive, as in a process with TVM's
    thread pool: the kernel may hand it the signal, which blocking in the main thread misses."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("this process already handles SIGTERM")
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("this process already handles SIGINT")
    create = os.mkdir if made == "folder" else os.open

    def create_then_signalled(path, *args):
        result = create(path, *args)
        os.kill(os.getpid(), signum)    # deferred until the name is kept
        time.sleep(0.05)                # time for another thread to take it
        return result

    monkeypatch.setattr(files.os, "mkdir" if made == "folder" else "open", create_then_signalled)
    done = threading.Event()
    other = threading.Thread(target=done.wait)
    other.start()
    try:
        with pytest.raises(raised):
            if made == "folder":
                with files.temporary_directory("graphopt-test-", tmp_path):
                    pytest.fail("the deferred signal should have come before the block")
            else:
                with files.atomic_output(tmp_path / "out.bin"):
                    pytest.fail("the deferred signal should have come before the block")
    finally:
        done.set()
        other.join()
        monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_sigterm_during_the_clean_up_does_not_cut_it_short(tmp_path, monkeypatch):
    """The block failed and its folder is being removed when SIGTERM comes: the removal ends
    first, then `Terminated` is raised (with the block's error as its context)."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("this process already handles SIGTERM")
    rmtree = files.shutil.rmtree

    def signalled_then_rmtree(path, **options):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        for _ in range(3):              # a few Python-level steps where a handler could run
            time.sleep(0.001)
        rmtree(path, **options)

    monkeypatch.setattr(files.shutil, "rmtree", signalled_then_rmtree)
    with pytest.raises(files.Terminated) as raised:
        with files.temporary_directory("graphopt-test-", tmp_path) as folder:
            (tmp_path / folder / "part.so").write_bytes(b"x")
            raise ValueError("the block failed")
    monkeypatch.undo()
    assert isinstance(raised.value.__context__, ValueError)
    assert list(tmp_path.iterdir()) == []


def _enter_in_thread():
    with files.terminate_as_exception():
        return signal.getsignal(signal.SIGTERM)


def test_terminated_exits_like_sigterm():
    assert isinstance(files.Terminated(), SystemExit) and files.Terminated().code == 143


# ---- a full disk --------------------------------------------------------------------------------

def good_onnx(folder) -> bytes:
    path = folder / "model.onnx"
    go.save_onnx(conv_net(8), path)
    return path.read_bytes()


@pytest.mark.parametrize("sigxfsz", ["ignored", "default"])
def test_save_onnx_on_a_full_disk_keeps_the_old_model(tmp_path, sigxfsz):
    """Past `ulimit -f` the write fails with EFBIG, also in a process that restored SIGXFSZ's
    default action (which would kill it)."""
    old = good_onnx(tmp_path)
    child = python(f"""
        import signal
        import graphopt as go
        from graphopt.frontends import dsl
        if {sigxfsz!r} == "default":
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        with dsl.Builder("big", seed=0) as b:
            x = b.input("input", (1, 64, 8, 8))
            g = b.output(dsl.conv2d(x, 64, 3))
        try:
            go.save_onnx(g, "model.onnx")
        except go.GraphoptError as e:
            print(type(e).__name__, e)
        """, tmp_path, file_size_limit=len(old) + 100)
    code, out, err = finished(child)
    assert code == 0, err
    assert out.strip() == "WriteError cannot write model.onnx: File too large (over the file " \
                          "size limit, `ulimit -f`)"
    assert (tmp_path / "model.onnx").read_bytes() == old
    onnx.checker.check_model(onnx.load(str(tmp_path / "model.onnx")))
    assert leftovers(tmp_path) == []


def test_cli_convert_on_a_full_disk_fails_cleanly(tmp_path):
    old = good_onnx(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-m", "graphopt.cli", "-q", "convert", "lenet5", "model.onnx"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2**16, 2**16)))
    code, _, err = finished(child)
    assert code == cli.EXIT_FAILED, err
    assert err.strip() == "graphopt convert: error: cannot write model.onnx: File too large " \
                          "(over the file size limit, `ulimit -f`)"
    assert (tmp_path / "model.onnx").read_bytes() == old
    assert leftovers(tmp_path) == []


# ---- signals mid-write --------------------------------------------------------------------------

SLOW_WRITER = """
    import sys, time
    from graphopt.files import atomic_open, temporary_directory
    with temporary_directory("graphopt-test-") as work, atomic_open("out.bin") as f:
        print(work, flush=True)
        for _ in range(2000):
            f.write(b"x" * 4096)
            f.flush()
            time.sleep(0.005)
    """


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, -signal.SIGINT)])
def test_a_signal_mid_write_keeps_the_old_file(tmp_path, signum, status):
    (tmp_path / "out.bin").write_bytes(OLD)
    child = python(SLOW_WRITER, tmp_path)
    work = child.stdout.readline().strip()
    time.sleep(0.3)
    assert len(leftovers(tmp_path)) == 1   # the temporary file being written
    child.send_signal(signum)
    code, _, err = finished(child)
    assert code == status, err
    assert (tmp_path / "out.bin").read_bytes() == OLD
    assert leftovers(tmp_path) == []
    assert not os.path.exists(work)        # the temporary folder went too


def test_sigterm_between_write_and_rename_keeps_the_old_model(tmp_path):
    """save_onnx held after writing its temporary file, before the rename: SIGTERM there ends
    the process with status 143, the old model intact, the temporary file gone."""
    old = good_onnx(tmp_path)
    child = python("""
        import contextlib, time
        import graphopt as go
        from graphopt import files
        from graphopt.frontends import dsl, onnx_export

        @contextlib.contextmanager
        def held_open(path):
            with files.atomic_open(path) as f:
                yield f
                print("written", flush=True)
                time.sleep(60)

        onnx_export.atomic_open = held_open
        with dsl.Builder("big", seed=0) as b:
            x = b.input("input", (1, 64, 8, 8))
            g = b.output(dsl.conv2d(x, 64, 3))
        go.save_onnx(g, "model.onnx")
        """, tmp_path)
    assert child.stdout.readline().strip() == "written"
    assert len(leftovers(tmp_path)) == 1
    child.send_signal(signal.SIGTERM)
    code, _, err = finished(child)
    assert code == 143, err
    assert (tmp_path / "model.onnx").read_bytes() == old
    assert leftovers(tmp_path) == []
