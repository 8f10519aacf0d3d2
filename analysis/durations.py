"""How durations are written for people: exact-ish (``3 min 05 s``, progress and elapsed time) or rough
(``about 12 min``, estimates and ranges, rounded to what a person plans by). No Streamlit; :mod:`ui.text`
re-exports these for the pages, :mod:`analysis.cost` words its refusals with them."""

from __future__ import annotations

import math


def duration(seconds: float | None) -> str:
    """``1 h 02 min``, ``3 min 05 s``, ``12 s``; ``n/a`` when unknown."""
    if seconds is None or (isinstance(seconds, float) and (math.isnan(seconds) or math.isinf(seconds))):
        return "n/a"
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def rough_duration(seconds: float) -> str:
    """``8 s``, ``40 s`` (5 s steps above 15 s), ``12 min``, ``2.5 h``: an estimate's precision."""
    if seconds < 60:
        return f"{max(1, int(round(seconds / 5) * 5 if seconds > 15 else round(seconds)))} s"
    if seconds < 3600:
        return f"{max(1, int(round(seconds / 60)))} min"
    return f"{seconds / 3600:.1f} h"


def duration_range(low: float, high: float) -> str:
    """``1-2 min``, ``40 s - 1 min``, ``about 5 min`` (both ends round alike): a range of :func:`rough_duration`."""
    a, b = rough_duration(low), rough_duration(high)
    if a == b:
        return f"about {a}"
    for unit in (" min", " s", " h"):
        if a.endswith(unit) and b.endswith(unit):
            return f"{a[: -len(unit)]}-{b}"
    return f"{a} - {b}"
