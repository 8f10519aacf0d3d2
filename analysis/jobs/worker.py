"""The worker process: runs one job to done, failed or cancelled, reporting progress as it goes.

Started by :func:`analysis.jobs.submit` as the machine queue's waiter (:mod:`analysis.jobs.job_queue`), which
becomes ``python -m analysis.jobs run-worker <key> --cache-dir <dir> --token <attempt>`` (same pid) when its
turn comes; the submitter already holds the lock and has handed it to that pid. The worker frees its slot of
the queue when it ends. Run by hand without ``--token`` it takes the lock itself (or exits quietly when a live
job already holds it) and does not wait in the queue. Asked to stop, it stops at the next layer of the batch
(the statistics check at every layer, the eigen stage between layers).

What the job does depends on its kind (``request.json``'s ``kind``, :mod:`analysis.jobs.job_kinds`); the lock,
the progress records and the cancel flag are the same for every kind. The final record is published by
:func:`analysis.jobs.lock.release` together with the lock's removal (see :mod:`analysis.jobs.lock`).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from pathlib import Path

from ..engine import Cancelled
from ..errors import AnalysisError
from . import job_queue, lock
from .analysis_job import BATCH_DELAY_ENV, HOLD_ENV  # noqa: F401 - re-exported: callers set them for workers
from .files import JobFiles, cache_root_of, read_json, write_progress
from .job_kinds import JobError, RunContext, get_kind, kind_name

HANDOVER_TIMEOUT_S = 60.0
CANCEL_POLL_S = 0.2

EXIT_DONE, EXIT_FAILED, EXIT_CANCELLED, EXIT_NOT_OWNER = 0, 1, 3, 4


class _StopSignal:
    """Set by SIGTERM/SIGINT (in the worker process) so that the data pass stops at the next batch."""

    requested = False


def install_stop_signals() -> None:
    """Turn SIGTERM and SIGINT into a cancel request (for the worker process's main thread only)."""
    def handler(_signum: int, _frame: object) -> None:
        _StopSignal.requested = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def describe_error(exc: BaseException) -> str:
    """One line for the UI: the message of an :class:`AnalysisError`, else ``TypeName: message``."""
    text = str(exc).strip()
    first = text.splitlines()[0].strip() if text else ""
    if isinstance(exc, AnalysisError):
        return first or type(exc).__name__
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def cancel_requested(files: JobFiles, token: str) -> bool:
    """Whether a cancel flag addressed to this attempt (or to whichever attempt runs) exists."""
    try:
        target = files.cancel.read_text().strip()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return target in ("", token)


def _log(message: str) -> None:
    """A timestamped line on stdout (which the submitter points at ``worker.log``)."""
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}", flush=True)


def _wait_for_handover(files: JobFiles, token: str) -> bool:
    """Wait until the submitter has pointed the lock at this process; False if the lock is not ours."""
    deadline = time.monotonic() + HANDOVER_TIMEOUT_S
    while True:
        current = lock.read_lock(files)
        if current is None or (current.token != token and current.role != lock.UNREADABLE):
            return False
        if current.token == token and current.pid == os.getpid():
            return True
        if current.token == token and not lock.owner_alive(current):  # the submitter died before handing over
            return lock.hand_over(files, token, os.getpid())
        if time.monotonic() > deadline:  # the submitter stalled after starting us: adopt the lock ourselves
            return lock.hand_over(files, token, os.getpid())
        time.sleep(0.02)


def _take_lock(files: JobFiles, token: str | None) -> str | None:
    """The attempt token once this process owns the lock, or None when another live job owns it."""
    if token is not None:
        return token if _wait_for_handover(files, token) else None
    info = lock.acquire(files, os.getpid(), "worker")
    return info.token if info is not None else None


PROGRESS_FIELDS = ("stage", "batches_done", "batches_total", "images_done", "images_total", "elapsed_s", "eta_s",
                   "fraction")


