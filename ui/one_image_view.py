"""What the One image page needs besides charts: the eigenvectors of the open analysis (cached per key), the
background job that computes them when the analysis kept no moments, and the page's texts.

The eigenvectors come from the raw moments of the analysis with the same settings and ``keep_moments``
(:func:`analysis.compression.subspaces.moments_key`, from the stored key parts without loading the model: the
open analysis itself when it kept them). When they
are not stored, the page offers to compute them as an ordinary analysis job (:func:`analysis.jobs.submit`: a
worker process with progress, ETA and cancel that survives page switches and reloads); the session follows it
under ``one_image_job`` and polls it once a second in a fragment.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import streamlit as st

from analysis import jobs
from analysis.compression.subspaces import Measured, moments_key, moments_settings
from analysis.errors import AnalysisError
from analysis.one_image import OneImage, display_image, one_image, open_analysis, subspaces_ready
from analysis.result import Result

from . import jobs_view, state, text

JOB = "one_image_job"
"""Session key: the job computing the moments this session follows."""

LEAD = (
    "**What one image uses of each layer**: the bars show how much of this image's input energy falls outside "
    "the subspace the whole dataset uses at e_in, beside the image's own rank; the heatmap shows where on the "
    "image the projected layer W' would lose most."
)
INTRO = (
    "A dataset is a union of many images, each of which may use only a few directions: a layer's subspace can be "
    "wide while one image's inputs are narrow (its own rank), and an unusual image can put energy outside the "
    "subspace the dataset holds. For the image's input vectors $X$ (tokens, or unfolded patches of a "
    "convolution) and the dataset's top $k_{in}$ eigenvectors $V_k$:"
)
FORMULA = (
    r"f = \frac{\lVert X V_k \rVert_F^2}{\lVert X \rVert_F^2}, \qquad "
    r"\ell_t = \frac{\lVert (W - W') x_t \rVert^2}{\lVert W X \rVert_F^2}, \qquad \sum_t \ell_t = "
    r"\frac{\lVert (W - W') X \rVert_F^2}{\lVert W X \rVert_F^2}"
)
OUTRO = (
    "The own rank is the smallest $k$ whose top eigenvalues of $X^\\top X$ hold $e_{in}$ of its energy. The "
    "heatmap puts each vector's loss $\\ell_t$ where it lies: the patch grid of a ViT (class, distillation and "
    "register tokens listed apart) or a convolution's output grid. The losses sum to this image's "
    "preservation error, the same ratio the Layers table gives over the whole dataset."
)


MAX_MEASURED = 2
_measured: "OrderedDict[tuple[str, str, str], Measured]" = OrderedDict()
_measured_lock = threading.Lock()
"""Analyses with their subspaces, newest last (a process-wide cache shared read-only by every session; not
``st.cache_resource``, so that the decompositions can report progress to the page that waits for them)."""


def measured(result: Result) -> Measured:
    """The open analysis with its layers' subspaces (model, dataset selection, eigenvectors): decomposed once
    per analysis and process, with a progress bar of the layers while that runs."""
    cache_key = (str(state.cache().root), result.key, moments_key(result))
    with _measured_lock:
        if cache_key in _measured:
            _measured.move_to_end(cache_key)
            return _measured[cache_key]
    bar = st.progress(0.0, text="Loading the model and the stored moments ...")

    def report(done: int, total: int, elapsed: float) -> None:
        bar.progress(done / max(total, 1), text=(
            f"Decomposing the stored moments (once per analysis): layer {done} of {total} · elapsed "
            f"{text.duration(elapsed)} · ETA {text.duration(elapsed / done * (total - done) if done else None)}"))

    value = open_analysis(result.key, cache_dir=cache_key[0], compute_missing=False, eigen_progress=report)
    bar.empty()
    with _measured_lock:
        _measured[cache_key] = value
        while len(_measured) > MAX_MEASURED:
            _measured.popitem(last=False)
    return value


@st.cache_resource(max_entries=32, show_spinner=False)
def _report(root: str, key: str, index: int, energy_in: float, energy_out: float, _measured_analysis) -> OneImage:
    return one_image(_measured_analysis, index, energy_in, energy_out)


def report(result: Result, index: int, energy_in: float, energy_out: float) -> OneImage:
    return _report(str(state.cache().root), result.key, index, energy_in, energy_out, measured(result))


def picture(result: Result, report_: OneImage):
    """The image as the model sees it (de-normalised with the model's data config)."""
    return display_image(report_.image, result.meta.data_config)


def _submit(result: Result) -> None:
    """Button callback: start (or join) the analysis that keeps the moments, and follow it."""
    try:
        key = jobs.submit(result.meta.model_id, result.meta.dataset_id, moments_settings(result))
    except AnalysisError as exc:
        state.notify("error", str(exc))
        return
    st.session_state[JOB] = key


def _finish(key: str, status) -> None:
    """Stop following the subspaces job; say why when it did not finish (a finished one opens the view)."""
    st.session_state.pop(JOB, None)
    if status.state == "cancelled":
        state.notify("warning", "Computing the subspaces was cancelled.")
    elif status.state == "failed":
        state.notify("error", status.message or "Computing the subspaces failed (no reason recorded).")


def ensure_subspaces(result: Result) -> bool:
    """True when the eigenvectors can be loaded now; otherwise draw why not, the button that computes them,
    or the progress of the job that does, and return False."""
    try:
        ready, key = subspaces_ready(result, str(state.cache().root))
    except AnalysisError as exc:
        st.error(f"The eigenvectors of this analysis cannot be obtained here: {exc}")
        return False
    if ready:
        return True
    followed = st.session_state.get(JOB)
    if state.is_key(followed):
        with st.container(border=True):
            jobs_view.job_card(followed, JOB, _finish, label="Computing the subspaces",
                               note="It runs in its own process: switch pages or reload, it goes on; this page "
                                    "opens when it is done.")
        return False
    st.info(
        f"This view needs the layers' eigenvectors, which come from the raw second moments. The open analysis did "
        f"not keep them, so one more pass over its {text.count(result.meta.n_images)} images is needed "
        f"(stored under `{text.short_key(key)}` and reused afterwards)."
    )
    st.button("Compute the subspaces", key="one_image_compute", on_click=_submit, args=(result,),
              icon=":material/play_circle:", type="primary")
    return False
