"""What a job runs: its *kind*. The lock, the records and the worker process are the same for every kind.

A kind is named by ``request.json``'s ``"kind"`` field (``"analysis"`` when absent, as in requests written
before kinds existed) and supplies two things:

- ``run(context) -> dict``: do the work in the worker process, reporting progress through
  ``context.report`` and stopping (raise :class:`~analysis.engine.Cancelled`) once ``context.should_stop()``;
  it returns extra fields for the final record (say where the result was stored);
- ``has_result(key, cache_root, record) -> bool``: whether job ``key``'s result is stored (for an analysis:
  its cache entry; for a compression: the summary file its final record names).

Kinds: ``analysis`` (:mod:`analysis.jobs.analysis_job`) and ``compression``
(:mod:`analysis.jobs.compression_job`). Adding one is a module with those two functions and a line in
:data:`KIND_MODULES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from ..errors import AnalysisError

DEFAULT_KIND = "analysis"
KIND_MODULES = {"analysis": "analysis.jobs.analysis_job", "compression": "analysis.jobs.compression_job"}
"""Kind name -> the module defining its ``run`` and ``has_result`` (imported on first use)."""


class JobError(AnalysisError):
    """A job that cannot run as requested (missing request, changed model or dataset, unknown kind, ...)."""


class Report(Protocol):
    def __call__(self, message: str, **fields: object) -> None: ...


@dataclass(frozen=True)
class RunContext:
    """What a kind's ``run`` gets: the job's key and request, the cache root, and the worker's callbacks.

    ``report(message, **fields)`` rewrites ``progress.json`` as ``running`` with ``fields`` (any of
    ``stage, batches_done, batches_total, images_done, images_total, elapsed_s, eta_s, fraction``);
    fields not given keep their last reported value.
    """

    key: str
    request: dict
    cache_root: Path
    should_stop: Callable[[], bool]
    report: Report


@dataclass(frozen=True)
class JobKind:
    name: str
    run: Callable[[RunContext], dict]
    has_result: Callable[[str, Path, dict], bool]


def kind_name(request: dict) -> str:
    """The kind a ``request.json`` names (``analysis`` when it names none)."""
    return str(request.get("kind") or DEFAULT_KIND)


def get_kind(name: str) -> JobKind:
    """The kind called ``name`` (a :class:`JobError` for an unknown one)."""
    module_name = KIND_MODULES.get(name)
    if module_name is None:
        raise JobError(f"unknown job kind {name!r}; known kinds: {', '.join(sorted(KIND_MODULES))}")
    module = importlib.import_module(module_name)
    return JobKind(name=name, run=module.run, has_result=module.has_result)
