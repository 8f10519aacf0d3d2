"""The ``analysis`` job kind: one analysis (:func:`analysis.engine.run_plan`) into the result cache.

Request fields: ``model_id``, ``dataset_id``, ``settings`` (the :class:`AnalysisSettings` fields), ``cwd``.
The job key is the analysis' cache key, so the job is done exactly when the cache holds that entry.
"""

from __future__ import annotations

import os
import time
from dataclasses import fields as dataclass_fields, replace
from pathlib import Path

from ..cache import ResultCache
from ..calibration import contention, probe_done, timed_per_image
from ..engine import Cancelled, plan, run_plan
from ..environment import env_float
from ..progress import Progress
from ..settings import AnalysisSettings
from .job_kinds import JobError, RunContext

BATCH_DELAY_ENV = "ANALYSIS_JOB_BATCH_DELAY_S"
"""Seconds to pause after each batch (while still honouring cancel): for demonstrations."""
BUSY_EVERY_S = 30.0
"""How often a running analysis samples the machine's contention (:func:`analysis.calibration.contention`)."""
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
    if progress.stage == "statistics" and progress.total and progress.done >= progress.total:
        return "statistics complete; computing spectra and metrics"
    if progress.stage == "spectra":
        return f"spectra: layer {progress.done}/{progress.total}"
    return f"{progress.stage}: batch {progress.done}/{progress.total}"


class AnalysisClock:
    """The fraction done and the time left of one analysis job, from its own speed.

    ``started`` is when the job took its slot; ``post_s`` the predicted seconds after the data pass
    (:mod:`analysis.calibration`: eigen-decompositions, spectra, storing), 0 when there is no prediction.

    - data pass, batch ``i`` of ``n`` done ``t`` seconds after the first batch: ``left = (n - i) t / (i - 1) +
      post_s`` (the real speed of the batches after the first, which also discovers the layers and runs the
      self-check; not the prediction); after the first batch alone, ``(n - 1)`` times its time, an upper bound;
    - spectra, layer ``j`` of ``m`` done ``u`` seconds after the pass: ``left = max(post_s - u, u (m - j) / j)``;
    - ``fraction = elapsed / (elapsed + left)`` with ``elapsed`` since ``started``, never decreasing.

    :meth:`observed` gives what the run measured (for :func:`analysis.calibration.record_run`), and
    :attr:`image_s` the per-image time of its first batches after the first, timed as a probe
    (:func:`analysis.calibration.probe_pass`) times them before a run: their ratio teaches the estimates.
    """

    def __init__(self, started: float, post_s: float = 0.0) -> None:
        self.started, self.post_s = started, max(0.0, post_s)
        self.pass_start: float | None = None
        self.first_end: float | None = None  # the first batch's report
        self.first_images = 0
        self.first_done = 0  # batches done at that report (1, or more for a resumed pass)
        self.images = 0
        self.pass_end: float | None = None
        self.fraction = 0.0
        self.marks: list[tuple[int, float]] = []  # (images done, when) of the first statistics reports
        self.image_s = 0.0
        self.busy: list[float] = []  # the machine's contention, sampled during the run
        self.busy_at = float("-inf")

    def update(self, progress: Progress, now: float | None = None) -> tuple[float, float | None]:
        """Record a report; returns ``(fraction, seconds left)`` (None before the first batch)."""
        now = time.time() if now is None else now
        if now - self.busy_at >= BUSY_EVERY_S:  # a 0.2 s sample, twice a minute at most
            self.busy.append(contention())
            self.busy_at = now
        left = None
        if progress.stage == "statistics":
            if self.pass_start is None:
                self.pass_start = now - progress.elapsed_s
            if self.first_end is None and progress.done > 0:
                self.first_end, self.first_images, self.first_done = now, progress.items_done, progress.done
            self.images = progress.items_total or self.images
            if not probe_done(self.marks):
                self.marks.append((progress.items_done, now))
                self.image_s = timed_per_image(self.marks)
            if self.first_end is not None and progress.done > self.first_done and now > self.first_end:
                since_first = (now - self.first_end) / (progress.done - self.first_done)
                left = (progress.total - progress.done) * since_first + self.post_s
            elif progress.done > 0:
                left = (progress.total - progress.done) * progress.elapsed_s / progress.done + self.post_s
            if progress.total and progress.done >= progress.total:
                self.pass_end = now
        elif progress.stage == "spectra":
            self.pass_end = self.pass_end or now
            since = now - self.pass_end
            rate_left = since * (progress.total - progress.done) / progress.done if progress.done else self.post_s
            left = max(self.post_s - since, rate_left, 0.0)
        if left is not None:
            elapsed = now - self.started
            total = elapsed + left
            self.fraction = max(self.fraction, min(0.99, elapsed / total) if total > 0 else 0.0)
        return self.fraction, left

    def observed(self, end: float):
        """What this run measured (None when the data pass was not seen whole, e.g. a resumed run)."""
        from ..calibration import Observed

        if self.pass_start is None or self.pass_end is None or self.first_end is None:
            return None
        return Observed(start_s=self.pass_start - self.started, pass_s=self.pass_end - self.first_end,
                        post_s=end - self.pass_end, contention=sum(self.busy) / len(self.busy) if self.busy else 1.0,
                        pass_images=self.images - self.first_images, first_s=self.first_end - self.pass_start,
                        first_images=self.first_images)


