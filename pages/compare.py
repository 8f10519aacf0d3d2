"""Compare: two to four cached analyses side by side at the current energies. Opens on the zoo's regimes
comparison (shipped with the repository, so it is there at once), each model's regime, training budget and
accuracy beside its MLU, a caveat on any model whose training fell short of its recipe's target, and
differences in percentage points. The comparison can be re-run on the full test set or quickly on 1,000
images, each model shown as soon as it finishes."""

from __future__ import annotations

import streamlit as st

from analysis import defaults, jobs
from analysis.catalogue import offered
from analysis.compare import (QUICK_IMAGES, compare_results, estimate_seconds, format_pp, long_table, planned_keys,
                              regimes_table)
from analysis.errors import AnalysisError
from analysis.models import catalogue
from analysis.settings import AnalysisSettings
from ui import charts, frame, jobs_view, state, tables, text

SELECTION = "compare_keys"  # the chosen analyses (kept across page switches)
WIDGET = "compare_select"  # the multiselect's own key (Streamlit drops it when the page is left)
QUEUE = "compare_queue"  # models of a running preset not submitted yet: [(model_id, samples), ...]
RUNNING = "compare_running"  # the preset job being followed now: (model_id, key)
MISSING = "compare_missing"
MAX_ANALYSES = 4


@st.cache_data(ttl=60, show_spinner=False)
def _catalogue_ids() -> set[str]:
    return {entry.model_id for entry in catalogue()}


@st.cache_data(ttl=600, show_spinner=False)
def _keys(models: tuple[str, ...], dataset_id: str, samples: int | None) -> list[tuple[str, str | None, str | None]]:
    return planned_keys(models, dataset_id, AnalysisSettings(samples=samples))


def _comparison_set() -> list[str]:
    wanted = [m.strip() for m in defaults.DEFAULT_COMPARISON if m.strip()]
    known = _catalogue_ids()
    st.session_state[MISSING] = [m for m in wanted if not offered(m, known)]
    return [m for m in wanted if offered(m, known)][:MAX_ANALYSES]


def _cached(samples: int | None) -> list[str | None]:
    """Cache key of each comparison model at ``samples`` images when its result is there, else None."""
    rows = _keys(tuple(_comparison_set()), defaults.DEFAULT_DATASET, samples)
    cache = state.cache()
    return [key if key and cache.has(key) else None for _, key, _ in rows]


def _start_preset(samples: int | None) -> None:
    """Button callback: select what is cached already; queue the rest, run one at a time so that each model
    appears as soon as it is done (parallel workers on two cores would all finish at the end)."""
    models = _comparison_set()
    cached = _cached(samples)
    st.session_state[SELECTION] = [k for k in cached if k]
    st.session_state[QUEUE] = [(m, samples) for m, k in zip(models, cached) if k is None]
    st.session_state.pop(RUNNING, None)
    _submit_next()


def _submit_next() -> None:
    """Submit the next queued model (skipping ones that fail to plan, with their reason)."""
    queue = st.session_state.get(QUEUE) or []
    while queue:
        model_id, samples = queue.pop(0)
        try:
            key = jobs.submit(model_id, defaults.DEFAULT_DATASET, AnalysisSettings(samples=samples))
        except AnalysisError as exc:
            state.notify("error", f"{model_id}: {exc}")
            continue
        if state.entry_exists(key):
            _add(key)
            continue
        st.session_state[RUNNING] = (model_id, key)
        break
    else:
        st.session_state.pop(RUNNING, None)
    st.session_state[QUEUE] = queue


def _add(key: str) -> None:
    chosen = st.session_state.setdefault(SELECTION, [])
    if key not in chosen:
        chosen.append(key)


@st.fragment(run_every=jobs_view.POLL_SECONDS)
def _preset_progress() -> None:
    """The preset's running job; when it ends, its result joins the comparison and the next one starts."""
    running = st.session_state.get(RUNNING)
    if not running:
        return
    model_id, key = running
    status = jobs.status(key)
    if status.state in jobs_view.ACTIVE_STATES:
        fraction = min(max(float(status.fraction or 0.0), 0.0), 1.0)
        waiting = len(st.session_state.get(QUEUE) or [])
        st.progress(fraction, text=f"{model_id}: {fraction:.0%} · {jobs_view.progress_line(status)}"
                                   + (f" · {waiting} more after it" if waiting else ""))
        return
    if state.entry_exists(key):
        _add(key)
    else:
        state.notify("error", f"{model_id}: {status.state}. {status.message or ''}".strip())
    _submit_next()
    st.rerun(scope="app")


def _estimate_line() -> str:
    """The quick option's estimated time, scaled from the measured time of the full-set results."""
    full = [state.load_result(k) for k in _cached(defaults.DEFAULT_SAMPLES)]
    n = len(_comparison_set())
    seconds = estimate_seconds([r for r in full if r is not None], QUICK_IMAGES) if all(full) and full else None
    if seconds is None:
        return (f"Quick: {QUICK_IMAGES:,} images per model, {n} models, one after the other; each appears when done "
                "(no measured time to estimate from yet).")
    return (f"Quick: {QUICK_IMAGES:,} images per model, {n} models one after the other, about "
            f"{text.duration(seconds)} in all (scaled from the measured time of the full-set runs; a busy machine "
            "takes longer). Each model appears as soon as it is done.")


frame.intro("Compare", text.COMPARE_INTRO, lead=text.COMPARE_LEAD)

entries = list(state.cache().entries())
labels = {e.key: tables.entry_label(e) for e in entries}

