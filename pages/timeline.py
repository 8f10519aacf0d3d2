"""Timeline: utilization across training for the zoo's regimes or a folder of the user's checkpoints.

Every checkpoint is analysed as a background job (cached like any analysis; the jobs wait their turn in the
machine's queue and are followed as one batch by :func:`ui.jobs_view.batch_panel`; a series estimated above
ten minutes asks first) on the default dataset and sample count; cached series (the zoo's, shipped with the repository) open at once. The page says in one computed sentence what the MLU curves show, then draws MLU and linear-probe accuracy against step, mean utilization per layer group against step, a depth x step heatmap per series, a scrubber over
one series' checkpoints with the Layers bar chart, and MLU against linear-probe accuracy. The logic is in
:mod:`analysis.timeline` and the charts in :mod:`ui.timeline_charts`.
"""

from __future__ import annotations

import streamlit as st

import ui  # noqa: F401  first: the whole app's modules in one thread at a time (ui/__init__.py)
from analysis import defaults, jobs
from analysis.calibration import LONG_RUN_S
from analysis.engine import plan
from analysis.errors import AnalysisError
from analysis.settings import AnalysisSettings
from analysis.models import catalogue
from analysis.regimes import training_facts
from analysis.timeline import FOLDER_PREFIX, from_results, resolve
from ui import charts, frame, jobs_view, state, tables, text
from ui import timeline_charts as tc

SERIES = "timeline_series"
OWN = "timeline_own"
RUN = "timeline_run"  # {"points", "keys": {model_id: key}, "errors": {model_id: message}, "dataset"}
SCRUB_SERIES = "timeline_scrub_series"
SCRUB = "timeline_scrub"
GROUP = "timeline"  # the checkpoints' jobs, followed as one batch (ui.jobs_view.batch_panel)
CONFIRM = "timeline_confirm"  # a long series waiting for the user's yes: its (low, high, seconds)


@st.cache_data(ttl=600, show_spinner=False)
def _planned_keys(specs: tuple[str, ...], dataset_id: str, samples: int | None) -> dict[str, str] | None:
    """``{checkpoint model id: cache key}`` of every checkpoint of the series (None when one cannot be planned)."""
    try:
        points = resolve(list(specs))
        models = dict.fromkeys(p.model_id for p in points if not p.problem)
        return {m: plan(m, dataset_id, AnalysisSettings(samples=samples)).key for m in models}
    except AnalysisError:
        return None


@st.cache_data(ttl=300, show_spinner="Estimating the time from this machine's measured speed ...")
def _series_seconds(specs: tuple[str, ...], dataset_id: str, samples: int | None):
    """The calibrated time of the series' checkpoints not cached yet, ``(low, high, seconds)``, or None."""
    from analysis.calibration import estimate_run_time

    keys = _planned_keys(specs, dataset_id, samples)
    if keys is None:
        return None
    try:
        settings = AnalysisSettings(samples=samples)
        found = [estimate_run_time(m, dataset_id, settings, str(state.cache().root)) for m, key in keys.items()
                 if not state.cache().has(key)]
    except AnalysisError:
        return None
    return sum(e.low for e in found), sum(e.high for e in found), sum(e.seconds for e in found)


def _open_if_cached(specs: list[str]) -> None:
    """Show the series at once when every checkpoint's analysis is in the cache (the zoo's default series are
    shipped with the repository): no job, no button press."""
    keys = _planned_keys(tuple(specs), dataset, settings.samples)
    if not keys or not all(key and state.cache().has(key) for key in keys.values()):
        return
    st.session_state[RUN] = {"points": resolve(specs), "keys": keys, "errors": {}, "dataset": dataset}


