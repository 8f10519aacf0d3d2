"""The ``compression`` job kind: :func:`analysis.compression.compress` in a worker process.

Request fields: ``kind: "compression"``, ``model_id``, ``dataset_id`` (for listings), ``compression`` (the
:class:`~analysis.compression.CompressionRequest` as :meth:`~CompressionRequest.as_dict`), ``cwd``. The job key
is :func:`~analysis.compression.pipeline.job_key` (the request plus the key of the analysis that gives the
ranks), so one request runs once. The summary is stored in ``<cache>/compressions/`` as every compression's
is (:func:`~analysis.compression.store_summary`), with ``job_key`` added; the factorized model is exported to
``<cache>/compressions/models/<key>.safetensors`` (``summary["export"]``). The final record names the summary
file (``result``), which is what :func:`has_result` checks.

Progress: the pipeline reports one :class:`~analysis.progress.Progress` per step of each stage;
:class:`JobClock` turns them into one fraction and an ETA for the whole run from the stages the request
implies (see its docstring).
"""

from __future__ import annotations

import time
from pathlib import Path

from ..compression.pipeline import CompressionRequest, compress, job_key, store_summary, summaries_dir
from ..engine import Cancelled
from ..progress import Progress
from .analysis_job import pause_after_batch
from .job_kinds import JobError, RunContext

FINETUNE_COST = 3.0
"""Image-forward equivalents of one fine-tuning image (forward, backward, and the teacher's forward)."""
UNKNOWN_SIZE = 10_000
"""Images assumed for a dataset whose size the request does not state, until the stage reports its own."""


def models_dir(cache_root: str | Path) -> Path:
    """Where compression jobs export their factorized models."""
    return summaries_dir(cache_root) / "models"


def expected_stages(request: CompressionRequest) -> list[tuple[str, float]]:
    """``(stage, estimated image-forwards)`` in the order :func:`compress` runs them."""
    analysed = float(request.samples or UNKNOWN_SIZE)
    evaluated = float(request.eval_samples or UNKNOWN_SIZE)
    stages = [("analyse", analysed), ("evaluate dense", evaluated), ("evaluate factorized", evaluated)]
    if request.finetune.steps:
        stages += [("fine-tune", request.finetune.steps * request.finetune.batch_size * FINETUNE_COST),
                   ("evaluate fine-tuned", evaluated)]
    return stages


