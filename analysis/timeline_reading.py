"""One sentence that says what a timeline's MLU curves show, computed from the numbers (never written by hand).

For each series (its ``ok`` checkpoints with a known step, in step order) with MLU values ``m_0 .. m_n``:

- the net change ``Δ = m_n - m_0``; below :data:`FLAT` (in MLU units) the series "stays near" its mean;
- with only two points, no half-way step (the change happened somewhere between them, which is said);
- otherwise the *half-way step*: the first step at which ``|m_i - m_0| >= |Δ| / 2``, i.e. when half of the net change had
  happened (with its epoch where known), which says whether the change is early or late in training;
- a peak (or dip) that overshoots both ends by at least :data:`OVERSHOOT` is named with its step, because a
  rise-then-fall is the most interesting thing a curve can show and the net change would hide it.

Series that start from the same MLU (within :data:`SAME_START`, as the zoo's regimes do from one seed-0
initialisation) share one opening clause. The sentence reports only what the table holds; it draws no causal
conclusion.
"""

from __future__ import annotations

import math
from typing import Mapping

import pandas as pd

FLAT = 0.005
"""A net change below half a percentage point of MLU is no change."""

OVERSHOOT = 0.01
"""A peak or dip must exceed both ends by one percentage point to be named."""

SAME_START = 0.0005
"""Series whose first MLUs differ by less than this share an opening clause."""


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _when(step: int, epoch: float | None) -> str:
    text = f"step {step:,}"
    if epoch is not None and not math.isnan(epoch) and epoch > 0:
        text += f", epoch {epoch:g}"
    return text


def _points(rows: pd.DataFrame) -> list[tuple[int, float | None, float]]:
    ok = rows[(rows["status"] == "ok") & rows["step"].notna() & rows["mlu"].notna()].sort_values("step")
    epochs = ok["epoch"] if "epoch" in ok else pd.Series([math.nan] * len(ok), index=ok.index)
    return [(int(s), None if pd.isna(e) else float(e), float(m)) for s, e, m in zip(ok["step"], epochs, ok["mlu"])]


def series_clause(name: str, points: list[tuple[int, float | None, float]], with_start: bool) -> str:
    """What one series' MLU does, e.g. ``supervised rises from 15.1 % to 21.3 % (half of it by step 234,
    epoch 1)``; ``with_start`` False leaves the start out (it was said once for all)."""
    if not points:
        return f"{name} has no analysed checkpoint"
    start, end = points[0][2], points[-1][2]
    if len(points) == 1:
        return f"{name} has one checkpoint ({_pct(start)})"
    values = [m for _, _, m in points]
    top, bottom = max(values), min(values)
    i_top, i_bottom = values.index(top), values.index(bottom)
    frm = f" from {_pct(start)}" if with_start else ""
    if top - max(start, end) >= OVERSHOOT and 0 < i_top < len(points) - 1:
        step, epoch, _ = points[i_top]
        return f"{name} rises{frm} to a peak of {_pct(top)} ({_when(step, epoch)}), then falls to {_pct(end)}"
    if min(start, end) - bottom >= OVERSHOOT and 0 < i_bottom < len(points) - 1:
        step, epoch, _ = points[i_bottom]
        return f"{name} falls{frm} to {_pct(bottom)} ({_when(step, epoch)}), then rises to {_pct(end)}"
    change = end - start
    if abs(change) < FLAT:
        return f"{name} stays near {_pct(sum(values) / len(values))}"
    verb = "rises" if change > 0 else "falls"
    if len(points) == 2:  # no point in between: when the change happened is not known
        step, epoch, _ = points[1]
        return f"{name} {verb}{frm} to {_pct(end)} (no checkpoint between step {points[0][0]:,} and {_when(step, epoch)})"
    half = next(i for i, m in enumerate(values) if abs(m - start) >= abs(change) / 2)
    if half == len(points) - 1:  # "half of it by the last step" would hide that it came late
        step, epoch, _ = points[-2]
        return f"{name} {verb}{frm} to {_pct(end)} (most of it after {_when(step, epoch)})"
    step, epoch, _ = points[half]
    return f"{name} {verb}{frm} to {_pct(end)} (half of it by {_when(step, epoch)})"


def reading(table: pd.DataFrame, names: Mapping[str, str] | None = None) -> str:
    """The sentence for a :attr:`analysis.timeline.Timeline.table` (module docstring); ``names`` maps a
    series to the name the sentence uses (default: the series string)."""
    names = dict(names or {})
    series = list(dict.fromkeys(table["series"])) if len(table) else []
    if not series:
        return "No checkpoint has been analysed yet."
    points = {s: _points(table[table["series"] == s]) for s in series}
    starts = [p[0][2] for p in points.values() if p]
    shared = len(series) > 1 and len(starts) == len(series) and max(starts) - min(starts) < SAME_START
    clauses = [series_clause(names.get(s, s), points[s], with_start=not shared) for s in series]
    body = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    if shared:
        return f"From the same initialisation (MLU {_pct(starts[0])}), {body}."
    return f"Over training, {body}."


__all__ = ["FLAT", "OVERSHOOT", "SAME_START", "reading", "series_clause"]