def _series_label(spec: str) -> str:
    """A series' short name for the folded form's label: a zoo regime's (``MAE``), a folder's own name."""
    if spec.startswith("zoo:"):
        facts = training_facts(spec)
        return facts.short_label if facts.regime != "unknown" else spec
    if spec.startswith(FOLDER_PREFIX):
        folder = spec[len(FOLDER_PREFIX):].split("?", 1)[0].rstrip("/").rpartition("/")[2]
        return f"{folder} (yours)" if folder else spec
    return spec


def _chosen() -> list[str]:
    """The series the form holds (zoo ones, then the user's own), read before the form is drawn."""
    own = (st.session_state.get(OWN) or "").strip()
    return list(st.session_state.get(SERIES) or []) + ([own] if own else [])


frame.intro("Timeline", tc.INTRO, lead=text.TIMELINE_LEAD)

zoo = [e.model_id for e in catalogue() if e.model_id.startswith("zoo:")]
offered = list(dict.fromkeys([m for m in defaults.DEFAULT_COMPARISON if m in zoo] + zoo))
st.session_state.setdefault(SERIES, offered)
settings = state.default_settings()
dataset = defaults.DEFAULT_DATASET
busy = bool(jobs_view.following(GROUP))
if RUN not in st.session_state and _chosen() and not busy:
    _open_if_cached(_chosen())
if frame.presenting():
    # for a projector the curves come first: the form folds into one line that still names the series and
    # the dataset (open while there is nothing to draw). Its key keeps it open while a series is added or
    # removed (the label changes); a new key when the curves appear folds it for them.
    shown = RUN in st.session_state
    chosen_names = ", ".join(_series_label(s) for s in _chosen()) or "none chosen"
    form = st.expander(f"Series: {chosen_names} · on {dataset}", expanded=not shown, icon=":material/tune:",
                       key=f"timeline_form_{'shown' if shown else 'empty'}")
else:
    form = st.container()
with form:
    chosen = st.multiselect("Zoo series", offered, key=SERIES,
                            help="Each zoo model's checkpoints as listed in its manifest.")
    own = st.text_input("Your own series (optional)", key=OWN,
                        placeholder=f"{FOLDER_PREFIX}/path/to/run?arch=resnet18",
                        help="A folder of checkpoints ordered by the step in their names or metadata.")
    st.caption(f"Dataset {dataset}, {text.count(settings.samples) if settings.samples else 'all'} images per "
               "checkpoint (the app's defaults).")


def _analyse(specs: list[str]) -> None:
    """Button callback: resolve the series, submit every checkpoint not cached to the machine's queue (they run
    one after the other) and follow them as one batch; cached ones open at once."""
    st.session_state.pop(CONFIRM, None)
    try:
        points = resolve(specs)
    except AnalysisError as exc:
        state.notify("error", str(exc))
        return
    keys, errors = {}, {}
    for model_id in dict.fromkeys(p.model_id for p in points if not p.problem):
        try:
            keys[model_id] = jobs.submit(model_id, dataset, settings)
        except AnalysisError as exc:
            errors[model_id] = str(exc)
    st.session_state[RUN] = {"points": points, "keys": keys, "errors": errors, "dataset": dataset}
    jobs_view.follow(GROUP, {m: k for m, k in keys.items() if not state.entry_exists(k)})


def _finished(label: str, key: str, status) -> None:
    if status.state not in ("done",) and not state.entry_exists(key):
        state.notify("warning", f"{label}: {status.state}. {status.message or ''}".strip())


specs = list(chosen) + ([own.strip()] if own.strip() else [])
with form:
    pressed = st.button("Analyse the series", type="primary", disabled=busy or not specs, key="timeline_analyse")
if pressed:
    seconds = _series_seconds(tuple(specs), dataset, settings.samples)
    if seconds is not None and seconds[2] > LONG_RUN_S:
        st.session_state[CONFIRM] = seconds
    else:
        _analyse(specs)
        st.rerun()
