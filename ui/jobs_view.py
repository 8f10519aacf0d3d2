"""Following jobs in the app: one way for every page (Analyze, Compare, Timeline, Compress, One image).

Jobs run in worker processes behind the machine's queue (:mod:`analysis.jobs`: one job at a time, first come,
first served, shared by every browser session); pages only follow them. What a session follows:

- one job under a page's own session key (``job_key`` for Analyze and the first launch, ``compress_job``,
  ``one_image_job``), drawn by :func:`job_card`;
- a batch of jobs, ``{label: key}`` under ``follow_<group>`` (Compare's regimes, Timeline's checkpoints),
  drawn by :func:`batch_panel`.

Both poll ``jobs.status`` once a second inside an ``st.fragment`` (the rest of the page does not rerun) and draw
each live job the same way: its place in the queue, or its progress with the time since the click and the
time left (from the run's own speed), and a Cancel button that turns into "cancelling ..." at once. When a job
ends, the page's ``finish(key, status)`` (or ``finish(label, key, status)`` for a batch) decides what opens
and what is said, and the whole page reruns. :func:`machine_jobs` lists the machine's queue and the jobs that
failed or were cancelled lately, so they stay listed, with their state, after a reload.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd
import streamlit as st

from analysis import jobs
from analysis.errors import AnalysisError

from . import state, text

POLL_SECONDS = 1.0
ACTIVE_STATES = ("queued", "running")
CANCELLING = "jobs_cancelling"
"""Session key: the jobs this session asked to stop (their cards say so before the worker has obeyed)."""
FOLLOW = "follow_{}"


# ------------------------------------------------------------------------------------------ words
def status_line(status) -> str:
    """One line for a live job: ``batch 3/20 · images 96/640 · 12 s since the click · about 1 min 05 s left``."""
    since = f"{text.duration(status.elapsed_s)} since it was asked for"
    if status.state == "queued":
        return f"{status.message or 'waiting for its turn on this machine'} · {since}"
    if status.stage == "statistics" and status.batches_total and status.batches_done:
        where = (f"batch {status.batches_done}/{status.batches_total} · images {text.count(status.images_done)}/"
                 f"{text.count(status.images_total)}")
    elif status.stage == "spectra" and status.batches_total:
        where = f"decompositions: layer {status.batches_done}/{status.batches_total}"
    else:
        where = status.message or "starting: loading the model and the data"
    left = "" if status.eta_s is None else f" · about {text.duration(status.eta_s)} left"
    return f"{where} · {since}{left}"


def cancelling(key: str) -> bool:
    return key in (st.session_state.get(CANCELLING) or ())


# ------------------------------------------------------------------------------------------ actions
def cancel_job(key: str) -> None:
    """Button callback: ask the job to stop; its card says "cancelling ..." from this moment on."""
    st.session_state.setdefault(CANCELLING, set()).add(key)
    try:
        jobs.cancel(key)
    except AnalysisError as exc:
        state.notify("error", str(exc))


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
        (st.session_state.get(CANCELLING) or set()).discard(key)
        finish(key, status)
        st.rerun(scope="app")
    return status


def _draw(label: str, status, button_key: str) -> None:
    """A live job: its label and state, a progress bar with :func:`status_line`, and Cancel / cancelling."""
    stopping = status.cancelling or cancelling(status.key)
    fraction = 0.0 if status.state == "queued" else min(max(float(status.fraction or 0.0), 0.0), 1.0)
    line = "cancelling ... (it stops at its next layer)" if stopping else status_line(status)
    words, button = st.columns([6, 1.3], vertical_alignment="bottom")
    with words:
        st.progress(fraction, text=f"**{label}** · {fraction:.0%} · {line}")
    with button:
        st.button("Cancelling ..." if stopping else "Cancel", key=button_key, on_click=cancel_job, args=(status.key,),
                  icon=":material/stop_circle:", disabled=stopping, width="stretch")


@st.fragment(run_every=POLL_SECONDS)
def job_card(key: str, session_key: str, finish: Callable[[str, object], None], label: str = "",
             note: str = "") -> None:
    """The followed job ``key`` (session key ``session_key``) until it ends; then ``finish(key, status)``."""
    status = live_status(key, session_key, finish)
    title = label or f"{status.model_id or 'job'} on {status.dataset_id or '?'}"
    _draw(title, status, f"cancel-{key}")
    if note:
        st.caption(note)


def _finish(key: str, status) -> None:
    """Leave the followed analysis: open its result, or keep a message saying why there is none."""
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


def job_panel() -> bool:
    """Draw the followed analysis (``job_key``) if any, in a bordered box. True when one is followed."""
    key = st.session_state.get(state.JOB)
    if not state.is_key(key):
        return False
    with st.container(border=True):
        job_card(key, state.JOB, _finish,
                 note="It runs in its own process: switch pages or reload, it goes on; it opens when done.")
    return True


# ------------------------------------------------------------------------------------------ batches
def follow(group: str, keys: dict[str, str]) -> None:
    """Follow the jobs ``{label: key}`` as the batch ``group`` (replacing what the group followed)."""
    st.session_state[FOLLOW.format(group)] = dict(keys)


def following(group: str) -> dict[str, str]:
    return dict(st.session_state.get(FOLLOW.format(group)) or {})


def forget(group: str) -> None:
    st.session_state.pop(FOLLOW.format(group), None)


def batch_active(group: str) -> bool:
    """Whether a job of the batch is still queued or running (reads each status once)."""
    for key in following(group).values():
        try:
            if jobs.status(key).state in ACTIVE_STATES:
                return True
        except AnalysisError:
            continue
    return False


@st.fragment(run_every=POLL_SECONDS)
def batch_panel(group: str, finish: Callable[[str, str, object], None]) -> None:
    """Every live job of the batch ``group``; each one that ends is handed to ``finish(label, key, status)``
    (once) and the page reruns; when none is left the batch is forgotten."""
    batch = following(group)
    ended = []
    for label, key in batch.items():
        try:
            status = jobs.status(key)
        except AnalysisError as exc:
            ended.append((label, key, None))
            state.notify("error", f"{label}: {exc}")
            continue
        if status.state in ACTIVE_STATES:
            _draw(label, status, f"cancel-{group}-{key}")
        else:
            ended.append((label, key, status))
    if not ended:
        return
    for label, key, status in ended:
        batch.pop(label, None)
        (st.session_state.get(CANCELLING) or set()).discard(key)
        if status is not None:
            finish(label, key, status)
    if batch:
        follow(group, batch)
    else:
        forget(group)
    st.rerun(scope="app")


# ------------------------------------------------------------------------------------------ the machine
def machine_jobs(title: str = "Jobs on this machine") -> None:
    """The machine's queue (running, then waiting in order) and the jobs that failed or were cancelled in the
    last week, with their state and reason: what happened stays listed after a reload."""
    st.subheader(title)
    try:
        queued = jobs.queue()
        ended = [j for kind in ("analysis", "compression") for j in jobs.list_jobs(kind=kind)
                 if j.state in ("failed", "cancelled")]
    except AnalysisError as exc:
        st.error(str(exc))
        return
    if not queued and not ended:
        st.caption("No job is running or waiting, and none failed or was cancelled lately.")
        return
    rows = []
    for place, job in enumerate(queued):
        what = "running" if job.state == "running" else f"waiting ({place} ahead)"
        rows.append({"state": what, "job": f"{job.model_id} on {job.dataset_id}", "kind": job.kind,
                     "since asked": text.duration(job.elapsed_s), "note": status_line(job), "key": job.key[:8]})
    for job in sorted(ended, key=lambda j: j.updated, reverse=True):
        rows.append({"state": job.state, "job": f"{job.model_id} on {job.dataset_id}", "kind": job.kind,
                     "since asked": text.duration(job.elapsed_s), "note": job.message, "key": job.key[:8]})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={"note": st.column_config.TextColumn("note", width="large")})
    for job in queued:
        if job.state in ACTIVE_STATES:
            left, right = st.columns([6, 1.3], vertical_alignment="center")
            left.caption(f"`{text.short_key(job.key)}` {job.model_id} on {job.dataset_id}: {job.state}")
            stopping = job.cancelling or cancelling(job.key)
            right.button("Cancelling ..." if stopping else "Cancel", key=f"machine-cancel-{job.key}",
                         on_click=cancel_job, args=(job.key,), disabled=stopping, width="stretch")
