"""The run directory (``--out``): its default name, one writer at a time, crash-safe files.

- ``open_run_dir`` creates the directory (``runs/<data>-<date>-<time>`` when none is named),
  proves it writable, takes its lock, clears what a dead writer left (``*.tmp``), and sets the
  files of a run that ended before its first checkpoint aside (``unfinished-<date>-<time>/``)
  so that it can start over without anything being deleted.
- ``DirectoryLock``: an ``flock`` on ``OUT/.lock`` held for the whole run. The kernel drops it
  when the holder exits in any way (SIGKILL included), so a lock file left by a dead process
  is recognised as free; the file names the holder (pid, host, start) for the refusal message.
- ``write_atomic`` / ``append_line``: a failed write (a full disk, Ctrl-C) leaves the previous
  file as it was and no temporary file behind; ``OutputError`` names the file and the cause.
- ``read_metrics``: metrics.jsonl with a partial last line (a kill during its append) tolerated.
"""

import contextlib
import datetime
import errno
import fcntl
import itertools
import json
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch.distributed as dist

from .config import NO_OUT, ConfigError

LOCK_NAME = ".lock"
# What a run writes and a restart sets aside when the run left no checkpoint.
RUN_FILES = ("config.yaml", "metrics.jsonl", "tensorboard", "unreadable.txt", "nmi.png",
             "cluster_sizes.png", "conv1_filters.png")


class OutputError(RuntimeError):
    """A file of the run could not be written; the message names it and the cause."""


def os_reason(exc: OSError) -> str:
    """The cause of a failed file operation in a few words ("no space left on device")."""
    reasons = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied"}
    return reasons.get(exc.errno, (exc.strerror or str(exc)).lower())


def _stamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


# ---- writing -----------------------------------------------------------------------------------

def _during_interrupt(exc: BaseException | None) -> bool:
    """Whether ``exc`` was raised while a Ctrl-C (``KeyboardInterrupt``) was being handled."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__context__
    return False


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)`` into ``path.tmp``, flushed to disk, then rename it
    over ``path``: a kill or a failure at any moment leaves the old file or the new one. A failed
    write (or Ctrl-C) removes the temporary file; an ``OSError`` becomes ``OutputError``. Ctrl-C
    stays a ``KeyboardInterrupt`` even when the writer fails while unwinding from it (torch.save's
    zip writer raises a RuntimeError on a record it did not finish)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if not isinstance(exc, KeyboardInterrupt) and _during_interrupt(exc):
            raise KeyboardInterrupt from exc
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {os_reason(exc)} (the previous "
                              f"{path.name}, if any, is unchanged)") from exc
        raise
    # Make the rename itself durable.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))


def append_line(path: Path, line: str) -> None:
    """Append ``line`` + newline to ``path``; on failure cut the file back to its old length (if
    even that fails, ``read_metrics`` skips the partial last line)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        rest = memoryview((line + "\n").encode())
        while rest:
            rest = rest[os.write(fd, rest):]
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise OutputError(f"cannot append to {path}: {os_reason(exc)}") from exc
    finally:
        os.close(fd)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; [] when there is none. A last line cut short (the
    process died while appending it) is dropped; any other malformed line is an error that names
    the line, since the file then is not ours or was edited."""
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise OutputError(f"cannot read {path}: {os_reason(exc)}") from exc
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):  # no newline after it: an append cut short
                continue
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise OutputError(f"{path} line {number} is not a per-epoch record of "
                              "deepcluster-train; move the file away to go on without it")
        records.append(record)
    return records


# ---- the lock ----------------------------------------------------------------------------------

class DirectoryLock:
    """An exclusive ``flock`` on ``directory/.lock``, refused at once when held elsewhere."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> str:
        """Take the lock, or raise ``ConfigError`` naming its holder. Returns the description of
        a dead holder whose lock file was left behind ('' when there was none)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _holder(os.pread(fd, 4096, 0))
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise ConfigError(
                        f"--out {self.path.parent} is in use by another deepcluster-train "
                        f"({holder or 'holder unknown'}): wait for it to end or choose another "
                        "--out (nothing was changed)") from None
                raise ConfigError(f"cannot lock --out {self.path.parent}: "
                                  f"{os_reason(exc)}") from exc
            # The previous holder may have removed the file between our open and our flock:
            # then the lock is on a file nobody else sees; take it again on the current one.
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    break
            os.close(fd)
        stale = _holder(os.pread(fd, 4096, 0))
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now().isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
        except OSError as exc:
            self._fd = fd
            self.release()
            raise OutputError(f"cannot write {self.path}: {os_reason(exc)}") from exc
        self._fd = fd
        return stale

    def release(self) -> None:
        """Remove the lock file and drop the lock (the file goes first, so that nobody takes a
        lock on a file about to disappear without noticing)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


