"""The live progress panel of the job this session follows (``st.session_state["job_key"]``).

The analysis runs in a detached worker process (``analysis.jobs``); this panel only polls
``jobs.status(key)`` once a second inside an ``st.fragment(run_every=...)``, so the rest of the page does not
rerun while it waits. When the job finishes, its result becomes the current analysis and the whole app
reruns; a failed or cancelled job leaves a one-line message.
"""

from __future__ import annotations

from typing import Callable

import streamlit as st

from analysis import jobs
from analysis.errors import AnalysisError

from . import state, text

POLL_SECONDS = 1.0
ACTIVE_STATES = ("queued", "running")


def cancel_job(key: str, what: str = "job", unit: str = "batch") -> None:
    """Button callback: ask the job's worker to stop (it stops after its current ``unit``)."""
    try:
        if jobs.cancel(key):
            state.notify("info", f"Asked {what} {text.short_key(key)} to stop; it stops after the current {unit}.")
    except AnalysisError as exc:
        state.notify("error", str(exc))


def _finish(key: str, status) -> None:
    """Leave the followed job: open its result, or keep a message saying why there is none."""
    st.session_state.pop(state.JOB, None)
    if status.state == "done" or (status.state == "absent" and state.entry_exists(key)):
        if state.entry_exists(key):
            state.open_analysis(key)
            state.notify("success", f"Analysis of {status.model_id or 'the model'} finished and is now open.")
        else:
            state.notify("error", f"Job {text.short_key(key)} reported done but its result is not in the cache.")
    elif status.state == "cancelled":
        state.notify("warning", f"Analysis {text.short_key(key)} was cancelled. {status.message or ''}".strip())
    elif status.state == "failed":
        state.notify("error", status.message or f"Analysis {text.short_key(key)} failed (no reason recorded).")
    else:
        state.notify("warning", f"No job {text.short_key(key)} is known here any more.")


def progress_line(status) -> str:
    """``batches 3/20 · images 96/640 · elapsed 12 s · ETA 1 min 05 s`` (or what the worker is doing first)."""
    if not status.batches_total:
        return f"starting: loading the model and the dataset · elapsed {text.duration(status.elapsed_s)}"
    parts = [
        f"batches {status.batches_done}/{status.batches_total or '?'}",
        f"images {text.count(status.images_done)}/{text.count(status.images_total) if status.images_total else '?'}",
        f"elapsed {text.duration(status.elapsed_s)}",
        f"ETA {text.duration(status.eta_s)}",
    ]
    return " · ".join(parts)


def live_status(key: str, session_key: str, finish: Callable[[str, object], None]):
    """The status of the job ``key`` this session follows under ``session_key``, while it is queued or running.

    When the status cannot be read, the job is dropped with the reason; when the job has ended,
    ``finish(key, status)`` says how. Either way the whole app reruns (this never returns then)."""
    try:
        status = jobs.status(key)
    except AnalysisError as exc:
        st.session_state.pop(session_key, None)
        state.notify("error", str(exc))
        st.rerun(scope="app")
    if status.state not in ACTIVE_STATES:
        finish(key, status)
        st.rerun(scope="app")
    return status


def progress_bar(status, line: str) -> None:
    """The job's fraction done as a bar, with ``line`` (what it is doing, elapsed, ETA) on it."""
    fraction = min(max(float(status.fraction or 0.0), 0.0), 1.0)
    st.progress(fraction, text=f"{fraction:.0%} · {line}")


@st.fragment(run_every=POLL_SECONDS)
def _poll(key: str) -> None:
    status = live_status(key, state.JOB, _finish)
    label = "Waiting for a worker ..." if status.state == "queued" else "Analysing ..."
    st.markdown(f"**{label}** {status.model_id or ''} on {status.dataset_id or ''}  \n`job {key}`")
    progress_bar(status, progress_line(status))
    if status.message:
        st.caption(status.message)
    st.button("Cancel analysis", key=f"cancel-{key}", on_click=cancel_job, args=(key,), icon=":material/stop_circle:")


def job_panel() -> bool:
    """Draw the followed job's progress (if any). True when a job is being followed."""
    key = st.session_state.get(state.JOB)
    if not state.is_key(key):
        return False
    with st.container(border=True):
        _poll(key)
    return True
