"""One heavy job at a time: the first-come, first-served queue every job passes before its worker runs.

Analyses and compressions each take the whole machine (two busy cores run two jobs at half speed each, and
both finish late), so :func:`analysis.jobs.submit` does not start the worker at once. It starts a *waiter*:
this file run as a script (standard library only: a waiting job costs a few MB and imports no torch). The
waiter writes its ticket, waits until its turn, moves its ticket to ``running/`` and replaces itself with the
worker (``os.execv``: same pid, so the job's lock, which names that pid, stays valid). Every browser session,
the CLI's jobs and every page (Analyze, Compare, Timeline, Compress, One image) share this one queue, so the
position a user is shown is the machine's.

Files under the queue folder (``<cache root>/_jobs/_queue``; ``$ANALYSIS_QUEUE_DIR`` shares one queue between
several caches)::

    .mutex                     flock target: held (exclusive) while a ticket is added, claimed or withdrawn
    waiting/<ns>-<key>.json    one ticket per waiting job: {"key", "pid", "start_ticks", "submitted"}
    running/<key>.json         one per job holding a slot: {"key", "pid", "start_ticks", "started"}

Rules:

- ``$ANALYSIS_JOB_SLOTS`` slots (default 1) exist; a slot is held by a live process listed in ``running/``.
- Tickets are served in the order of their ``submitted`` time (nanoseconds, then key): the *i*-th live ticket
  may claim a slot when ``i < slots - running``. Claiming happens under the mutex, so two waiters never take
  one slot.
- A ticket or a slot whose process is gone (pid and start time, :mod:`analysis.jobs.processes`) is dropped by
  whoever sees it, so a killed waiter or worker never blocks the queue.
- A waiting job is cancelled by :func:`withdraw`: under the mutex its ticket is still there, hence its waiter
  has not become the worker; the waiter is killed and the ticket removed (the caller publishes the job's
  final record).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator

try:
    from .processes import kill_and_wait, process_alive, process_start_ticks
except ImportError:  # run as a script (the waiter): no package, standard library only
    from processes import kill_and_wait, process_alive, process_start_ticks  # type: ignore[no-redef]

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the queue still orders, without the mutex
    fcntl = None  # type: ignore[assignment]

QUEUE_DIR_ENV = "ANALYSIS_QUEUE_DIR"
SLOTS_ENV = "ANALYSIS_JOB_SLOTS"
DEFAULT_SLOTS = 1
POLL_S = 0.2
"""How often a waiter looks whether its turn has come."""
QUEUE_FOLDER = "_queue"


def queue_root(cache_root: str | Path) -> Path:
    """The queue folder of the cache at ``cache_root`` (``$ANALYSIS_QUEUE_DIR`` when set)."""
    shared = os.environ.get(QUEUE_DIR_ENV, "").strip()
    return Path(shared).expanduser().resolve() if shared else Path(cache_root) / "_jobs" / QUEUE_FOLDER


def slots() -> int:
    """How many jobs may run at once (``$ANALYSIS_JOB_SLOTS``, at least 1; 1 when unset or malformed)."""
    try:
        return max(1, int(os.environ.get(SLOTS_ENV, "").strip() or DEFAULT_SLOTS))
    except ValueError:
        return DEFAULT_SLOTS


@contextlib.contextmanager
def _mutex(root: Path) -> Iterator[None]:
    (root / "waiting").mkdir(parents=True, exist_ok=True)
    (root / "running").mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(root / ".mutex", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, value: dict) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, sort_keys=True))
    os.replace(tmp, path)


def _read(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _live(entry: dict | None) -> bool:
    return entry is not None and process_alive(int(entry.get("pid") or 0), entry.get("start_ticks"))


def _sweep(root: Path) -> tuple[list[tuple[Path, dict]], list[tuple[Path, dict]]]:
    """``(running, waiting)``: the live entries (waiting ones in queue order), dropping dead ones."""
    found = {}
    for folder in ("running", "waiting"):
        live = []
        for path in sorted((root / folder).glob("*.json")):
            entry = _read(path)
            if _live(entry):
                live.append((path, entry))
            else:
                path.unlink(missing_ok=True)  # its process is gone
        found[folder] = live
    waiting = sorted(found["waiting"], key=lambda item: (int(item[1].get("submitted") or 0), item[1]["key"]))
    return found["running"], waiting


def ticket_name(submitted_ns: int, key: str) -> str:
    return f"{submitted_ns:020d}-{key}.json"


def wait_turn(root: Path, key: str, submitted_ns: int, poll_s: float = POLL_S) -> None:
    """In the waiter: put this process's ticket in the queue and return once it holds a slot."""
    me = {"key": key, "pid": os.getpid(), "start_ticks": process_start_ticks(os.getpid()), "submitted": submitted_ns}
    ticket = root / "waiting" / ticket_name(submitted_ns, key)
    with _mutex(root):
        _write(ticket, me)
    while True:
        with _mutex(root):
            running, waiting = _sweep(root)
            free = slots() - len(running)
            ahead = [entry["key"] for _, entry in waiting].index(key) if ticket.exists() else None
            if ahead is None:  # someone dropped the ticket (it cannot happen to a live waiter): queue again
                _write(ticket, me)
            elif ahead < free:
                _write(root / "running" / f"{key}.json", {**me, "started": time.time()})
                ticket.unlink(missing_ok=True)
                return
        time.sleep(poll_s)


