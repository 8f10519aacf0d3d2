"""Compare: two to four cached analyses side by side at the current energies. Opens on the zoo's regimes
comparison (shipped with the repository, so it is there at once): the MLU bars and the per-layer overlay first,
then each model's regime, training budget and accuracy (only where that accuracy was measured on the analysed
dataset), a caveat on any model whose training fell short of its recipe's target, a warning when the analyses
were not made alike, and differences in percentage points.

The comparison can be re-run on the full test set or quickly on 1,000 images: the models are submitted to the
machine's queue at once (:mod:`analysis.jobs`; they run one after the other) and followed as one batch
(:func:`ui.jobs_view.batch_panel`). The comparison on screen stays until two of the new analyses are done;
from then on it shows the new set, growing as each model finishes. The set on screen is in the URL
(``?compare=KEY,KEY``)."""

from __future__ import annotations

import streamlit as st

import ui  # noqa: F401  first: the whole app's modules in one thread at a time (ui/__init__.py)
from analysis import defaults, jobs
from analysis.calibration import LONG_RUN_S
from analysis.catalogue import offered
from analysis.compare import (QUICK_IMAGES, compare_results, format_pp, long_table, mixture_warning, planned_keys,
                              regimes_table)
from analysis.errors import AnalysisError
from analysis.models import catalogue
from analysis.settings import AnalysisSettings
from ui import background, charts, frame, jobs_view, state, tables, text

SELECTION = state.COMPARE  # the chosen analyses (kept across page switches, and in the URL)
WIDGET = "compare_select"  # the multiselect's own key (Streamlit drops it when the page is left)
GROUP = "compare"  # the batch of preset jobs followed (jobs_view.batch_panel)
PENDING = "compare_pending"  # the preset set being computed: [key, ...] in comparison order
CONFIRM = "compare_confirm"  # a long preset waiting for the user's yes: its sample count
TABLES_OPEN = "compare_tables_open"  # the folded tables' open state (frame.folded)
MAX_ANALYSES = 4
# Height of the MLU bars in both modes (the overlay beside them grows taller in presentation mode): with the
# projector's larger text and the page's header above them, their letters and regimes stay above a 720 px fold.
# (A comment, not a docstring: Streamlit's magic would print a bare string on the page.)
MLU_BARS_HEIGHT = 380


@st.cache_data(ttl=60, show_spinner=False)
def _catalogue_ids() -> set[str]:
    return {entry.model_id for entry in catalogue()}


@st.cache_data(ttl=600, show_spinner=False)
def _keys(models: tuple[str, ...], dataset_id: str, samples: int | None) -> list[tuple[str, str | None, str | None]]:
    return planned_keys(models, dataset_id, AnalysisSettings(samples=samples))


def _comparison_set() -> tuple[list[str], list[str]]:
    """``(models offered here, models left out)`` of the default comparison."""
    wanted = [m.strip() for m in defaults.DEFAULT_COMPARISON if m.strip()]
    known = _catalogue_ids()
    return [m for m in wanted if offered(m, known)][:MAX_ANALYSES], [m for m in wanted if not offered(m, known)]


def _planned(samples: int | None) -> list[tuple[str, str | None, str | None]]:
    return _keys(tuple(_comparison_set()[0]), defaults.DEFAULT_DATASET, samples)


def _cached(samples: int | None) -> list[str | None]:
    """Cache key of each comparison model at ``samples`` images when its result is there, else None."""
    cache = state.cache()
    return [key if key and cache.has(key) else None for _, key, _ in _planned(samples)]


def _seconds(models: tuple[str, ...], dataset_id: str, samples: int | None, root: str):
    """The calibrated time of analysing ``models`` one after the other, ``(low, high, seconds)``, or None
    (seconds of planning and probing: computed in the background, :mod:`ui.background`)."""
    from analysis.calibration import estimate_run_time

    try:
        estimates = [estimate_run_time(m, dataset_id, AnalysisSettings(samples=samples), root) for m in models]
    except AnalysisError:
        return None
    return (sum(e.low for e in estimates), sum(e.high for e in estimates), sum(e.seconds for e in estimates))


def _to_run(samples: int | None) -> list[str]:
    return [m for (m, key, _), cached in zip(_planned(samples), _cached(samples)) if key and not cached]


def _estimate_words(samples: int | None, wait: bool = False) -> tuple[str, float | None]:
    """What pressing the preset will cost, in words, and its central estimate in seconds (None while it is
    being made; ``wait`` waits for it, as a button's callback does)."""
    missing = _to_run(samples)
    if not missing:
        return "cached: opens at once", 0.0
    ask = background.wait if wait else background.peek
    times = ask("compare-preset-time", _seconds, tuple(missing), defaults.DEFAULT_DATASET, samples,
                str(state.cache().root))
    if times is background.PENDING:
        # no polling to show it: twenty classroom sessions re-running a fragment every few seconds kept the
        # server's one interpreter so busy that the estimate itself, and every page, stalled
        return f"{len(missing)} to analyse; the time here is being estimated (shown when the page next updates)", None
    if times is None:
        return f"{len(missing)} to analyse", 0.0
    low, high, seconds = times
    return f"{len(missing)} to analyse, {text.duration_range(low, high)} one after the other", seconds


