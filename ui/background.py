"""Slow values a page shows but must not wait for, computed once per server in a background thread.

A landing page that computes a multi-second value inline (the Compare page's time estimate of its presets:
four models planned and probed on a few images) makes its first visitor wait, and a classroom of visitors who
leave or navigate before it finishes start it again. Here the value is started once per ``(name, args)`` for
the whole server (``st.cache_resource`` holds its future for ``ttl`` seconds), on one background thread so that
two such values never compete for the cores with each other, and a page asks :func:`peek` for it: the value
when done, :data:`PENDING` while it is being computed. :func:`wait` is for a button's callback, where one user
asked for the value and may wait for it."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import streamlit as st

PENDING = object()
"""What :func:`peek` returns while the value is being computed."""

_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ui-background")
_log = logging.getLogger(__name__)


def _guarded(fn: Callable[..., Any], args: tuple) -> Any:
    """``fn(*args)``; None (logged) when it raises: a failed estimate shows as unknown, never as a crash."""
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 (any failure of a best-effort value)
        _log.exception("background value %s%r failed", getattr(fn, "__name__", fn), args)
        return None


@st.cache_resource(max_entries=64, ttl=3600, show_spinner=False)
def _started(name: str, args: tuple, _fn: Callable[..., Any]) -> Future:
    return _POOL.submit(_guarded, _fn, args)


def peek(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` computed once for the server (``name`` and ``args`` identify it): its value, or
    :data:`PENDING` while it runs (the first call starts it)."""
    future = _started(name, args, fn)
    return future.result() if future.done() else PENDING


def wait(name: str, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
    """The same value as :func:`peek`, waiting for it (at most ``timeout`` seconds; then :data:`PENDING`)."""
    future = _started(name, args, fn)
    try:
        return future.result(timeout=timeout)
    except TimeoutError:
        return PENDING


def idle(timeout: float | None = None) -> bool:
    """Wait until every value started so far is computed (tests: no background work spills into the next
    test); False when ``timeout`` passed first."""
    try:
        _POOL.submit(lambda: None).result(timeout=timeout)
    except TimeoutError:
        return False
    return True