class JobClock:
    """One fraction and ETA over consecutive stages that each report ``(done, total)``.

    Work is counted in image-forwards: a stage's report of ``done`` items is ``done * cost`` units (cost 1,
    or ``batch_size * FINETUNE_COST`` per fine-tuning step). A stage's sub-stages (``"evaluate dense: probe
    features"`` before ``"evaluate dense"``) add up. With ``U_past`` the units of the stages already over
    (0 for a stage that never reported, e.g. an analysis read from the cache), ``u`` the current stage's units
    done, ``T`` its expected units and ``U_next`` the estimates of the stages after it::

        fraction = (U_past + u) / (U_past + T + U_next),    ETA = elapsed * (1 - fraction) / fraction

    Estimates are replaced by what stages report (an evaluation's size; a probe's feature pass, which then
    counts in every later evaluation). The fraction never goes down.
    """

    def __init__(self, expected: list[tuple[str, float]], finetune_step_cost: float = 1.0,
                 started: float | None = None) -> None:
        self.names = [name for name, _ in expected]
        self.estimates = {name: units for name, units in expected}
        self.step_cost = finetune_step_cost
        self.started = time.monotonic() if started is None else started
        self.seen: dict[str, dict[str, tuple[float, float]]] = {}  # base stage -> sub-stage -> (done, total) units
        self.current: int = -1
        self.probe_units = 0.0
        self.fraction = 0.0

    def _cost(self, base: str) -> float:
        return self.step_cost if base == "fine-tune" else 1.0

    def _expected(self, index: int) -> float:
        name = self.names[index]
        estimate = self.estimates[name]
        if name.startswith("evaluate"):
            estimate += self.probe_units
        return estimate

    def update(self, stage: str, done: int, total: int, now: float | None = None) -> tuple[float, float | None]:
        """Record a report; returns ``(fraction, eta_s)`` (ETA None until some work is done)."""
        base, _, sub = stage.partition(":")
        base = base.strip()
        if base not in self.names:  # an unforeseen stage: count it where it is reported
            self.names.insert(max(self.current, 0) + 1 if self.current >= 0 else 0, base)
            self.estimates[base] = float(total)
        index = self.names.index(base)
        if index > self.current:
            self.current = index
        cost = self._cost(base)
        self.seen.setdefault(base, {})[sub.strip()] = (done * cost, total * cost)
        if sub.strip().startswith("probe"):
            self.probe_units = max(self.probe_units, total * cost)
        elif base.startswith("evaluate"):
            for name in self.names:  # the evaluation's own size, for the evaluations still to come
                if name.startswith("evaluate") and name not in self.seen:
                    self.estimates[name] = float(total)

        past = sum(sum(t for _, t in self.seen.get(self.names[i], {}).values()) for i in range(self.current))
        parts = self.seen.get(self.names[self.current], {})
        current_done = sum(d for d, _ in parts.values())
        current_total = max(sum(t for _, t in parts.values()), self._expected(self.current))
        upcoming = sum(self._expected(i) for i in range(self.current + 1, len(self.names)))
        whole = past + current_total + upcoming
        fraction = (past + current_done) / whole if whole > 0 else 0.0
        self.fraction = max(self.fraction, min(fraction, 1.0))
        elapsed = (time.monotonic() if now is None else now) - self.started
        eta = elapsed * (1.0 - self.fraction) / self.fraction if self.fraction > 0 else None
        return self.fraction, eta

    def elapsed(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.started


def request_from(record: dict) -> CompressionRequest:
    """The :class:`CompressionRequest` of a ``request.json`` (a :class:`JobError` when it is malformed)."""
    try:
        return CompressionRequest.from_dict(record.get("compression"))
    except (TypeError, ValueError) as exc:
        raise JobError(f"request.json has no valid compression request ({exc}); submit it again") from None


def run(context: RunContext) -> dict:
    """Compress, store the summary (with ``job_key``) and export the factorized model."""
    request = request_from(context.request)
    clock = JobClock(expected_stages(request), request.finetune.batch_size * FINETUNE_COST)

    def progress(p: Progress) -> None:
        fraction, eta = clock.update(p.stage, p.done, p.total)
        context.report(f"{p.stage}: {p.done:,} / {p.total:,}", stage=p.stage, batches_done=p.done,
                       batches_total=p.total, images_done=p.items_done, images_total=p.items_total,
                       elapsed_s=clock.elapsed(), eta_s=eta, fraction=fraction)
        pause_after_batch(context.should_stop)
        if context.should_stop():
            raise Cancelled("compression cancelled")

    if context.should_stop():
        raise Cancelled("compression cancelled")
    export = models_dir(context.cache_root) / f"{context.key}.safetensors"
    report = compress(request, cache_dir=str(context.cache_root), export=export, progress=progress,
                      should_stop=context.should_stop)
    now = job_key(request, report.summary["analysis_key"])
    if now != context.key:
        raise JobError(f"the model or dataset changed since this compression was submitted (key {now} now, "
                       f"{context.key} then); submit it again")
    report.summary["job_key"] = context.key
    path = store_summary(report.summary, context.cache_root)
    return {"result": path.name}


def has_result(key: str, cache_root: Path, record: dict) -> bool:
    """Done when the final record of this key names a stored summary that is still there."""
    name = record.get("result")
    if record.get("state") != "done" or record.get("key") != key or not isinstance(name, str) or \
            Path(name).name != name or not name.endswith(".json"):
        return False
    return (summaries_dir(cache_root) / name).is_file()
