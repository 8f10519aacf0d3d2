"""The worker process: runs one job to done, failed or cancelled, reporting progress as it goes.

Started by :func:`analysis.jobs.submit` as ``python -m analysis.jobs run-worker <key> --cache-dir <dir>
--token <attempt>``; the submitter already holds the lock and hands it to this process. Run by hand
without ``--token`` it takes the lock itself (or exits quietly when a live job already holds it).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Callable

from ..engine import Cancelled, plan, run_plan
from ..environment import env_float
from ..errors import AnalysisError
from ..progress import Progress
from ..settings import AnalysisSettings
from . import lock
from .files import JobFiles, cache_root_of, read_json, write_progress

HANDOVER_TIMEOUT_S = 60.0
BATCH_DELAY_ENV = "ANALYSIS_JOB_BATCH_DELAY_S"
"""Seconds to pause after each batch (while still honouring cancel): for tests and demonstrations."""

EXIT_DONE, EXIT_FAILED, EXIT_CANCELLED, EXIT_NOT_OWNER = 0, 1, 3, 4


class JobError(AnalysisError):
    """A job that cannot run as requested (missing request, changed model or dataset, ...)."""


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
        if time.monotonic() > deadline:  # the submitter stalled after starting us: adopt the lock ourselves
            return lock.hand_over(files, token, os.getpid())
        time.sleep(0.02)


def _take_lock(files: JobFiles, token: str | None) -> str | None:
    """The attempt token once this process owns the lock, or None when another live job owns it."""
    if token is not None:
        return token if _wait_for_handover(files, token) else None
    info = lock.acquire(files, os.getpid(), "worker")
    return info.token if info is not None else None


class _Reporter:
    """Writes ``progress.json`` for one attempt."""

    def __init__(self, files: JobFiles, token: str, request: dict) -> None:
        self.files = files
        self.token = token
        self.model_id = str(request.get("model_id", ""))
        self.dataset_id = str(request.get("dataset_id", ""))
        self.started = time.time()
        self.last: Progress | None = None

    def write(self, state: str, message: str, progress: Progress | None = None) -> None:
        p = progress or self.last
        write_progress(
            self.files, state=state, message=message, token=self.token, pid=os.getpid(),
            model_id=self.model_id, dataset_id=self.dataset_id, started=self.started,
            stage=p.stage if p else "", batches_done=p.done if p else 0,
            batches_total=p.total if p else 0, images_done=p.items_done if p else 0,
            images_total=p.items_total if p else 0, elapsed_s=p.elapsed_s if p else time.time() - self.started,
            eta_s=p.eta_s if p else None, fraction=p.fraction if p else 0.0,
        )

    def on_batch(self, progress: Progress) -> None:
        self.last = progress
        if progress.total and progress.done >= progress.total:
            message = "statistics complete; computing spectra and metrics"
        else:
            message = f"{progress.stage}: batch {progress.done}/{progress.total}"
        self.write("running", message, progress)


def _settings_from(data: object) -> AnalysisSettings:
    """Rebuild the settings of ``request.json`` (unknown fields are an error, not silently dropped)."""
    if not isinstance(data, dict):
        raise JobError("request.json has no settings object; submit the analysis again")
    known = {f.name for f in dataclass_fields(AnalysisSettings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise JobError(f"request.json has unknown settings {', '.join(unknown)}; submit the analysis again")
    return AnalysisSettings(**data)


def _delay_batches(should_stop: Callable[[], bool]) -> None:
    """Honour :data:`BATCH_DELAY_ENV`: pause after a batch, returning early once a stop is requested."""
    delay = env_float(BATCH_DELAY_ENV, 0.0, minimum=0.0)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and not should_stop():
        time.sleep(min(0.05, delay))


def _execute(key: str, files: JobFiles, cache_dir: Path, reporter: _Reporter, request: dict, token: str) -> None:
    """Re-plan the request, check it is still the same analysis, and run it into the cache."""
    def should_stop() -> bool:
        return _StopSignal.requested or cancel_requested(files, token)

    def on_batch(progress: Progress) -> None:
        reporter.on_batch(progress)
        _delay_batches(should_stop)

    cwd = request.get("cwd")
    if isinstance(cwd, str) and Path(cwd).is_dir():
        os.chdir(cwd)  # relative model/dataset paths mean what they meant to the submitter
    settings = _settings_from(request.get("settings"))
    the_plan = plan(str(request.get("model_id")), str(request.get("dataset_id")), settings)
    if the_plan.key != key:
        raise JobError(
            f"the model or dataset changed since this analysis was submitted (key {the_plan.key} now, "
            f"{key} then); submit it again"
        )
    if should_stop():
        raise Cancelled("analysis cancelled")
    run_plan(the_plan, use_cache=True, cache_dir=str(cache_dir), progress=on_batch, should_stop=should_stop)


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
    try:
        reporter.write("running", "loading model and dataset")
        if not request:
            raise JobError(f"{files.request} is missing or unreadable; submit the analysis again")
        _execute(key, files, root, reporter, request, attempt)
    except Cancelled:
        reporter.write("cancelled", "cancelled")
        _log("cancelled")
        return EXIT_CANCELLED
    except BaseException as exc:  # noqa: BLE001 - every failure must be reported before the lock goes
        traceback.print_exc()
        message = describe_error(exc)
        reporter.write("failed", message)
        _log(f"failed: {message}")
        return EXIT_FAILED
    else:
        reporter.write("done", "done", reporter.last)
        _log("done")
        return EXIT_DONE
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        lock.release(files, attempt)