def leave(root: Path, key: str) -> None:
    """In the worker, once its job is over: free its slot."""
    with _mutex(root):
        (root / "running" / f"{key}.json").unlink(missing_ok=True)


def started(root: Path, key: str) -> float | None:
    """When the job ``key`` took its slot (epoch seconds), None when it holds none."""
    entry = _read(root / "running" / f"{key}.json")
    return float(entry["started"]) if entry and "started" in entry else None


def position(root: Path, key: str) -> int | None:
    """How many jobs are ahead of the waiting job ``key`` (running ones included); None when it is not waiting."""
    if not (root / "waiting").is_dir():
        return None
    running, waiting = _snapshot(root)
    keys = [entry["key"] for entry in waiting]
    return len(running) + keys.index(key) if key in keys else None


def _snapshot(root: Path) -> tuple[list[dict], list[dict]]:
    """Live running and waiting entries, without taking the mutex (readers only look)."""
    running = [e for e in (_read(p) for p in (root / "running").glob("*.json")) if _live(e)]
    waiting = [e for e in (_read(p) for p in (root / "waiting").glob("*.json")) if _live(e)]
    return running, sorted(waiting, key=lambda e: (int(e.get("submitted") or 0), e["key"]))


def state(root: Path) -> tuple[list[str], list[str]]:
    """``(running keys, waiting keys in queue order)`` of the queue at ``root``."""
    if not (root / "waiting").is_dir():
        return [], []
    running, waiting = _snapshot(root)
    return [e["key"] for e in running], [e["key"] for e in waiting]


def withdraw(root: Path, key: str) -> bool:
    """Take the waiting job ``key`` out of the queue, stopping its waiter; False when it is not waiting
    (it already holds a slot, or never queued): then it must be cancelled as a running job."""
    if not (root / "waiting").is_dir():
        return False
    with _mutex(root):
        for path in (root / "waiting").glob(f"*-{key}.json"):
            entry = _read(path)
            if entry is not None and entry.get("key") == key:
                kill_and_wait(int(entry.get("pid") or 0), entry.get("start_ticks"))
                path.unlink(missing_ok=True)
                return True
    return False


def main(argv: list[str]) -> int:
    """``job_queue.py wait QUEUE_DIR KEY SUBMITTED_NS -- WORKER_COMMAND...``: wait, then become the worker."""
    if len(argv) < 6 or argv[0] != "wait" or argv[4] != "--":
        print("usage: job_queue.py wait QUEUE_DIR KEY SUBMITTED_NS -- COMMAND...", file=sys.stderr)
        return 2
    root, key, submitted = Path(argv[1]), argv[2], int(argv[3])
    command = argv[5:]
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] waiter pid {os.getpid()}: queued", flush=True)
    wait_turn(root, key, submitted)
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] waiter pid {os.getpid()}: its turn; starting the worker",
          flush=True)
    os.execv(command[0], command)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
