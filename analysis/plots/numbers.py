"""How the charts write numbers: percentages, split-half error bars in percentage points, dimension counts
(no Streamlit; :mod:`ui.text` re-exports these for the pages)."""

from __future__ import annotations

import math


def pct(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}%}"


def error_bar(error: float | None, digits: int = 1) -> str:
    """A split-half error bar of a fraction in percentage points: ``± 0.9 pp``; ``± <0.1 pp`` when it rounds
    to zero at the shown precision (the two halves agree that closely, which is not the same as no error);
    empty when unknown (an analysis without halves claims no error bar)."""
    if error is None or (isinstance(error, float) and math.isnan(error)):
        return ""
    points = 100 * float(error)
    if points < 0.5 * 10 ** -digits:
        return f"± <{10 ** -digits:.{digits}f} pp"
    return f"± {points:.{digits}f} pp"


def difference_pp(delta: float | None, digits: int = 1) -> str:
    """A difference of two fractions in percentage points, for a hover: ``+5.2 pp``, ``−0.4 pp`` (the minus sign
    of the axis' ticks); ``0 pp`` when there is none; ``+<0.1 pp`` when it rounds to zero at the shown precision,
    as :func:`error_bar` writes ``± <0.1 pp`` (a format with a sign wrote ``+0.0 pp`` for both)."""
    if delta is None or (isinstance(delta, float) and math.isnan(delta)):
        return "n/a"
    points = 100 * float(delta)
    if points == 0:
        return "0 pp"
    sign = "+" if points > 0 else "−"
    if abs(points) < 0.5 * 10 ** -digits:
        return f"{sign}<{10 ** -digits:.{digits}f} pp"
    return f"{sign}{abs(points):.{digits}f} pp"


def plus_minus(value: float, error: float, digits: int = 1) -> str:
    """``38.8% ± 0.9 pp`` (:func:`error_bar`); the value alone when the error is unknown."""
    bar = error_bar(error, digits)
    return f"{pct(value, digits)} {bar}" if bar else pct(value, digits)


def dims_error(error: float | None) -> str:
    """A split-half error bar of a count of dimensions (``k``, ``r``): ``± 1.5``; ``± <0.5`` when the halves
    agree (counts differ by whole dimensions, so half a difference below 0.5 means none)."""
    if error is None or (isinstance(error, float) and math.isnan(error)):
        return ""
    return "± <0.5" if error < 0.25 else f"± {error:.1f}"
