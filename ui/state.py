"""Session state shared by every page, and the URL that mirrors it.

Keys in ``st.session_state``:

- ``current_key``: the cache key of the analysis every page shows;
- ``job_key``: the running job this session follows (progress panel);
- ``energy_in`` / ``energy_out``: the energies (plain keys; the sidebar sliders ``*_slider`` mirror them);
- ``selected_layer``: the layer the Spectra page shows (set by a click on the Layers chart or a selectbox);
- ``notices``: one-shot messages (a job that failed or was cancelled), shown once under the page title;
- ``compare_keys``: the analyses on the Compare page; ``presentation_mode``: the sidebar's toggle;
- ``default_*``: what happened to the embedded default analysis on this session's first run.

The URL carries the state a reload or a shared link must keep (:data:`URL_PARAMS`):
``?analysis=<key>&job=<key>&e_in=0.95&e_out=0.99&layer=blocks.3.mlp.fc1&compare=<key>,<key>&present=1``.
:func:`adopt_query_params` reads them on a fresh session and says which ones it could not use (an unknown
analysis, an energy not on the grid, a layer the analysis does not have); :func:`publish_query_params` writes
them on every run (page switches clear query parameters, so they are written back each time). Energies
equal to the default are left out of the URL.
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
COMPARE = "compare_keys"
PRESENTING = "presentation_mode"
"""Session key of the sidebar toggle: charts first and taller, bigger text, theory folded, for a projector."""
JOB_REQUEST = "job_request"
"""The request of a job adopted from a link (``?job=``), for the Analyze page to show its settings."""
LAYER_FROM_URL = "layer_from_url"

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


def _entry_version(key: str | None) -> tuple[str, str, float] | None:
    """``(cache folder, key, manifest time)`` of a finished entry, the shared loads' cache key; None if absent."""
    if not entry_exists(key):
        return None
    try:
        return str(cache().root), key, _manifest_path(key).stat().st_mtime
    except OSError:
        return None


def load_result(key: str | None) -> Result | None:
    """The stored result for ``key`` (at its own energies), or None when absent or damaged."""
    version = _entry_version(key)
    return None if version is None else _load(*version)


@st.cache_resource(max_entries=64, show_spinner=False)
def _at_energies(root: str, key: str, stamp: float, energy_in: float, energy_out: float) -> Result | None:
    """The shared result re-thresholded at ``(energy_in, energy_out)``, its layer table built once: every page
    run of every session at the same energies reads the same one (twenty sessions each rebuilt the table of
    every result they showed, on every run; issue 23). Read-only, like :func:`_load`'s."""
    base = _load(root, key, stamp)
    if base is None:
        return None
    result = base.at_energy(energy_in, energy_out)
    result.layers  # noqa: B018 - built here, once, instead of on each session's first use
    return result


def result_at(key: str | None, energy_in: float, energy_out: float) -> Result | None:
    """The stored result for ``key`` at the given energies (shared between sessions), or None when absent
    or damaged."""
    version = _entry_version(key)
    return None if version is None else _at_energies(*version, float(energy_in), float(energy_out))


def current_key() -> str | None:
    key = st.session_state.get(CURRENT)
    return key if is_key(key) else None


def current_result() -> Result | None:
    """The open analysis at the current energies (re-thresholded from stored spectra), or None."""
    return result_at(current_key(), *energies())


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
        st.session_state.pop(LAYER_FROM_URL, None)
        return chosen
    if st.session_state.pop(LAYER_FROM_URL, None) == chosen and chosen:
        st.warning(f"The link's layer `{chosen}` is not a layer of this analysis; showing its first counted "
                   "layer instead.", icon=":material/warning:")
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
URL_PARAMS = ("analysis", "job", "e_in", "e_out", "layer", "compare", "present")


def _energy_from(params, name: str, state_key: str) -> None:
    raw = params.get(name)
    if raw is None:
        return
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if value in ENERGY_GRID:
        st.session_state[state_key] = value
    else:
        notify("warning", f"The link's {name} = {raw} is not one of the energies offered "
                          f"({ENERGY_GRID[0]:g} to {ENERGY_GRID[-1]:g}); using {energies()[name == 'e_out']:g}.")


