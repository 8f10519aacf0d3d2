"""Settings read from environment variables, at the moment they are used (never at import).

A malformed value is a :class:`~analysis.errors.SettingsError` that names the variable and says what it
must be; an unset or empty variable gives the default.
"""

from __future__ import annotations

import math
import os

from .errors import SettingsError


def env_text(name: str, default: str) -> str:
    """The variable's value with surrounding spaces removed, or ``default`` when unset or empty."""
    raw = os.environ.get(name, "").strip()
    return raw or default


def env_int(name: str, default: int | None, *, minimum: int | None = None) -> int | None:
    """An integer (``>= minimum`` when given), or ``default`` when unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise SettingsError(f"environment variable {name} must be an integer{bound}, got {raw!r}")
    return value


def env_float(name: str, default: float | None, *, minimum: float | None = None, positive: bool = False) -> float | None:
    """A finite number (``> 0`` when ``positive``, ``>= minimum`` when given), or ``default`` when unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    bad = not math.isfinite(value) or (positive and value <= 0) or (minimum is not None and value < minimum)
    if bad:
        need = "a positive number" if positive else (f"a number >= {minimum:g}" if minimum is not None else "a number")
        raise SettingsError(f"environment variable {name} must be {need}, got {raw!r}")
    return value
