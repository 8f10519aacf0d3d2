"""Submit analyses and compressions to worker processes and follow them: :func:`submit`,
:func:`submit_compression`, :func:`status`, :func:`cancel`, :func:`wait`, :func:`list_jobs`.

Everything a caller sees is derived from files (the stored result, the lock, ``progress.json``), so any
process -- a reloaded Streamlit page, the CLI, another user's session -- sees the same state. They are read
in one :func:`~analysis.jobs.lock.snapshot`, and a final state is reported only once no live owner holds the
lock (see :mod:`analysis.jobs.lock` for why this is race-free).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..cache import KEY_PATTERN, ResultCache, atomic_write_bytes
from ..engine import plan
from ..paths import REPO_ROOT
from ..settings import AnalysisSettings
from . import job_queue, lock
from .files import JobFiles, cache_root_of, jobs_root, read_json, write_json, write_progress
from .job_kinds import DEFAULT_KIND, JobError, get_kind, kind_name
from .processes import kill_and_wait

STATES = ("absent", "queued", "running", "done", "failed", "cancelled")
FINAL_STATES = frozenset({"absent", "done", "failed", "cancelled"})
RECENT_S = 7 * 24 * 3600.0
CANCEL_GRACE_S = 10.0
"""A running job asked to stop checks at every layer of every batch; one that has not stopped this long after
the request (a long eigen-decomposition, a wedged library call) is killed by the next reader of its status,
and its final record says so. Nothing is stored by a killed job (results are written atomically)."""

_plan_lock = threading.Lock()
"""Planning loads models, which touches process-global state (the torch RNG for seeded random weights,
the model-source registry); Streamlit calls from several threads, so plans are made one at a time."""

_children: dict[int, subprocess.Popen] = {}
"""Workers started by this process, kept so that they are reaped (no zombies) once they exit."""


@dataclass(frozen=True)
class JobStatus:
    """What a job is doing now. ``state`` is one of :data:`STATES`; 'done' iff its result is stored.

    ``kind`` is ``analysis`` or ``compression``. ``stage`` names the current step; ``batches_done`` /
    ``batches_total`` count that step's units (analysis batches; for a compression the stage's images or
    fine-tuning steps); ``fraction`` and ``eta_s`` are for the whole job. ``result`` names a compression's
    stored summary file (in ``<cache>/compressions/``) once done.
    """

    key: str
    state: str
    kind: str = DEFAULT_KIND
    stage: str = ""
    result: str = ""
    batches_done: int = 0
    batches_total: int = 0
    images_done: int = 0
    images_total: int = 0
    elapsed_s: float = 0.0
    eta_s: float | None = None
    fraction: float = 0.0
    message: str = ""
    model_id: str = ""
    dataset_id: str = ""
    pid: int | None = None
    updated: float = 0.0
    submitted: float = 0.0
    """When the job was submitted (epoch seconds; 0 when unknown): ``elapsed_s`` counts from here, the click."""
    queue_position: int | None = None
    """While queued: how many jobs are ahead of it on this machine (the running one included)."""
    cancelling: bool = False
    """A cancel was asked for and the job has not stopped yet."""

    @property
    def finished(self) -> bool:
        """True for states that will not change without a new :func:`submit`."""
        return self.state in FINAL_STATES


def _number(value: object, kind: type, default: object) -> object:
    """``value`` converted to ``kind``, or ``default`` when it is missing or malformed."""
    try:
        return kind(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _from_record(key: str, state: str, record: dict, message: str | None = None,
                 pid: int | None = None, submitted: float = 0.0) -> JobStatus:
    """A :class:`JobStatus` in ``state`` filled from a ``progress.json`` record. With ``submitted`` known, the
    elapsed time counts from the submission (the user's click): up to now while the job is live, up to its
    last record once it is over."""
    fraction = 1.0 if state == "done" else min(1.0, max(0.0, _number(record.get("fraction"), float, 0.0)))
    elapsed = _number(record.get("elapsed_s"), float, 0.0)
    if submitted > 0:
        end = time.time() if state in ("queued", "running") else _number(record.get("updated"), float, 0.0)
        elapsed = max(elapsed, end - submitted) if end else elapsed
    return JobStatus(
        key=key, state=state, kind=str(record.get("kind") or DEFAULT_KIND), stage=str(record.get("stage") or ""),
        result=str(record.get("result") or "") if state == "done" else "",
        batches_done=_number(record.get("batches_done"), int, 0),
        batches_total=_number(record.get("batches_total"), int, 0),
        images_done=_number(record.get("images_done"), int, 0),
        images_total=_number(record.get("images_total"), int, 0),
        elapsed_s=elapsed,
        eta_s=None if state == "done" else _number(record.get("eta_s"), float, None),
        fraction=fraction,
        message=message if message is not None else str(record.get("message", "")),
        model_id=str(record.get("model_id", "")), dataset_id=str(record.get("dataset_id", "")),
        pid=pid if pid is not None else _number(record.get("pid"), int, None),
        updated=_number(record.get("updated"), float, 0.0), submitted=submitted,
    )


def _done_status(key: str, cache: ResultCache, record: dict, submitted: float = 0.0) -> JobStatus:
    """A 'done' status; without this job's final record it is described from the cache manifest."""
    if record.get("state") == "done":
        return _from_record(key, "done", record, message="done", submitted=submitted)
    entry = cache.entry(key)
    cached = {} if entry is None else {
        "model_id": entry.meta.model_id, "dataset_id": entry.meta.dataset_id, "images_done": entry.meta.n_images,
        "images_total": entry.meta.n_images, "updated": entry.created}
    return _from_record(key, "done", cached, message="done (cached)")


def _snapshot(files: JobFiles, cache_dir: str | None) -> tuple[lock.LockInfo | None, dict, dict, bool]:
    """``(lock owner, progress record, request, result stored)`` read as one consistent state."""
    with lock.snapshot(files):
        owner = lock.read_lock(files)
        record = read_json(files.progress) or {}
        request = read_json(files.request) or {}
        try:
            kind = get_kind(kind_name(request) if request else str(record.get("kind") or DEFAULT_KIND))
        except JobError:  # a request of a kind this code does not know: it can have no result here
            stored = False
        else:
            stored = kind.has_result(files.key, cache_root_of(cache_dir), record)
    return owner, record, request, stored


def status(key: str, *, cache_dir: str | None = None) -> JobStatus:
    """The state of job ``key`` (raises :class:`~analysis.errors.CacheError` for a malformed key).

    Rules, on one snapshot: while a live owner holds the lock the job is queued or running, even when
    its result is already stored (the worker is publishing); with no live owner, a stored result is done,
    and otherwise the last attempt's final record tells, a record left running means the worker died.
    A queued job's place in the machine's queue is read from :mod:`analysis.jobs.job_queue`. A running job
    that has not obeyed a cancel within :data:`CANCEL_GRACE_S` is stopped here (see there)."""
    _reap_children()
    files = JobFiles.of(key, cache_dir)
    owner, record, request, stored = _snapshot(files, cache_dir)
    state = record.get("state")
    same_attempt = owner is not None and record.get("token") == owner.token
    submitted = _number(request.get("submitted"), float, 0.0)
    if owner is not None and lock.owner_alive(owner):
        cancel_age = _cancel_age(files, owner.token)
        if same_attempt and state == "running" and cancel_age is not None and cancel_age > CANCEL_GRACE_S:
            if _force_cancel(files, owner, record):
                return status(key, cache_dir=cache_dir)
        if same_attempt and state in ("queued", "running"):
            position = job_queue.position(job_queue.queue_root(cache_root_of(cache_dir)), key) \
                if state == "queued" else None
            found = _from_record(key, state, record, pid=owner.pid, submitted=submitted)
            message = found.message
            if position is not None:
                message = queue_message(position)
            elif state == "queued" and key in job_queue.state(job_queue.queue_root(cache_root_of(cache_dir)))[0]:
                message = "its turn has come: starting the worker process"
            return replace(found, queue_position=position, cancelling=cancel_age is not None, message=message)
        if same_attempt:  # result stored or final record written by a worker that has not let go yet
            return _from_record(key, "running", {**record, "eta_s": 0.0}, message="storing the result",
                                pid=owner.pid, submitted=submitted)
        return _from_record(key, "queued", {"updated": owner.created, **_request_ids(request)},
                            message="waiting for the worker process to start", pid=owner.pid, submitted=submitted)
    if stored:
        return _done_status(key, ResultCache(cache_dir), record, submitted)
    if state in ("failed", "cancelled") and (owner is None or same_attempt):
        return _from_record(key, state, record, submitted=submitted)
    if owner is not None or state in ("queued", "running"):
        pid = owner.pid if owner is not None else _number(record.get("pid"), int, None)
        return _from_record(key, "failed", record,
                            message=f"the worker process (pid {pid}) ended without reporting a result; "
                                    f"see {files.log}", submitted=submitted)
    if state == "done":
        return _from_record(key, "absent", record,
                            message="the stored result is missing or damaged; submit the job again")
    return JobStatus(key=key, state="absent", kind=kind_name(request) if request else DEFAULT_KIND)


def queue_message(ahead: int) -> str:
    """What a queued job is waiting for, in words."""
    if ahead <= 0:
        return "next in the queue: starting in a moment"
    return f"waiting for its turn on this machine: {ahead} job{'s' * (ahead != 1)} ahead of it"


def _cancel_age(files: JobFiles, token: str) -> float | None:
    """Seconds since a cancel was asked for attempt ``token`` (None when none was)."""
    try:
        target = files.cancel.read_text().strip()
        age = time.time() - files.cancel.stat().st_mtime
    except OSError:
        return None
    return age if target in ("", token) else None


def _force_cancel(files: JobFiles, owner: lock.LockInfo, record: dict) -> bool:
    """Kill the worker of a job that did not obey its cancel in time and publish it as cancelled."""
    if not kill_and_wait(owner.pid, owner.start_ticks):
        return False
    final = {**record, "state": "cancelled", "token": owner.token,
             "message": f"cancelled: the worker had not stopped {CANCEL_GRACE_S:.0f} s after the request, so it was "
                        "stopped; nothing was stored"}
    lock.release(files, owner.token, final=final)
    job_queue.leave(job_queue.queue_root(cache_root_of(files.folder.parent.parent)), files.key)
    return True


def _request_ids(request: dict) -> dict:
    """``kind``, ``model_id`` and ``dataset_id`` from a ``request.json`` (empty when there is none yet)."""
    return {"kind": kind_name(request), "model_id": request.get("model_id", ""),
            "dataset_id": request.get("dataset_id", "")}


def _reap_children() -> None:
    """Collect the exit status of finished workers this process started."""
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[pid]


def _worker_environment(root: Path) -> dict[str, str]:
    """This process's environment, plus the cache root and the repository on the module path."""
    env = dict(os.environ)
    env["ANALYSIS_CACHE_DIR"] = str(root)
    paths = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _spawn_worker(files: JobFiles, root: Path, token: str, submitted: float) -> subprocess.Popen:
    """Start the detached process of attempt ``token``: it waits for its turn in the machine's queue
    (:mod:`analysis.jobs.job_queue`, a small process without torch), then becomes the worker; its output is
    appended to ``worker.log``."""
    worker = [sys.executable, "-m", "analysis.jobs", "run-worker", files.key, "--cache-dir", str(root),
              "--token", token]
    command = [sys.executable, str(Path(job_queue.__file__).resolve()), "wait",
               str(job_queue.queue_root(root)), files.key, str(int(submitted * 1e9)), "--", *worker]
    with open(files.log, "ab") as log:
        log.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] submitted attempt {token} "
                  f"from pid {os.getpid()}\n".encode())
        log.flush()
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=_worker_environment(root), start_new_session=True, close_fds=True)