if CONFIRM in st.session_state:
    low, high, _ = st.session_state[CONFIRM]
    with st.container(border=True):
        st.warning(f"Analysing these checkpoints takes {text.duration_range(low, high)} here, one after the other; "
                   "the machine runs one job at a time, so others wait behind them. Start?",
                   icon=":material/schedule:")
        yes, no = st.columns(2)
        yes.button("Yes, start", type="primary", key="timeline_confirm_yes", on_click=_analyse, args=(specs,),
                   width="stretch")
        no.button("Not now", key="timeline_confirm_no", on_click=lambda: st.session_state.pop(CONFIRM, None),
                  width="stretch")

run = st.session_state.get(RUN)
if not run:
    st.info("Choose the series and press **Analyse the series**; analyses already in the cache open at once.")
    st.stop()

if busy:
    with st.container(border=True):
        jobs_view.batch_panel(GROUP, _finished)

errors = dict(run["errors"])
pending = {}
for model_id, key in run["keys"].items():
    if state.entry_exists(key):
        continue
    status = jobs.status(key)
    if status.state in jobs_view.ACTIVE_STATES:
        pending[model_id] = key
    else:
        errors[model_id] = f"{status.state}: {status.message or 'no result'}"
results = {m: state.load_result(k) for m, k in run["keys"].items() if m not in pending}
e_in, e_out = state.energies()
tl = from_results(run["points"], {m: r for m, r in results.items() if r is not None}, errors, run["dataset"],
                  e_in, e_out)
table = tl.table
failed = table[table["status"] != "ok"]
for _, row in failed.iterrows():
    if row["model_id"] not in pending:
        st.warning(f"{row['series']}, {row['checkpoint']}: {row['status']}")
if table["status"].eq("ok").sum() == 0:
    st.stop()

metas = [r.meta for r in tl.results if r is not None]
facts = {s: training_facts(s) for s in tl.series if s.startswith("zoo:")}
names = {s: f.short_label if f.regime != "unknown" else s for s, f in facts.items()}
reading = f"**What the curves show.** {tl.reading(names)}"
if not frame.presenting():
    st.markdown(reading)
frame.plot(tc.story_chart(table, names), metas, key="timeline_mlu_step")
if frame.presenting():  # the curves first on a projector, their reading right under them
    st.markdown(reading)
if facts:
    st.caption("Training budgets: " + "; ".join(f"{names[s]}: {f.budget}" for s, f in facts.items()) + ".")
frame.plot(tc.groups_chart(tl.groups(), names), metas, key="timeline_groups")
layers = tl.layers()
series_done = [s for s in tl.series if (layers["series"] == s).any()]
for tab, series in zip(st.tabs(series_done), series_done):
    with tab:
        frame.plot(tc.depth_step_heatmap(layers, series), metas, key=f"timeline_heatmap_{series}")

st.subheader("One checkpoint, layer by layer")
scrub_series = st.selectbox("Series", series_done, key=SCRUB_SERIES)
points = [(p, r) for p, r in zip(tl.points, tl.results) if p.series == scrub_series and r is not None]
labels = [f"step {p.step:,}" if p.step is not None else p.label for p, _ in points]  # as the heatmap writes steps
if st.session_state.get(SCRUB) not in labels:
    st.session_state[SCRUB] = labels[-1]
label = st.select_slider("Checkpoint", labels, key=SCRUB) if len(labels) > 1 else labels[0]
point, result = points[labels.index(label)]
cols = st.columns(3)
cols[0].metric("MLU", text.pct(result.mlu))
cols[1].metric("Linear probe", text.pct(point.accuracy.get("linear_probe_top1")))
cols[2].metric("Epoch", "n/a" if point.epoch is None else f"{point.epoch:g}")
frame.plot(charts.utilization_bars(result.layers, result.mlu, state.selected_layer(result), mlu_err=result.mlu_err),
           result.meta, key="timeline_bars")

frame.plot(tc.mlu_vs_probe(table, names), metas, key="timeline_scatter")
with st.expander("Timeline table", expanded=False):
    st.dataframe(tables.displayed(table), hide_index=True)