if SELECTION not in st.session_state:
    ready = [k for k in _cached(defaults.DEFAULT_SAMPLES) if k]
    if len(ready) >= 2:  # the regimes comparison is there (shipped or computed): open on what is ready
        st.session_state[SELECTION] = ready
        entries = list(state.cache().entries())
        labels = {e.key: tables.entry_label(e) for e in entries}
    else:
        st.session_state[SELECTION] = [state.current_key()] if state.current_key() in labels else []
st.session_state[WIDGET] = [k for k in st.session_state[SELECTION] if k in labels][:MAX_ANALYSES]


def _chosen_changed() -> None:
    st.session_state[SELECTION] = list(st.session_state[WIDGET])


def _controls() -> None:
    """What to compare: the analyses, the two regimes buttons (full test set, quick), their progress."""
    busy = bool(st.session_state.get(RUNNING))
    pick, full_button, quick_button = st.columns([4, 1.3, 1.3], vertical_alignment="bottom")
    with pick:
        st.multiselect(
            "Analyses to compare (two to four, from the Library)", options=list(labels), key=WIDGET,
            on_change=_chosen_changed, format_func=lambda k: labels.get(k, k), max_selections=MAX_ANALYSES,
        )
    with full_button:
        st.button("Regimes: full set", on_click=_start_preset, args=(defaults.DEFAULT_SAMPLES,), type="primary",
                  icon=":material/science:", key="compare_preset", disabled=busy, width="stretch",
                  help="The zoo's regimes (" + ", ".join(defaults.DEFAULT_COMPARISON) + f") on "
                       f"{defaults.DEFAULT_DATASET}; cached ones open at once.")
    with quick_button:
        st.button(f"Quick: {QUICK_IMAGES:,} images", on_click=_start_preset, args=(QUICK_IMAGES,),
                  icon=":material/bolt:", key="compare_quick", disabled=busy, width="stretch", help=_estimate_line())
    st.caption(_estimate_line())
    if st.session_state.get(MISSING):
        st.warning("Not available on this machine (left out): "
                   + ", ".join(f"`{m}`" for m in st.session_state[MISSING]))
    if busy:
        with st.container(border=True):
            _preset_progress()
    job = st.session_state.get(state.JOB)
    if state.is_key(job):  # e.g. the default analysis on a first launch whose shipped results are stale
        if job == st.session_state.get(state.DEFAULT_JOB):
            st.info(f"First launch: computing the embedded default analysis ({defaults.DEFAULT_MODEL} on "
                    f"{defaults.DEFAULT_DATASET}) once; it is cached for next time.")
        jobs_view.job_panel()


chosen = list(st.session_state[WIDGET])
if len(chosen) < 2:
    _controls()
    st.info("Choose at least two analyses, or press a Regimes button, to compare them.")
    st.stop()
if st.session_state.get(RUNNING):
    st.caption(f"Running {st.session_state[RUNNING][0]}: its progress is under the buttons below; it joins the "
               "comparison when done.")

e_in, e_out = state.energies()
results = [state.load_result(k) for k in chosen]
if any(r is None for r in results):
    st.error("One of the chosen analyses could not be read from the cache (deleted or damaged); choose again.")
    st.stop()
results = [r.at_energy(e_in, e_out) for r in results]
summary, per_layer = compare_results(results)
short = tables.display_labels(list(summary["analysis"]))
summary, per_layer = tables.relabel(summary, tables.depth_order(per_layer, results), short)
facts = regimes_table(results, short)

datasets = {r.meta.dataset_id for r in results}
images = {int(n) for n in summary["images"] if n is not None}
st.caption(f"At e_in = {text.energy(e_in)}, e_out = {text.energy(e_out)}"
           + (f"; all on {next(iter(datasets))}" if len(datasets) == 1 else "")
           + (f", {text.count(next(iter(images)))} images each." if len(images) == 1 else "."))

metric_cols = st.columns(len(results))
for col, row in zip(metric_cols, facts.itertuples()):
    with col:
        st.metric(row.analysis, text.pct(row.mlu),
                  delta=None if row.Index == 0 else format_pp(row.mlu_delta_pp / 100), delta_color="off",
                  help=f"{row.model_id} · {text.count(row.images)} images · parameters kept {text.pct(row.kept)}")
        st.markdown(f"**{row.regime}** · linear probe **{text.pct(row.linear_probe)}**"
                    + (f" · top-1 {text.pct(row.top1)}" if row.top1 is not None and row.top1 == row.top1 else ""))
        st.caption(f"training: {row.budget}")

captions = [f"{r.regime}<br>probe {text.pct(r.linear_probe)}" for r in facts.itertuples()]
height = frame.chart_height()
top_left, top_right = st.columns([1, 2])
with top_left:
    frame.plot(charts.mlu_bars(summary, captions, height=height), [r.meta for r in results], key="compare_mlu")
with top_right:
    frame.plot(charts.compare_lines(per_layer, short, height=height), [r.meta for r in results], key="compare_lines")
for row in facts.itertuples():  # right under the charts, before anything else is read
    if row.caveat:
        st.warning(row.caveat, icon=":material/warning:")
frame.plot(charts.delta_bars(per_layer, short), [r.meta for r in results], key="compare_delta")
st.subheader("Change the comparison")
_controls()
with st.expander("Tables", expanded=False):
    st.dataframe(facts.drop(columns=["falls_short"]), hide_index=True)
    st.dataframe(long_table(results, short), hide_index=True)