def _start_attempt(files: JobFiles, root: Path, owner: lock.LockInfo, request: dict) -> None:
    """With the lock held by this process: record the request, start the worker and hand it the lock."""
    try:
        write_json(files.request, request)
        write_progress(files, state="queued", message="waiting for its turn on this machine",
                       token=owner.token, pid=os.getpid(), **_request_ids(request))
        proc = _spawn_worker(files, root, owner.token, float(request.get("submitted") or time.time()))
    except OSError as exc:
        lock.release(files, owner.token, final={
            "state": "failed", "token": owner.token, **_request_ids(request),
            "message": f"could not start the worker process ({exc.strerror or exc})"})
        raise JobError(f"could not start the worker process ({exc.strerror or exc})") from None
    _children[proc.pid] = proc
    lock.hand_over(files, owner.token, proc.pid)


def plan_request(model_id: str, dataset_id: str, settings: AnalysisSettings):
    """:func:`analysis.engine.plan` under this module's lock (safe from several threads, as :func:`submit`)."""
    with _plan_lock:
        return plan(model_id, dataset_id, settings)


def submit(model_id: str, dataset_id: str, settings: AnalysisSettings, *, cache_dir: str | None = None) -> str:
    """Start (or join) the analysis of ``model_id`` on ``dataset_id``; returns its key at once.

    Bad ids or settings raise :class:`~analysis.errors.AnalysisError` subclasses here. A cached result
    starts nothing; a live job for the same key is joined; otherwise a detached worker process starts.
    """
    _reap_children()
    the_plan = plan_request(model_id, dataset_id, settings)
    request = {"kind": "analysis", "model_id": model_id, "dataset_id": dataset_id,
               "settings": asdict(the_plan.settings)}
    return _submit(the_plan.key, request, cache_dir)