def _press(samples: int | None) -> None:
    """Button callback of a preset: ask first when it would take long, else start it."""
    _words, seconds = _estimate_words(samples, wait=True)
    if seconds > LONG_RUN_S:  # waited for without a timeout: never None here
        st.session_state[CONFIRM] = samples
        return
    _start(samples)


def _start(samples: int | None) -> None:
    """Open what is cached at once; submit the rest to the machine's queue and follow them as one batch. The
    comparison on screen stays until two of the new set are done (see :func:`_adopt_pending`)."""
    st.session_state.pop(CONFIRM, None)
    planned, cached = _planned(samples), _cached(samples)
    for model_id, _key, error in planned:
        if error:
            state.notify("error", f"{model_id}: {error}")
    submitted = {}
    for (model_id, key, _), ready in zip(planned, cached):
        if key is None or ready:
            continue
        try:
            submitted[model_id] = jobs.submit(model_id, defaults.DEFAULT_DATASET, AnalysisSettings(samples=samples))
        except AnalysisError as exc:
            state.notify("error", f"{model_id}: {exc}")
    keys = [key for _, key, _ in planned if key]
    if submitted:
        jobs_view.follow(GROUP, submitted)
        st.session_state[PENDING] = keys
    else:
        st.session_state[SELECTION] = keys[:MAX_ANALYSES]
        st.session_state.pop(PENDING, None)


def _adopt_pending() -> None:
    """Show the preset set being computed once two of it are done (then as it grows); forget it when no job of
    it is left."""
    pending = st.session_state.get(PENDING)
    if not pending:
        return
    done = [key for key in pending if state.entry_exists(key)]
    if len(done) >= 2:
        st.session_state[SELECTION] = done[:MAX_ANALYSES]
    if not jobs_view.following(GROUP):
        st.session_state.pop(PENDING, None)


def _finished(label: str, key: str, status) -> None:
    """A preset job ended: a done one joins the comparison (by :func:`_adopt_pending`); others say why."""
    if status.state == "done" or state.entry_exists(key):
        state.notify("success", f"{label} finished.")
    elif status.state == "cancelled":
        state.notify("warning", f"{label}: cancelled.")
    else:
        state.notify("error", f"{label}: {status.state}. {status.message or ''}".strip())


frame.intro("Compare", text.COMPARE_INTRO, lead=text.COMPARE_LEAD)

entries = list(state.cache().entries())
labels = {e.key: tables.entry_label(e) for e in entries}
_adopt_pending()
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
    """What to compare: the analyses, the two regimes buttons (full test set, quick), the batch's progress."""
    st.multiselect(
        "Analyses to compare (two to four, from the Library)", options=list(labels), key=WIDGET,
        on_change=_chosen_changed, format_func=lambda k: labels.get(k, k), max_selections=MAX_ANALYSES,
    )
    busy = bool(jobs_view.following(GROUP))
    models, missing = _comparison_set()
    full, quick = st.columns(2)
    with full:
        words, _ = _estimate_words(defaults.DEFAULT_SAMPLES)
        st.button("Regimes on the full test set", on_click=_press, args=(defaults.DEFAULT_SAMPLES,), type="primary",
                  icon=":material/science:", key="compare_preset", disabled=busy, width="stretch",
                  help="The zoo's regimes (" + ", ".join(models) + f") on {defaults.DEFAULT_DATASET}.")
        st.caption(f"{len(models)} models, every image: {words}.")
    with quick:
        words, _ = _estimate_words(QUICK_IMAGES)
        st.button(f"Regimes quickly, on {QUICK_IMAGES:,} images", on_click=_press, args=(QUICK_IMAGES,),
                  icon=":material/bolt:", key="compare_quick", disabled=busy, width="stretch",
                  help="Each model on the same seeded 1,000 images; estimated from this machine's measured speed.")
        st.caption(f"{len(models)} models, {QUICK_IMAGES:,} images each: {words}.")
    if CONFIRM in st.session_state:
        samples = st.session_state[CONFIRM]
        words, _ = _estimate_words(samples)
        with st.container(border=True):
            st.warning(f"This comparison takes long here: {words}. The machine runs one job at a time, so others "
                       "wait behind it. Start it?", icon=":material/schedule:")
            yes, no = st.columns(2)
            yes.button("Yes, start it", on_click=_start, args=(samples,), type="primary", key="compare_confirm_yes",
                       width="stretch")
            no.button("Not now", on_click=lambda: st.session_state.pop(CONFIRM, None), key="compare_confirm_no",
                      width="stretch")
    if missing:
        st.warning("Not available on this machine (left out): " + ", ".join(f"`{m}`" for m in missing))
    if busy:
        with st.container(border=True):
            st.caption("The comparison on screen stays until two of the new analyses are done; then it shows them "
                       "as each one finishes.")
            jobs_view.batch_panel(GROUP, _finished)
    if state.is_key(st.session_state.get(state.JOB)):  # e.g. the default analysis on a first launch
        if st.session_state.get(state.JOB) == st.session_state.get(state.DEFAULT_JOB):
            st.info(f"First launch: computing the embedded default analysis ({defaults.DEFAULT_MODEL} on "
                    f"{defaults.DEFAULT_DATASET}) once; it is cached for next time.")
        jobs_view.job_panel()


