"""Where one job keeps its state: ``<cache root>/_jobs/<key>/``.

Files of a job folder::

    request.json    kind, model id, dataset id, the kind's parameters and the submitter's working folder
    lock            present while a job is queued or running (see :mod:`analysis.jobs.lock`)
    .lock.mutex     an flock target: exclusive for lock transitions, shared for readers' snapshots
    progress.json   state, kind, stage, progress fields, message, pid, updated (and a compression's
                    ``result``); rewritten atomically after each batch, its final version together with
                    the lock's removal
    cancel          flag file: its presence asks the worker to stop
    worker.log      the worker's stdout and stderr (appended to by every attempt)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..cache import ResultCache, atomic_write_bytes, check_key

JOBS_FOLDER = "_jobs"


@dataclass(frozen=True)
class JobFiles:
    """The paths of one job's files (nothing is created by building this)."""

    key: str
    folder: Path

    @classmethod
    def of(cls, key: str, cache_dir: str | Path | None = None) -> "JobFiles":
        """The job folder of ``key`` under the cache root (``cache_dir`` or the default root)."""
        check_key(key)
        return cls(key=key, folder=jobs_root(cache_dir) / key)

    @property
    def request(self) -> Path:
        return self.folder / "request.json"

    @property
    def lock(self) -> Path:
        return self.folder / "lock"

    @property
    def mutex(self) -> Path:
        return self.folder / ".lock.mutex"

    @property
    def progress(self) -> Path:
        return self.folder / "progress.json"

    @property
    def cancel(self) -> Path:
        return self.folder / "cancel"

    @property
    def log(self) -> Path:
        return self.folder / "worker.log"


def cache_root_of(cache_dir: str | Path | None) -> Path:
    """The resolved cache root, exactly as :class:`ResultCache` resolves it."""
    return ResultCache(cache_dir).root


def jobs_root(cache_dir: str | Path | None = None) -> Path:
    """``<cache root>/_jobs`` (not created here)."""
    return cache_root_of(cache_dir) / JOBS_FOLDER


def read_json(path: Path) -> dict | None:
    """The JSON object stored at ``path``, or None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: Path, value: dict) -> None:
    """Write ``value`` as JSON atomically (temporary file, fsync, rename)."""
    atomic_write_bytes(path, json.dumps(value, indent=1, sort_keys=True).encode())


def write_progress(files: JobFiles, **fields: object) -> dict:
    """Atomically replace ``progress.json`` with ``fields`` plus ``key`` and ``updated`` (epoch seconds)."""
    record = {**fields, "key": files.key, "updated": time.time()}
    write_json(files.progress, record)
    return record