class _Reporter:
    """Builds the ``progress.json`` records of one attempt (the last reported progress fields are kept)."""

    def __init__(self, files: JobFiles, token: str, request: dict) -> None:
        self.files = files
        self.token = token
        self.kind = kind_name(request)
        self.model_id = str(request.get("model_id", ""))
        self.dataset_id = str(request.get("dataset_id", ""))
        self.started = time.time()
        self.progress: dict = {"stage": "", "batches_done": 0, "batches_total": 0, "images_done": 0,
                               "images_total": 0, "elapsed_s": None, "eta_s": None, "fraction": 0.0}

    def record(self, state: str, message: str, **extra: object) -> dict:
        """The fields of a record in ``state`` (the last progress, elapsed time now if none was reported)."""
        progress = dict(self.progress)
        if progress["elapsed_s"] is None:
            progress["elapsed_s"] = time.time() - self.started
        return {"state": state, "message": message, "token": self.token, "pid": os.getpid(), "kind": self.kind,
                "model_id": self.model_id, "dataset_id": self.dataset_id, "started": self.started,
                **progress, **extra}

    def running(self, message: str, **fields: object) -> None:
        """Rewrite ``progress.json`` as running with ``fields`` (see :class:`~analysis.jobs.job_kinds.RunContext`)."""
        unknown = set(fields) - set(PROGRESS_FIELDS)
        if unknown:
            raise TypeError(f"unknown progress fields {sorted(unknown)}")
        self.progress.update(fields)
        write_progress(self.files, **self.record("running", message))


def _outcome(key: str, files: JobFiles, root: Path, reporter: _Reporter, request: dict,
             token: str) -> tuple[str, str, dict, int]:
    """Run the job; ``(final state, message, extra final fields, exit code)`` whatever happens."""
    checked = {"at": 0.0, "stop": False}

    def should_stop() -> bool:  # asked at every layer: the flag file is read at most every CANCEL_POLL_S
        now = time.monotonic()
        if not checked["stop"] and now - checked["at"] >= CANCEL_POLL_S:
            checked.update(at=now, stop=cancel_requested(files, token))
        return _StopSignal.requested or checked["stop"]

    try:
        reporter.running("loading model and dataset")
        if not request:
            raise JobError(f"{files.request} is missing or unreadable; submit the job again")
        kind = get_kind(kind_name(request))
        cwd = request.get("cwd")
        if isinstance(cwd, str) and Path(cwd).is_dir():
            os.chdir(cwd)  # relative model/dataset paths mean what they meant to the submitter
        extra = kind.run(RunContext(key=key, request=request, cache_root=root, should_stop=should_stop,
                                    report=reporter.running))
    except Cancelled:
        _log("cancelled")
        return "cancelled", "cancelled", {}, EXIT_CANCELLED
    except BaseException as exc:  # noqa: BLE001 - every failure must be reported before the lock goes
        traceback.print_exc()
        message = describe_error(exc)
        _log(f"failed: {message}")
        return "failed", message, {}, EXIT_FAILED
    _log("done")
    return "done", "done", dict(extra or {}), EXIT_DONE


def run_worker(key: str, cache_dir: str | Path | None = None, token: str | None = None) -> int:
    """Run job ``key`` in this process; returns the exit code (0 done, 1 failed, 3 cancelled, 4 not owner)."""
    root = cache_root_of(cache_dir)
    files = JobFiles.of(key, root)
    attempt = _take_lock(files, token)
    if attempt is None:
        _log(f"worker pid {os.getpid()}: job {key} is held by another live process; nothing to do")
        return EXIT_NOT_OWNER
    _log(f"worker pid {os.getpid()} started attempt {attempt} of job {key}")
    request = read_json(files.request) or {}
    reporter = _Reporter(files, attempt, request)
    state, message, extra, code = "failed", "the worker stopped unexpectedly", {}, EXIT_FAILED
    try:
        state, message, extra, code = _outcome(key, files, root, reporter, request, attempt)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # publish the final record and remove the lock in one step (readers never see one without the other)
        if not lock.release(files, attempt, final=reporter.record(state, message, **extra)):
            _log(f"the lock of job {key} was no longer held by attempt {attempt}; final state not published")
        job_queue.leave(job_queue.queue_root(root), key)  # the next job in the queue may start
    return code