chosen = list(st.session_state[WIDGET])
if len(chosen) < 2:
    _controls()
    st.info("Choose at least two analyses, or press a Regimes button, to compare them.")
    st.stop()

e_in, e_out = state.energies()
results = [state.result_at(k, e_in, e_out) for k in chosen]
if any(r is None for r in results):
    st.error("One of the chosen analyses could not be read from the cache (deleted or damaged); choose again.")
    st.stop()
summary, per_layer = compare_results(results)
short = tables.display_labels(list(summary["analysis"]))
summary, per_layer = tables.relabel(summary, tables.depth_order(per_layer, results), short)
facts = regimes_table(results, short)

datasets = {r.meta.dataset_id for r in results}
images = {int(r.meta.n_images) for r in results}
st.caption(f"At e_in = {text.energy(e_in)}, e_out = {text.energy(e_out)}"
           + (f"; all on {next(iter(datasets))}" if len(datasets) == 1 else "")
           + (f", {text.count(next(iter(images)))} images each." if len(images) == 1 else "."))
mixed = mixture_warning(results)
if mixed:
    st.warning(mixed, icon=":material/warning:")

letters = [label.split(":", 1)[0] for label in short]
names = [f"{letter} · {regime}" for letter, regime in zip(letters, facts["regime_short"])]
height = frame.chart_height(MLU_BARS_HEIGHT)
same = (tuple(chosen), e_in, e_out, height)  # what the three charts depend on: shared by every session asking
# on a projector the MLU bars, the page's key chart, get half the width (at two fifths, with the larger text, the
# regimes under the bars ran together) and do not grow taller (their letters fell below a 720 px fold)
bars, lines = st.columns([1, 1] if frame.presenting() else [2, 3])
with bars:
    frame.plot(lambda: charts.mlu_bars(summary, list(facts["regime_short"]), height=MLU_BARS_HEIGHT),
               [r.meta for r in results], key="compare_mlu", same_as=("mlu", *same))
with lines:
    frame.plot(lambda: charts.compare_lines(per_layer, short, height=height, names=names), [r.meta for r in results],
               key="compare_lines", same_as=("lines", *same))

metric_cols = st.columns(len(results))
for col, letter, row in zip(metric_cols, letters, facts.itertuples()):
    with col:
        # the letter and the regime, as in the charts' legends (a model id is too long for a quarter of the page
        # at projector size: it wrapped onto two lines); the id is in the caption below and in the help
        label = f"{letter}: {row.regime_short}" if row.family != "unknown" else row.analysis
        st.metric(label, text.pct(row.mlu),
                  delta=None if row.Index == 0 else format_pp(row.mlu_delta_pp / 100), delta_color="off",
                  help=f"{row.model_id} · {row.dataset} · {text.count(row.images)} images · MLU "
                       f"{text.plus_minus(row.mlu, summary['mlu_err'].iloc[row.Index])} · parameters kept "
                       f"{text.pct(row.kept)}")
        if row.accuracy_here and row.linear_probe is not None and row.linear_probe == row.linear_probe:
            accuracy = f"linear probe **{text.pct(row.linear_probe)}**" + (
                f" · top-1 {text.pct(row.top1)}" if row.top1 is not None and row.top1 == row.top1 else "")
        elif row.accuracy_here:
            accuracy = "no accuracy recorded"
        else:
            accuracy = "accuracy: not measured here"
        st.markdown(f"**{row.regime}** · {accuracy}")
        st.caption(f"`{row.model_id}` · training: {row.budget}")
for row in facts.itertuples():
    if row.caveat:
        st.warning(row.caveat, icon=":material/warning:")
frame.plot(lambda: charts.delta_bars(per_layer, short), [r.meta for r in results], key="compare_delta",
           same_as=("delta", *same))
st.subheader("Change the comparison")
_controls()
folded_tables = frame.folded("Tables", TABLES_OPEN)
if folded_tables.open:  # built only when opened (frame.folded)
    with folded_tables:
        st.dataframe(tables.displayed(facts.drop(columns=["falls_short"])), hide_index=True)
        st.dataframe(tables.displayed(long_table(results, short)), hide_index=True)
