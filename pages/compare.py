"""Compare: two to four cached analyses side by side at the current energies (MLU bars, per-layer overlay,
per-layer differences), and the one-click "supervised vs self-supervised" preset on the zoo."""

from __future__ import annotations

import streamlit as st

from analysis import defaults, jobs
from analysis.compare import compare_results
from analysis.errors import AnalysisError
from analysis.models import ModelId, catalogue
from ui import charts, frame, jobs_view, state, tables, text

SELECTION = "compare_keys"  # the chosen analyses (kept across page switches)
WIDGET = "compare_select"  # the multiselect's own key (Streamlit drops it when the page is left)
PENDING = "compare_pending"
MISSING = "compare_missing"
MAX_ANALYSES = 4
CATALOGUE_ONLY_SOURCES = ("zoo", "pkg")


@st.cache_data(ttl=60, show_spinner=False)
def _catalogue_ids() -> set[str]:
    return {entry.model_id for entry in catalogue()}


def _offered(model_id: str, known: set[str]) -> bool:
    """Whether ``model_id`` can be tried here: listed in the catalogue, or from a source that takes any name
    (``random:``, ``timm:``, ``file:``; those report their own error if they cannot load). ``zoo:`` and
    ``pkg:`` models exist only when the catalogue lists them (e.g. a zoo model not trained yet)."""
    if model_id in known:
        return True
    try:
        source = ModelId.parse(model_id).source
    except AnalysisError:
        return False
    return source not in CATALOGUE_ONLY_SOURCES


def _run_preset() -> None:
    """Submit (or find cached) every model of the comparison set that exists here; say which are missing."""
    wanted = [m.strip() for m in defaults.DEFAULT_COMPARISON if m.strip()]
    known = _catalogue_ids()
    present = [m for m in wanted if _offered(m, known)]
    st.session_state[MISSING] = [m for m in wanted if m not in present]
    keys = []
    for model_id in present[:MAX_ANALYSES]:
        try:
            keys.append(jobs.submit(model_id, defaults.DEFAULT_DATASET, state.default_settings()))
        except AnalysisError as exc:
            state.notify("error", f"{model_id}: {exc}")
    pending = [k for k in keys if not state.entry_exists(k)]
    if pending:
        st.session_state[PENDING] = keys
    else:
        st.session_state[SELECTION] = keys


@st.fragment(run_every=jobs_view.POLL_SECONDS)
def _preset_progress(keys: list[str]) -> None:
    """Progress of the preset's jobs; when none is running any more, select the finished ones."""
    active = False
    for key in keys:
        if state.entry_exists(key):
            st.caption(f"`{text.short_key(key)}` ready")
            continue
        status = jobs.status(key)
        if status.state in jobs_view.ACTIVE_STATES:
            active = True
            fraction = min(max(float(status.fraction or 0.0), 0.0), 1.0)
            st.progress(fraction, text=f"{status.model_id}: {fraction:.0%} · {jobs_view.progress_line(status)}")
        else:
            st.caption(f"{status.model_id or text.short_key(key)}: {status.state}. {status.message or ''}")
    if not active:
        st.session_state.pop(PENDING, None)
        st.session_state[SELECTION] = [k for k in keys if state.entry_exists(k)]
        st.rerun(scope="app")


frame.intro("Compare", text.COMPARE_INTRO)

entries = list(state.cache().entries())
labels = {e.key: tables.entry_label(e) for e in entries}

if SELECTION not in st.session_state:
    st.session_state[SELECTION] = [state.current_key()] if state.current_key() in labels else []
st.session_state[WIDGET] = [k for k in st.session_state[SELECTION] if k in labels][:MAX_ANALYSES]


def _chosen_changed() -> None:
    st.session_state[SELECTION] = list(st.session_state[WIDGET])


left, right = st.columns([3, 1])
with left:
    chosen = st.multiselect(
        "Analyses to compare (two to four, from the Library)", options=list(labels), key=WIDGET, on_change=_chosen_changed,
        format_func=lambda k: labels.get(k, k), max_selections=MAX_ANALYSES,
    )
with right:
    st.button(
        "Supervised vs self-supervised", on_click=_run_preset, type="primary", icon=":material/science:",
        key="compare_preset",
        help="The zoo's comparison set on the default dataset: " + ", ".join(defaults.DEFAULT_COMPARISON),
    )
if st.session_state.get(MISSING):
    st.warning("Not available on this machine (left out): " + ", ".join(f"`{m}`" for m in st.session_state[MISSING]))
if st.session_state.get(PENDING):
    with st.container(border=True):
        st.markdown(f"**Running the comparison set on {defaults.DEFAULT_DATASET}** (selected here when done)")
        _preset_progress(st.session_state[PENDING])

if len(chosen) < 2:
    st.info("Choose at least two analyses (or run the preset) to compare them.")
    st.stop()

e_in, e_out = state.energies()
results = [state.load_result(k) for k in chosen]
if any(r is None for r in results):
    st.error("One of the chosen analyses could not be read from the cache (deleted or damaged); choose again.")
    st.stop()
results = [r.at_energy(e_in, e_out) for r in results]
summary, per_layer = compare_results(results)
short = tables.display_labels(list(summary["analysis"]))
summary, per_layer = tables.relabel(summary, tables.depth_order(per_layer, results), short)

datasets = {r.meta.dataset_id for r in results}
st.caption(f"At e_in = {text.energy(e_in)}, e_out = {text.energy(e_out)}"
           + (f"; all on {next(iter(datasets))}." if len(datasets) == 1 else "."))
metric_cols = st.columns(len(results))
for col, label, row in zip(metric_cols, short, summary.itertuples()):
    col.metric(label, text.pct(row.mlu), delta=None if row.Index == 0 else f"{row.mlu_delta:+.1%}", delta_color="off",
               help=f"{row.full_label} · {text.count(row.images)} images · parameters kept {text.pct(row.kept)}")

top_left, top_right = st.columns([1, 2])
with top_left:
    st.plotly_chart(charts.mlu_bars(summary), key="compare_mlu")
with top_right:
    st.plotly_chart(charts.compare_lines(per_layer, short), key="compare_lines")
st.plotly_chart(charts.delta_bars(per_layer, short), key="compare_delta")
with st.expander("Tables", expanded=False):
    st.dataframe(summary, hide_index=True)
    st.dataframe(per_layer, hide_index=True)
