"""Session state shared by every page, and the URL that mirrors it.

Keys in ``st.session_state``:

- ``current_key``: the cache key of the analysis every page shows;
- ``job_key``: the running job this session follows (progress panel);
- ``energy_in`` / ``energy_out``: the energies (plain keys; the sidebar sliders ``*_slider`` mirror them);
- ``selected_layer``: the layer the Spectra page shows (set by a click on the Layers chart or a selectbox);
- ``notices``: one-shot messages (a job that failed or was cancelled), shown once under the page title;
- ``default_*``: what happened to the embedded default analysis on this session's first run.

The URL carries ``?analysis=<key>&job=<key>`` so a page reload never loses the open result or the running
job: :func:`adopt_query_params` reads them on a fresh session, :func:`publish_query_params` writes them on
every run (page switches clear query parameters, so they are written back each time).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from analysis import defaults, jobs
from analysis.cache import KEY_PATTERN, ResultCache
from analysis.errors import AnalysisError
from analysis.result import ENERGY_GRID, Result
from analysis.settings import AnalysisSettings

CURRENT = "current_key"
JOB = "job_key"
E_IN = "energy_in"
E_OUT = "energy_out"
SELECTED = "selected_layer"
NOTICES = "notices"
DEFAULT_CHECKED = "default_checked"
DEFAULT_ERROR = "default_error"
DEFAULT_JOB = "default_job"
DEFAULT_FALLBACK = "default_fallback"
URL_ADOPTED = "url_adopted"

DEFAULT_ENERGY = defaults.DEFAULT_ENERGY


def init() -> None:
    """Defaults for the shared keys (before any widget that uses them is drawn)."""
    st.session_state.setdefault(E_IN, DEFAULT_ENERGY)
    st.session_state.setdefault(E_OUT, DEFAULT_ENERGY)
    for key in (E_IN, E_OUT):
        if st.session_state[key] not in ENERGY_GRID:  # e.g. a stale value: snap to the grid
            st.session_state[key] = min(ENERGY_GRID, key=lambda e: abs(e - float(st.session_state[key])))
    st.session_state.setdefault(NOTICES, [])


def energies() -> tuple[float, float]:
    return float(st.session_state.get(E_IN, DEFAULT_ENERGY)), float(st.session_state.get(E_OUT, DEFAULT_ENERGY))


def notify(level: str, message: str) -> None:
    """Queue a one-shot message (``level`` is error, warning, info or success)."""
    st.session_state.setdefault(NOTICES, []).append((level, message))


# ------------------------------------------------------------------------------------------ cache access
def cache() -> ResultCache:
    """The cache at ``$ANALYSIS_CACHE_DIR`` (or the repository's ``cache/``), read fresh on every call."""
    return ResultCache()


def is_key(value: object) -> bool:
    return isinstance(value, str) and KEY_PATTERN.fullmatch(value) is not None


def _manifest_path(key: str) -> Path:
    return cache().entry_dir(key) / "manifest.json"


def entry_exists(key: str | None) -> bool:
    """Cheap check that a finished entry is there (the full sha256 check happens on load)."""
    return is_key(key) and _manifest_path(key).is_file()


@st.cache_resource(max_entries=16, show_spinner=False)
def _load(root: str, key: str, stamp: float) -> Result | None:
    """One load per (cache folder, key, manifest time); the Result is shared read-only by all sessions."""
    return ResultCache(root).load(key)


def load_result(key: str | None) -> Result | None:
    """The stored result for ``key`` (at its own energies), or None when absent or damaged."""
    if not entry_exists(key):
        return None
    try:
        stamp = _manifest_path(key).stat().st_mtime
    except OSError:
        return None
    return _load(str(cache().root), key, stamp)


def current_key() -> str | None:
    key = st.session_state.get(CURRENT)
    return key if is_key(key) else None


def current_result() -> Result | None:
    """The open analysis at the current energies (re-thresholded from stored spectra), or None."""
    base = load_result(current_key())
    if base is None:
        return None
    return base.at_energy(*energies())


def open_analysis(key: str) -> None:
    """Make ``key`` the analysis every page shows."""
    st.session_state[CURRENT] = key


def close_analysis_if(key: str) -> None:
    if st.session_state.get(CURRENT) == key:
        st.session_state.pop(CURRENT, None)


def selected_layer(result: Result) -> str:
    """The selected layer if ``result`` has it, else the first layer counted in the MLU (else the first)."""
    names = list(result.layers["layer"])
    chosen = st.session_state.get(SELECTED)
    if chosen in names:
        return chosen
    counted = result.layers.loc[result.layers["in_mlu"], "layer"]
    chosen = counted.iloc[0] if len(counted) else names[0]
    st.session_state[SELECTED] = chosen
    return chosen


def select_layer_from_chart(chart_key: str) -> None:
    """``on_select`` callback of a chart whose points carry a layer name in ``customdata[0]``: the first
    selected point's layer becomes :data:`SELECTED` (other pages follow it)."""
    selection = (st.session_state.get(chart_key) or {}).get("selection") or {}
    for point in selection.get("points", []):
        data = point.get("customdata")
        name = data[0] if isinstance(data, (list, tuple)) and data else data
        if isinstance(name, str) and name:
            st.session_state[SELECTED] = name
            return


# ------------------------------------------------------------------------------------------ URL
def adopt_query_params() -> None:
    """On a fresh session (a reload, a shared link), take the analysis and job from the URL: once, so that a
    job finished or left in this session is not picked up again from a URL not yet rewritten."""
    if st.session_state.get(URL_ADOPTED):
        return
    st.session_state[URL_ADOPTED] = True
    params = st.query_params
    if CURRENT not in st.session_state and is_key(params.get("analysis")):
        st.session_state[CURRENT] = params.get("analysis")
    if JOB not in st.session_state and is_key(params.get("job")):
        st.session_state[JOB] = params.get("job")


def publish_query_params() -> None:
    """Write the open analysis and the followed job into the URL (only what changed)."""
    params = st.query_params
    for name, state_key in (("analysis", CURRENT), ("job", JOB)):
        value = st.session_state.get(state_key)
        if is_key(value):
            if params.get(name) != value:
                params[name] = value
        elif name in params:
            del params[name]


# ------------------------------------------------------------------------------------------ default analysis
def default_settings() -> AnalysisSettings:
    e_in, e_out = energies()
    return AnalysisSettings(samples=defaults.DEFAULT_SAMPLES, energy_in=e_in, energy_out=e_out)


def ensure_default() -> None:
    """Once per session, with nothing open and nothing running: open the embedded default analysis, or
    submit it (first launch, empty cache) so that its progress shows and it opens when done.

    If the default model cannot be used here (say the zoo is not trained yet), the reason is kept for the
    pages to show and the newest cached analysis is opened instead, when there is one.
    """
    if st.session_state.get(DEFAULT_CHECKED):
        return
    st.session_state[DEFAULT_CHECKED] = True
    if current_key() is not None or is_key(st.session_state.get(JOB)):
        return
    try:
        with st.spinner(f"Opening the default analysis: {defaults.DEFAULT_MODEL} on {defaults.DEFAULT_DATASET} ..."):
            key = jobs.submit(defaults.DEFAULT_MODEL, defaults.DEFAULT_DATASET, default_settings())
    except AnalysisError as exc:
        st.session_state[DEFAULT_ERROR] = str(exc)
        newest = next(iter(cache().entries()), None)
        if newest is not None:
            open_analysis(newest.key)
            st.session_state[DEFAULT_FALLBACK] = newest.key
        return
    if entry_exists(key):
        open_analysis(key)
    else:
        st.session_state[JOB] = key
        st.session_state[DEFAULT_JOB] = key
