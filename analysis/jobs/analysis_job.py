"""The ``analysis`` job kind: one analysis (:func:`analysis.engine.run_plan`) into the result cache.

Request fields: ``model_id``, ``dataset_id``, ``settings`` (the :class:`AnalysisSettings` fields), ``cwd``.
The job key is the analysis' cache key, so the job is done exactly when the cache holds that entry.
"""

from __future__ import annotations

import os
import time
from dataclasses import fields as dataclass_fields
from pathlib import Path

from ..cache import ResultCache
from ..engine import Cancelled, plan, run_plan
from ..environment import env_float
from ..progress import Progress
from ..settings import AnalysisSettings
from .job_kinds import JobError, RunContext

BATCH_DELAY_ENV = "ANALYSIS_JOB_BATCH_DELAY_S"
"""Seconds to pause after each batch (while still honouring cancel): for demonstrations."""
HOLD_ENV = "ANALYSIS_JOB_HOLD_FILE"
"""A path: while that file exists, the worker pauses after each batch (still honouring cancel). Tests use it
to keep a job running for exactly as long as they need, whatever the machine's speed."""


def settings_from(data: object) -> AnalysisSettings:
    """Rebuild the settings of ``request.json`` (unknown fields are an error, not silently dropped)."""
    if not isinstance(data, dict):
        raise JobError("request.json has no settings object; submit the analysis again")
    known = {f.name for f in dataclass_fields(AnalysisSettings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise JobError(f"request.json has unknown settings {', '.join(unknown)}; submit the analysis again")
    return AnalysisSettings(**data)


def pause_after_batch(should_stop) -> None:
    """Honour :data:`BATCH_DELAY_ENV` and :data:`HOLD_ENV`, returning early once a stop is requested."""
    delay = env_float(BATCH_DELAY_ENV, 0.0, minimum=0.0)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and not should_stop():
        time.sleep(min(0.05, delay))
    hold = os.environ.get(HOLD_ENV)
    while hold and Path(hold).exists() and not should_stop():
        time.sleep(0.05)


def _message(progress: Progress) -> str:
    if progress.total and progress.done >= progress.total:
        return "statistics complete; computing spectra and metrics"
    return f"{progress.stage}: batch {progress.done}/{progress.total}"


def run(context: RunContext) -> dict:
    """Re-plan the request, check it is still the same analysis, and run it into the cache."""
    request = context.request

    def on_batch(progress: Progress) -> None:
        context.report(_message(progress), stage=progress.stage, batches_done=progress.done,
                       batches_total=progress.total, images_done=progress.items_done,
                       images_total=progress.items_total, elapsed_s=progress.elapsed_s, eta_s=progress.eta_s,
                       fraction=progress.fraction)
        pause_after_batch(context.should_stop)

    settings = settings_from(request.get("settings"))
    the_plan = plan(str(request.get("model_id")), str(request.get("dataset_id")), settings)
    if the_plan.key != context.key:
        raise JobError(
            f"the model or dataset changed since this analysis was submitted (key {the_plan.key} now, "
            f"{context.key} then); submit it again"
        )
    if context.should_stop():
        raise Cancelled("analysis cancelled")
    run_plan(the_plan, use_cache=True, cache_dir=str(context.cache_root), progress=on_batch,
             should_stop=context.should_stop)
    return {}


def has_result(key: str, cache_root: Path, record: dict) -> bool:
    """Done exactly when the cache holds the entry (however it got there: this job, the CLI, ...)."""
    return ResultCache(cache_root).has(key)