def submit_compression(request, *, cache_dir: str | None = None) -> str:
    """Start (or join) the compression ``request`` (a :class:`~analysis.compression.CompressionRequest`);
    returns its key at once. Like :func:`submit`: bad requests raise here, a stored summary of the same
    request starts nothing, a live job for it is joined."""
    from ..compression.pipeline import request_key

    _reap_children()
    with _plan_lock:
        request = request.validated()
        key = request_key(request)
    record = {"kind": "compression", "model_id": request.model, "dataset_id": request.dataset,
              "compression": request.as_dict()}
    return _submit(key, record, cache_dir)


def _stored(kind: str, key: str, root: Path, files: JobFiles) -> bool:
    return get_kind(kind).has_result(key, root, read_json(files.progress) or {})


def _submit(key: str, request: dict, cache_dir: str | None) -> str:
    """Join or start the job ``key`` running ``request`` (its ``kind``, ids and parameters)."""
    root = cache_root_of(cache_dir)
    files = JobFiles.of(key, root)
    kind = kind_name(request)
    if _stored(kind, key, root, files):
        return key
    owner = lock.acquire(files, os.getpid(), "submitter")
    if owner is None:
        return key  # a live job holds the key: join it
    if _stored(kind, key, root, files):  # a job finished between our check and the lock
        lock.release(files, owner.token)
        return key
    _start_attempt(files, root, owner, {**request, "cwd": os.getcwd(), "key": key, "submitted": time.time()})
    return key


