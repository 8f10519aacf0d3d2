"""Reading stored compression summaries honestly: top-1 with its uncertainty, runs grouped by evaluation set.

**Top-1 with a 95 % interval.** A top-1 of ``p̂ = s / n`` on ``n`` images is a binomial proportion. Its Wilson
score interval at ``z = 1.96`` is::

    centre = (p̂ + z² / 2n) / (1 + z² / n)
    half   = z / (1 + z² / n) * sqrt(p̂ (1 - p̂) / n + z² / 4n²)
    [low, high] = [centre - half, centre + half]          (always inside [0, 1], unlike p̂ ± z SE)

:class:`Top1` shows it as ``87.5 % ± 16 (n = 16)``: the ± is half the interval's width in percentage points,
with two significant digits, and the top-1 carries as many decimals as the ± (at least one). So 14/16 is
never printed as a bare "87.50 %".

**Evaluation sets.** Two top-1 values are comparable only when measured on the same images: the same
evaluation dataset, the same number of images and the same seed (which picks a subset), scored the same way
(classifier head or linear probe). :func:`evaluation_set` reads that from a summary;
:func:`accuracy_points` groups runs by it, so a chart connects points only within one set.

"Parameters kept" is :data:`analysis.metrics.KEPT_DEFINITION` (the summaries' ``kept_fraction``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import pandas as pd

Z95 = 1.959963984540054
"""The two-sided 95 % quantile of the standard normal distribution."""


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval ``(low, high)`` of ``successes`` out of ``n`` (see the module docstring)."""
    if n <= 0:
        raise ValueError(f"a binomial interval needs n > 0 trials, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _decimals(half_width_points: float) -> int:
    """Decimals that show ``half_width_points`` with two significant digits (none for 10 points or more)."""
    if half_width_points <= 0 or not math.isfinite(half_width_points):
        return 1
    return max(0, 1 - math.floor(math.log10(half_width_points)))


@dataclass(frozen=True)
class Top1:
    """A top-1 accuracy measured on ``n`` images, with its Wilson 95 % interval ``[low, high]``."""

    accuracy: float
    n: int
    low: float
    high: float

    @classmethod
    def of(cls, accuracy: float, n: int) -> "Top1":
        """From a fraction correct on ``n`` images (the count of correct images is ``round(accuracy n)``)."""
        if n is None or n <= 0 or accuracy is None or not math.isfinite(accuracy):
            raise ValueError(f"a top-1 needs an accuracy and n > 0 images, got {accuracy!r} on {n!r}")
        low, high = wilson_interval(int(round(accuracy * n)), int(n))
        return cls(accuracy=float(accuracy), n=int(n), low=low, high=high)

    @property
    def half_width(self) -> float:
        """Half the interval's width (a fraction, like the accuracy)."""
        return (self.high - self.low) / 2

    def text(self) -> str:
        """``87.5 % ± 16 (n = 16)``; ``90.22 % ± 0.58 (n = 10,000)``."""
        points = 100 * self.half_width
        decimals = _decimals(points)
        return (f"{100 * self.accuracy:.{max(1, decimals)}f} % ± {points:.{decimals}f} "
                f"(n = {self.n:,})")


def top1_text(accuracy: float | None, n: int | None) -> str:
    """:meth:`Top1.text`, or ``n/a`` when there is no accuracy (e.g. no fine-tuning) or no count."""
    try:
        return Top1.of(accuracy, n).text()
    except (TypeError, ValueError):
        return "n/a"


@dataclass(frozen=True, order=True)
class EvaluationSet:
    """The images a top-1 was measured on, and how (see the module docstring)."""

    dataset: str
    images: int
    seed: int
    method: str

    def label(self, with_details: bool = False) -> str:
        """``fashion-mnist:test, n = 2,000`` (plus seed and method when ``with_details``)."""
        text = f"{self.dataset}, n = {self.images:,}"
        return f"{text}, seed {self.seed}, {self.method}" if with_details else text


def evaluation_set(summary: dict) -> EvaluationSet:
    """The evaluation set of one stored summary."""
    return EvaluationSet(dataset=str(summary.get("eval_dataset") or ""), images=int(summary.get("eval_samples") or 0),
                         seed=int(summary.get("seed") or 0), method=str(summary.get("evaluation_method") or ""))


def set_labels(sets: Iterable[EvaluationSet]) -> dict[EvaluationSet, str]:
    """A short label per set; seed and method are added only where dataset and size alone would collide."""
    sets = sorted(set(sets))
    short = [s.label() for s in sets]
    return {s: s.label(with_details=short.count(s.label()) > 1) for s in sets}


POINT_COLUMNS = ["evaluation_set", "stage", "kept_fraction", "top1", "low", "high", "n", "text", "energy_in",
                 "energy_out", "finetune_steps", "created"]


def accuracy_points(summaries: list[dict]) -> pd.DataFrame:
    """One row per plotted top-1: each run's factorized and (where run) fine-tuned accuracy, and one dense
    row per evaluation set (its newest run's dense top-1, at ``kept_fraction`` 1).

    Columns :data:`POINT_COLUMNS`; ``evaluation_set`` is the set's label (:func:`set_labels`), ``stage`` is
    ``dense``, ``factorized`` or ``fine-tuned``; rows are ordered by set, stage, then ``kept_fraction``.
    Summaries without an evaluation size or a kept fraction are skipped (they cannot be placed honestly).
    """
    usable = [s for s in summaries if (s.get("eval_samples") or 0) > 0 and s.get("kept_fraction") is not None]
    labels = set_labels(evaluation_set(s) for s in usable)
    rows, dense_done = [], set()
    for summary in sorted(usable, key=lambda s: str(s.get("created", "")), reverse=True):
        group = evaluation_set(summary)
        common = {"evaluation_set": labels[group], "n": group.images, "energy_in": summary.get("energy_in"),
                  "energy_out": summary.get("energy_out"),
                  "finetune_steps": int((summary.get("finetune") or {}).get("steps") or 0),
                  "created": str(summary.get("created", ""))}
        stages = [("factorized", summary.get("acc_projected"), summary["kept_fraction"]),
                  ("fine-tuned", summary.get("acc_finetuned"), summary["kept_fraction"])]
        if group not in dense_done:
            dense_done.add(group)
            stages.append(("dense", summary.get("acc_dense"), 1.0))
        for stage, accuracy, kept in stages:
            if accuracy is None:
                continue
            top1 = Top1.of(accuracy, group.images)
            rows.append({**common, "stage": stage, "kept_fraction": float(kept), "top1": top1.accuracy,
                         "low": top1.low, "high": top1.high, "text": top1.text()})
    table = pd.DataFrame(rows, columns=POINT_COLUMNS)
    order = {"dense": 0, "factorized": 1, "fine-tuned": 2}
    return table.sort_values(["evaluation_set", "stage", "kept_fraction"], key=lambda c: c.map(order)
                             if c.name == "stage" else c, kind="stable").reset_index(drop=True)
