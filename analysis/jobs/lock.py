"""The per-key job lock: one live job per content key.

The lock file holds JSON naming its owner: ``pid``, ``hostname``, ``start_ticks`` (the process start time
from ``/proc/<pid>/stat``, so that a recycled pid is not mistaken for the owner), ``created``, a random
``token`` identifying this attempt, and ``role`` (``submitter`` until the worker process has been handed
the lock, then ``worker``).

It is created with ``O_CREAT | O_EXCL``, so only one process can create it. A lock whose owner is gone
(no such pid, a zombie, or a pid now belonging to a process that started at another time) is stale and
is taken over: renamed aside to a unique name, then created afresh with ``O_EXCL``. Acquisition,
hand-over and release run under an ``flock`` on a separate mutex file (released by the kernel if its
holder dies), so two contenders can never both judge one stale lock and both win.

A lock naming a process on another host cannot be checked and is treated as live.

**Final states and the lock, atomically.** A job's final record (done, failed or cancelled) is written by
:func:`release` in the same critical section that removes the lock: under the exclusive mutex, write the
record, then unlink the lock. Readers (:func:`analysis.jobs.status`) take the mutex *shared*
(:func:`snapshot`) while they read the lock, the record and the stored result, so every reader sees either
"lock held, job not final" or "lock gone, final record published", never a mixture. On top of that a
reader never reports a final state while a live owner holds the lock (the worker stores its result before
it releases, so "result stored, lock held" means "finishing", reported as running). Together:

- a reader that sees a final state will not find the lock afterwards (unless a *new* attempt took it);
- a reader never sees "lock gone, record still running" from a worker that finished normally, so it never
  mistakes a finished worker for one that died without reporting;
- a worker killed inside the critical section leaves its lock stale (owner dead): readers then trust the
  record it left, final or not (a non-final one is reported as a failure).

The order the other way round (release, then publish) would open exactly that second window.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Iterator

from ..cache import atomic_write_bytes
from .files import JobFiles, write_progress
from .processes import process_alive, process_start_ticks  # noqa: F401 - re-exported

try:  # POSIX only; without it the rename + O_EXCL protocol still keeps creation exclusive
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

UNREADABLE_LOCK_GRACE_S = 30.0
"""An empty or unparsable lock younger than this is assumed to be mid-write by its creator (live)."""
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class LockInfo:
    """The owner recorded in a lock file."""

    pid: int
    hostname: str
    start_ticks: int | None
    created: float
    token: str
    role: str

    @classmethod
    def for_process(cls, pid: int, token: str, role: str) -> "LockInfo":
        """An owner record for process ``pid`` on this host."""
        return cls(pid=pid, hostname=socket.gethostname(), start_ticks=process_start_ticks(pid),
                   created=time.time(), token=token, role=role)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()


def new_token() -> str:
    """A random identifier for one job attempt."""
    return uuid.uuid4().hex


def owner_alive(info: LockInfo) -> bool:
    """Whether the lock's owner still runs (always True for a lock taken on another host)."""
    if info.role == UNREADABLE:
        return time.time() - info.created < UNREADABLE_LOCK_GRACE_S
    if info.hostname != socket.gethostname():
        return True
    return process_alive(info.pid, info.start_ticks)


def read_lock(files: JobFiles) -> LockInfo | None:
    """The owner named by the lock, or None when there is no lock.

    An empty or unparsable lock (its creator is between ``open`` and ``write``, or died there) is
    reported with role ``unreadable``: live while younger than :data:`UNREADABLE_LOCK_GRACE_S`, else stale.
    """
    try:
        raw = files.lock.read_bytes()
        mtime = files.lock.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError:
        raw, mtime = b"", time.time()
    try:
        data = json.loads(raw)
        return LockInfo(pid=int(data["pid"]), hostname=str(data["hostname"]),
                        start_ticks=None if data.get("start_ticks") is None else int(data["start_ticks"]),
                        created=float(data["created"]), token=str(data["token"]), role=str(data["role"]))
    except (ValueError, KeyError, TypeError):
        return LockInfo(pid=0, hostname=socket.gethostname(), start_ticks=None, created=mtime, token="",
                        role=UNREADABLE)


def lock_is_live(files: JobFiles) -> bool:
    """Whether a lock exists and its owner is alive."""
    info = read_lock(files)
    return info is not None and owner_alive(info)


@contextlib.contextmanager
def snapshot(files: JobFiles) -> Iterator[None]:
    """Hold a *shared* ``flock`` on the job's mutex while reading the lock, the record and the result.

    Lock transitions (:func:`acquire`, :func:`hand_over`, :func:`release` with its final record) hold the
    mutex exclusively, so what a reader reads inside this block is one consistent state. Nothing is
    created for a job folder that does not exist (a reader of an unknown key leaves no trace); a job
    created meanwhile is then simply seen as it was before its creation.
    """
    if fcntl is None or not files.folder.is_dir():  # pragma: no cover - no flock, or no job yet
        yield
        return
    try:
        fd = os.open(files.mutex, os.O_CREAT | os.O_RDONLY, 0o644)
    except FileNotFoundError:  # the folder went away between the check and the open
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the flock


@contextlib.contextmanager
def _mutex(files: JobFiles) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the job's mutex file (a no-op where flock does not exist)."""
    files.folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(files.mutex, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _create(files: JobFiles, info: LockInfo) -> bool:
    """Create the lock with ``O_CREAT | O_EXCL``; False if it already exists."""
    try:
        fd = os.open(files.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(info.to_bytes())
        fh.flush()
        os.fsync(fh.fileno())
    return True


def _remove_stale(files: JobFiles) -> None:
    """Move the (stale) lock aside to a unique name, then delete the moved file."""
    aside = files.lock.with_name(f"lock.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(files.lock, aside)
    except FileNotFoundError:
        return
    aside.unlink(missing_ok=True)


def acquire(files: JobFiles, pid: int, role: str) -> LockInfo | None:
    """Take the lock for process ``pid`` (taking over a stale one); None when a live owner holds it."""
    info = LockInfo.for_process(pid, new_token(), role)
    with _mutex(files):
        if _create(files, info):
            return info
        current = read_lock(files)
        if current is not None and owner_alive(current):
            return None
        _remove_stale(files)
        return info if _create(files, info) else None


def hand_over(files: JobFiles, token: str, pid: int) -> bool:
    """Re-point the lock of attempt ``token`` at the worker process ``pid``; False if it is not ours."""
    with _mutex(files):
        current = read_lock(files)
        if current is None or current.token != token:
            return False
        atomic_write_bytes(files.lock, LockInfo.for_process(pid, token, "worker").to_bytes())
        return True


def release(files: JobFiles, token: str, final: dict | None = None) -> bool:
    """Remove the lock if it still belongs to attempt ``token``; True if it was removed.

    ``final`` (the fields of the attempt's final ``progress.json`` record) is written first, inside the
    same exclusive section, so no reader can see the lock gone without the final record or the record
    final with the lock still there (see the module docstring). It is not written when the lock is not
    ours: the job then belongs to another attempt, whose record must not be overwritten.
    """
    with _mutex(files):
        current = read_lock(files)
        if current is None or current.token != token:
            return False
        if final is not None:
            write_progress(files, **final)
        files.lock.unlink(missing_ok=True)
        return True