def _prediction(the_plan, cache_root: Path):
    """The run's work (shapes only: the run itself measures its pass) and predicted time (None, None when they
    cannot be had: the job runs without them)."""
    from .. import calibration

    try:
        work = calibration.work_of(the_plan, probe=False)
        return work, calibration.predict(work, cache_root)
    except Exception:  # noqa: BLE001 - an estimate must never fail the job it describes
        return None, None


def run(context: RunContext) -> dict:
    """Re-plan the request, check it is still the same analysis, and run it into the cache; report the
    fraction done and the time left from the run's own speed, and teach the calibration its timings."""
    from .. import calibration
    from .job_queue import queue_root, started

    request = context.request
    settings = settings_from(request.get("settings"))
    the_plan = plan(str(request.get("model_id")), str(request.get("dataset_id")), settings)
    if the_plan.key != context.key:
        raise JobError(
            f"the model or dataset changed since this analysis was submitted (key {the_plan.key} now, "
            f"{context.key} then); submit it again"
        )
    if context.should_stop():
        raise Cancelled("analysis cancelled")
    work, predicted = _prediction(the_plan, context.cache_root)
    clock = AnalysisClock(started(queue_root(context.cache_root), context.key) or time.time(),
                          predicted.post_s if predicted else 0.0)
    resumed = {"batch": None}

    def on_batch(progress: Progress) -> None:
        if resumed["batch"] is None and progress.stage == "statistics":
            resumed["batch"] = progress.done - 1  # a resumed pass reports its first batch after the checkpoint
        fraction, left = clock.update(progress)
        context.report(_message(progress), stage=progress.stage, batches_done=progress.done,
                       batches_total=progress.total, images_done=progress.items_done,
                       images_total=progress.items_total, elapsed_s=time.time() - clock.started, eta_s=left,
                       fraction=fraction)
        pause_after_batch(context.should_stop)

    batch = settings.effective_batch_size()
    images = len(the_plan.dataset)
    context.report(f"model and data loaded; running the first batch of {min(batch, images)} images",
                   stage="statistics", batches_done=0, batches_total=-(-images // batch), images_done=0,
                   images_total=images, elapsed_s=time.time() - clock.started, eta_s=None, fraction=0.0)
    run_plan(the_plan, use_cache=True, cache_dir=str(context.cache_root), progress=on_batch,
             should_stop=context.should_stop)
    observed = clock.observed(time.time())
    if work is not None and observed is not None and resumed["batch"] == 0 and not os.environ.get(BATCH_DELAY_ENV) \
            and not os.environ.get(HOLD_ENV):
        try:
            calibration.record_run(context.cache_root, replace(work, image_s=clock.image_s), observed)
        except OSError:
            pass  # a read-only calibration folder: the run's result is what matters
    return {}


def has_result(key: str, cache_root: Path, record: dict) -> bool:
    """Done exactly when the cache holds the entry (however it got there: this job, the CLI, ...)."""
    return ResultCache(cache_root).has(key)