def cancel(key: str, *, cache_dir: str | None = None) -> bool:
    """Stop the live job ``key``; True if there was one. A job still waiting in the queue is taken out and
    published as cancelled at once; a running one stops at its next layer (:data:`CANCEL_GRACE_S` at most,
    see :func:`status`)."""
    files = JobFiles.of(key, cache_dir)
    owner = lock.read_lock(files)
    if owner is None or not lock.owner_alive(owner):
        return False
    atomic_write_bytes(files.cancel, owner.token.encode())
    if job_queue.withdraw(job_queue.queue_root(cache_root_of(cache_dir)), key):
        record = read_json(files.progress) or {}
        lock.release(files, owner.token, final={
            **record, "state": "cancelled", "token": owner.token, "message": "cancelled before it started"})
    return True


def wait(key: str, timeout_s: float, *, cache_dir: str | None = None, poll_s: float = 0.2) -> JobStatus:
    """Poll until job ``key`` is finished or ``timeout_s`` passes; returns the last status either way."""
    deadline = time.monotonic() + timeout_s
    while True:
        _reap_children()
        current = status(key, cache_dir=cache_dir)
        if current.finished or time.monotonic() >= deadline:
            return current
        time.sleep(max(0.01, min(poll_s, deadline - time.monotonic())))


def queue(cache_dir: str | None = None) -> list[JobStatus]:
    """The machine's queue (:mod:`analysis.jobs.job_queue`): the running job, then the waiting ones in the
    order they will run, each with its status (jobs of other caches sharing the queue are left out)."""
    running, waiting = job_queue.state(job_queue.queue_root(cache_root_of(cache_dir)))
    found = [status(key, cache_dir=cache_dir) for key in running + waiting]
    return [s for s in found if s.state in ("queued", "running")]


def list_jobs(cache_dir: str | None = None, *, recent_s: float = RECENT_S,
              kind: str | None = DEFAULT_KIND) -> list[JobStatus]:
    """Queued and running jobs, plus jobs that failed or were cancelled within ``recent_s``; newest first.
    Only jobs of ``kind`` (analyses by default; None for every kind)."""
    _reap_children()
    root = jobs_root(cache_dir)
    if not root.is_dir():
        return []
    now = time.time()
    found = []
    for folder in root.iterdir():
        if not (folder.is_dir() and KEY_PATTERN.fullmatch(folder.name)):
            continue
        current = status(folder.name, cache_dir=cache_dir)
        if kind is not None and current.kind != kind:
            continue
        if current.state in ("queued", "running") or (
            current.state in ("failed", "cancelled") and now - current.updated <= recent_s
        ):
            found.append(current)
    return sorted(found, key=lambda s: s.updated, reverse=True)