def _holder(raw: bytes) -> str:
    try:
        info = json.loads(raw)
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (ValueError, TypeError, KeyError):
        return ""


# ---- the directory -----------------------------------------------------------------------------

class RunDir:
    """An output directory this process holds; ``close`` releases it (and removes the
    directories it created when nothing was written in them: a run refused at set-up leaves
    nothing behind)."""

    def __init__(self, path: Path, created: list[Path], notes: list[str]):
        self.path, self.created, self.notes = path, created, notes
        self.lock = DirectoryLock(path)

    def close(self) -> None:
        self.lock.release()
        for directory in reversed(self.created):
            try:
                directory.rmdir()
            except OSError:  # not empty: the run wrote something
                break


def default_out(data: str) -> Path:
    """``runs/<name of the data>-<date>-<time>`` (relative to the working directory)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(data.rstrip("/")).stem).strip("-.")
    return Path("runs") / f"{name or 'data'}-{_stamp()}"


def _make_dirs(path: Path, fresh: bool) -> tuple[Path, list[Path]]:
    """Create ``path`` (when ``fresh``, a new directory: ``path``, else ``path``-2, -3, ...);
    returns it and the directories this created, outermost first."""
    missing = [p for p in path.parents if not p.exists()][::-1]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:
            base = path
            for n in itertools.count(2):
                try:
                    path.mkdir()
                    break
                except FileExistsError:  # another run started in the same second
                    path = base.with_name(f"{base.name}-{n}")
            missing.append(path)
        else:
            if not path.exists():
                missing.append(path)
            path.mkdir(exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        culprit = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise ConfigError(f"--out {path}: {culprit} is a file, not a directory") from None
    except (OSError, ValueError) as exc:
        reason = os_reason(exc) if isinstance(exc, OSError) else str(exc)
        raise ConfigError(f"cannot create --out {path}: {reason}") from exc
    return path, missing


def writable_dir(path: Path) -> None:
    """Create ``path`` if needed and prove that a file can be written in it; ``ConfigError``
    with the reason (read-only, full, a file in the way) otherwise."""
    _make_dirs(path, fresh=False)
    _probe(path)


def _probe(path: Path) -> None:
    probe = path / f".probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"deepcluster-train write probe\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise ConfigError(f"cannot write to --out {path}: {os_reason(exc)}") from exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def open_run_dir(out: str, data: str, resume: bool) -> RunDir:
    """The run directory for ``--out out`` ('' = a new default one), created, probed, locked
    and tidied; raises ``ConfigError`` (nothing changed) when it cannot hold this run."""
    if out == NO_OUT:
        raise ValueError("--out none has no directory")
    if resume and not out:
        raise ConfigError("--resume needs --out DIR (the directory of the run to continue)")
    path, created = _make_dirs(Path(out) if out else default_out(data), fresh=not out)
    run_dir = RunDir(path, created, [])
    try:
        _probe(path)
        stale = run_dir.lock.acquire()
        if stale:
            run_dir.notes.append(f"{path} was locked by a process that has ended ({stale}); "
                                 "taking it over")
        has_checkpoint = (path / "checkpoint.pt").exists()
        leftovers = [name for name in RUN_FILES if (path / name).exists()]
        if has_checkpoint and not resume:
            raise ConfigError(f"{path} already holds a run: pass --resume to continue it, "
                              "or choose another --out (nothing was changed)")
        if resume and not has_checkpoint and not leftovers:
            raise ConfigError(f"--resume: no checkpoint.pt in {path} to continue from")
        # We hold the lock: a temporary file here is what a dead writer left half-written.
        for tmp in path.glob("*.tmp"):
            tmp.unlink()
        if leftovers and not has_checkpoint:
            aside, _ = _make_dirs(path / f"unfinished-{_stamp()}", fresh=True)
            for name in leftovers:
                os.replace(path / name, aside / name)
            run_dir.notes.append(f"{path} held a run that ended before its first checkpoint: "
                                 f"starting it over at epoch 0, its files moved to {aside}")
    except BaseException as exc:
        run_dir.close()
        if isinstance(exc, OSError):
            raise ConfigError(f"cannot prepare --out {path}: {os_reason(exc)}") from exc
        raise
    return run_dir


def same_on_every_rank(value: Any) -> Any:
    """Rank 0's ``value`` on every rank of the job (the value itself without torchrun)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