def adopt_query_params() -> None:
    """On a fresh session (a reload, a shared link), take the state from the URL (:data:`URL_PARAMS`): once,
    so that a job finished or left in this session is not picked up again from a URL not yet rewritten. What
    cannot be used is said in a notice, never dropped silently."""
    if st.session_state.get(URL_ADOPTED):
        return
    st.session_state[URL_ADOPTED] = True
    params = st.query_params
    analysis = params.get("analysis")
    if analysis is not None and CURRENT not in st.session_state:
        if _in_cache(analysis):
            st.session_state[CURRENT] = analysis
        else:
            notify("warning", f"The link's analysis `{analysis[:24]}` is not in this cache (deleted, mistyped, or "
                              "analysed on another machine); showing the default analysis instead.")
    job = params.get("job")
    if job is not None and JOB not in st.session_state:
        if is_key(job):
            st.session_state[JOB] = job
            request = _job_request(job)
            if request:
                st.session_state[JOB_REQUEST] = request
        else:
            notify("warning", f"The link's job `{job[:24]}` is not a job key; no job is followed.")
    _energy_from(params, "e_in", E_IN)
    _energy_from(params, "e_out", E_OUT)
    if params.get("layer"):
        st.session_state[SELECTED] = params.get("layer")
        st.session_state[LAYER_FROM_URL] = params.get("layer")
    if params.get("compare") is not None:
        wanted = [k for k in params.get("compare").split(",") if k]
        known = [k for k in wanted if _in_cache(k)]
        if len(known) != len(wanted):
            missing = ", ".join(f"`{k[:8]}`" for k in wanted if k not in known)
            notify("warning", f"The link's comparison names analyses that are not in this cache ({missing}); "
                              "they are left out.")
        st.session_state[COMPARE] = known
    if params.get("present") is not None:
        st.session_state[PRESENTING] = params.get("present") == "1"


def _in_cache(key: str) -> bool:
    """Whether the cache holds ``key`` (adopting a shipped demo entry, as loading would)."""
    try:
        return is_key(key) and cache().has(key)
    except AnalysisError:
        return False


def _job_request(key: str) -> dict | None:
    """The request of job ``key`` (its model, dataset and settings), None when it has none here."""
    from analysis.jobs.files import JobFiles, read_json

    try:
        return read_json(JobFiles.of(key, cache().root).request)
    except AnalysisError:
        return None


def publish_query_params() -> None:
    """Write the session's state into the URL (only what changed; see :data:`URL_PARAMS`)."""
    e_in, e_out = energies()
    compare = [k for k in st.session_state.get(COMPARE) or [] if is_key(k)]
    wanted = {
        "analysis": current_key(),
        "job": st.session_state.get(JOB) if is_key(st.session_state.get(JOB)) else None,
        "e_in": None if e_in == DEFAULT_ENERGY else f"{e_in:g}",
        "e_out": None if e_out == DEFAULT_ENERGY else f"{e_out:g}",
        "layer": st.session_state.get(SELECTED) or None,
        "compare": ",".join(compare) or None,
        "present": "1" if st.session_state.get(PRESENTING) else None,
    }
    params = st.query_params
    for name, value in wanted.items():
        if value is None:
            if name in params:
                del params[name]
        elif params.get(name) != value:
            params[name] = value


def unknown_page(known_paths: set[str]) -> str | None:
    """The path of the first request when it names no page of the app (``/nosuchpage``), else None."""
    from urllib.parse import urlparse

    try:
        path = urlparse(st.context.url or "").path.strip("/")
    except Exception:  # noqa: BLE001 - no request context (tests): nothing to check
        return None
    name = path.rsplit("/", 1)[-1]
    return name if name and name not in known_paths else None


# ------------------------------------------------------------------------------------------ default analysis
@st.cache_data(ttl=600, show_spinner=False)
def _default_key(model_id: str, dataset_id: str, samples: int | None) -> str:
    """The default analysis' content key, planned once per server for every session (as Compare's keys are):
    planning loads the model and hashes its weights, about 0.9 s of the server's one interpreter, and twenty
    students arriving at once each paid it on their first run (issue 23). The energies are not in the key.
    Raises :class:`~analysis.errors.AnalysisError` (not cached) when the default cannot be planned here."""
    from analysis.engine import plan

    return plan(model_id, dataset_id, AnalysisSettings(samples=samples)).key


def _shipped_default() -> str | None:
    """The default analysis' key when it is in the cache (planning only; nothing is submitted)."""
    try:
        key = _default_key(defaults.DEFAULT_MODEL, defaults.DEFAULT_DATASET, defaults.DEFAULT_SAMPLES)
    except AnalysisError:
        return None
    return key if cache().has(key) else None


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
    if current_key() is not None:
        return
    following = is_key(st.session_state.get(JOB))  # a job link: open the default beside it, submit nothing
    shipped = _shipped_default()
    if following or shipped is not None:  # cached (the embedded default): open it, nothing to plan or submit
        if shipped is not None:
            open_analysis(shipped)
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
