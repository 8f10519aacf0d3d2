"""The "Factorize, evaluate, fine-tune" section of the Compress page.

A form submits :func:`analysis.jobs.submit_compression` for the open analysis' model at the current energies
(or a parameter budget): the compression runs in a worker process like an analysis, behind the machine's
queue, so it survives page switches and reloads. Only its button submits (Enter in a field does not), and the
same request twice is one job. The session follows its job (``compress_job``); a session that follows none (a
reload, another tab) adopts the newest live compression of this model. :func:`ui.jobs_view.job_card` polls
the job once a second (queue position, progress, time left, cancel); when it is done its summary is already
stored in ``<cache>/compressions/``.

Every stored compression of this model is drawn by evaluation set (points connected only within one set),
with top-1 as ``87.5 % ± 16 (n = 16)`` (Wilson 95 % interval, :mod:`analysis.compression.summaries`), and
the newest exported factorized model can be downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from analysis import jobs
from analysis.compression import CompressionRequest, FinetuneSettings, stored_summaries
from analysis.compression.summaries import accuracy_points, evaluation_set, set_labels, top1_text
from analysis.compression.pipeline import PAIRED_EVAL
from analysis.errors import AnalysisError
from analysis.metrics import KEPT_DEFINITION
from analysis.result import Result

from . import charts, frame, jobs_view, state, tables, text

COMPRESS_JOB = "compress_job"
"""Session key: the compression job this session follows."""
TRAIN_SPLIT_FOR = {test: train for train, test in PAIRED_EVAL.items()}
"""An analysis of a test split compresses from the matching train split (the test split stays held out)."""


SUMMARY_FIRST = ["parameters kept", "top-1 dense", "top-1 factorized", "top-1 fine-tuned", "change factorized",
                 "change fine-tuned", "evaluated on"]
"""The stored compressions' table: what each run kept and what it cost first (on screen at 1280 px)."""


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.2f} pt"


def summary_rows(summaries: list[dict]) -> list[dict]:
    """Rows of the table of stored compressions: top-1 with its interval, drops in percentage points."""
    labels = set_labels(evaluation_set(s) for s in summaries)
    rows = []
    for s in summaries:
        n = s.get("eval_samples")
        rows.append({
            "created": s.get("created"),
            "evaluated on": labels[evaluation_set(s)],
            "method": s.get("evaluation_method"),
            "ranks from": f"{s.get('dataset')} ({text.count(s.get('analysis_images'))} images)"
                          if s.get("analysis_images") else s.get("dataset"),
            "e_in": s.get("energy_in"), "e_out": s.get("energy_out"), "keep target": s.get("keep_target"),
            "parameters kept": s.get("kept_fraction"),
            "fine-tune steps": (s.get("finetune") or {}).get("steps", 0),
            "top-1 dense": top1_text(s.get("acc_dense"), n),
            "top-1 factorized": top1_text(s.get("acc_projected"), n),
            "top-1 fine-tuned": top1_text(s.get("acc_finetuned"), n),
            "change factorized": _points(None if s.get("drop_projected") is None else -s["drop_projected"]),
            "change fine-tuned": _points(None if s.get("drop_finetuned") is None else -s["drop_finetuned"]),
        })
    return rows


def result_line(summary: dict) -> str:
    """One sentence on a finished compression: kept (and from which analysis), top-1 with intervals."""
    n = summary.get("eval_samples")
    analysed = summary.get("analysis_images")
    line = (f"Kept {text.pct(summary.get('kept_fraction'))} of the counted layers' parameters (ranks from "
            f"{summary.get('dataset')}" + (f", {text.count(analysed)} images" if analysed else "") + "); top-1 on "
            f"{summary.get('eval_dataset')}: dense {top1_text(summary.get('acc_dense'), n)}, factorized "
            f"{top1_text(summary.get('acc_projected'), n)}")
    if summary.get("acc_finetuned") is not None:
        line += f", after fine-tuning {top1_text(summary['acc_finetuned'], n)}"
    return line + "."


def _summary_of(status) -> dict | None:
    """The stored summary a finished compression job names (None if it is gone)."""
    for summary in stored_summaries(state.cache().root):
        if summary.get("job_key") == status.key:
            return summary
    return None


def _finish(key: str, status) -> None:
    """Stop following the job and leave a message saying how it ended."""
    st.session_state.pop(COMPRESS_JOB, None)
    if status.state == "done":
        summary = _summary_of(status)
        if summary is None:
            state.notify("error", f"Compression {text.short_key(key)} reported done but its summary is not stored.")
        else:
            state.notify("success", "Compression finished. " + result_line(summary))
    elif status.state == "cancelled":
        state.notify("warning", f"Compression {text.short_key(key)} was cancelled; nothing was stored.")
    elif status.state == "failed":
        state.notify("error", status.message or f"Compression {text.short_key(key)} failed (no reason recorded).")
    else:
        state.notify("warning", f"No compression job {text.short_key(key)} is known here any more.")


def followed_job(model_id: str) -> str | None:
    """The compression this session follows; else adopt the newest live one of ``model_id`` (after a reload)."""
    key = st.session_state.get(COMPRESS_JOB)
    if state.is_key(key):
        return key
    try:
        live = [j for j in jobs.list_jobs(kind="compression")
                if j.state in jobs_view.ACTIVE_STATES and j.model_id == model_id]
    except AnalysisError:
        return None
    if live:
        st.session_state[COMPRESS_JOB] = live[0].key
        return live[0].key
    return None


def _submit(request: CompressionRequest) -> None:
    try:
        with st.spinner("Checking the request (loading the model) ..."):
            key = jobs.submit_compression(request)
    except AnalysisError as exc:
        st.error(str(exc))
        return
    st.session_state[COMPRESS_JOB] = key


def _download(result: Result, summaries: list[dict]) -> None:
    """The newest stored compression of this model whose exported factorized model is still on disk."""
    exported = next((s for s in summaries if s.get("export") and Path(s["export"]).is_file()), None)
    if exported is None:
        return
    path = Path(exported["export"])
    name = f"factorized-{text.short_key(result.key)}-kept{round(100 * exported['kept_fraction'])}.safetensors"
    st.download_button("Download the factorized model (safetensors)", data=path.read_bytes, file_name=name,
                       mime="application/octet-stream", on_click="ignore", key="compress_download_model",
                       icon=":material/download:")
    st.caption(f"The newest exported compression ({exported.get('created')}). Load it back with "
               f"`file:<path>/{name}`: the file names its base model and rank map.")


def section(result: Result, e_in: float, e_out: float) -> None:
    """Draw the form, the followed job, the stored compressions of this model, the chart and the download."""
    model_id = result.meta.model_id
    analysed = result.meta.dataset_id
    st.subheader("Factorize, evaluate, fine-tune")
    st.markdown(
        "Replace each counted layer by its two thin factors where that saves parameters, measure top-1 before "
        "and after on a labelled split, and optionally fine-tune briefly to recover. Zoo models are scored by their "
        "own classifier; models whose classifier does not match the dataset's classes by a linear probe. "
        f"Here, {KEPT_DEFINITION}. The ranks come from an analysis of the data below, so its parameters kept "
        "differ from the header's (the open analysis) when the data or the number of images differ."
    )
    with st.form("compress_form", enter_to_submit=False):  # Enter in a number box never starts a compression
        cols = st.columns(3)
        dataset = cols[0].text_input("Analysis + fine-tuning data", TRAIN_SPLIT_FOR.get(analysed, analysed), key="compress_dataset",
                                     help="Its subspaces give the ranks; fine-tuning reads all of it.")
        samples = cols[1].number_input("Analysis images", min_value=16, max_value=1_000_000, value=5000, step=500,
                                       key="compress_samples")
        eval_dataset = cols[2].text_input("Evaluation data (labelled)", PAIRED_EVAL.get(dataset, analysed) or analysed,
                                          key="compress_eval_dataset")
        cols = st.columns(3)
        budget = cols[0].checkbox("Use a parameter budget", value=False, key="compress_budget",
                                  help="Instead of the sidebar's energies: keep the share of parameters set beside.")
        keep = cols[1].slider("Parameters to keep", 0.05, 1.0, 0.6, 0.05, key="compress_keep",
                              help="Used when the budget box is ticked: the largest energy that fits.")
        eval_samples = cols[2].number_input("Evaluation images", min_value=16, max_value=1_000_000, value=2000, step=500,
                                            key="compress_eval_samples",
                                            help="Top-1 on n images is uncertain by about ±1/√n; it is shown "
                                                 "with its 95 % interval.")
        cols = st.columns(3)
        steps = cols[0].number_input("Fine-tuning steps", min_value=0, max_value=20_000, value=0, step=50, key="compress_steps")
        lr = cols[1].select_slider("Fine-tuning learning rate", options=[1e-5, 3e-5, 1e-4, 3e-4, 1e-3], value=1e-4,
                                   key="compress_lr")
        cols[2].caption(f"Energies: e_in = {text.energy(e_in)}, e_out = {text.energy(e_out)} (sidebar), unless a "
                        "budget is set.")
        submitted = st.form_submit_button("Compress and evaluate", icon=":material/compress:",
                                          key="compress_submit")
    if submitted:
        _submit(CompressionRequest(
            model=model_id, dataset=dataset.strip(), eval_dataset=eval_dataset.strip() or None, samples=int(samples),
            eval_samples=int(eval_samples), energy_in=e_in, energy_out=e_out, keep=float(keep) if budget else None,
            finetune=FinetuneSettings(steps=int(steps), lr=float(lr)),
        ))

    key = followed_job(model_id)
    if key is not None:
        with st.container(border=True):
            jobs_view.job_card(key, COMPRESS_JOB, _finish, label=f"Compressing {model_id}",
                               note="It runs in its own process: switch pages or reload, it goes on and reports "
                                    "here.")

    summaries = stored_summaries(state.cache().root, model=model_id)
    if summaries:
        # compression measures its subspaces on every token, uncentred (the method's default statistics)
        frame.show(charts.with_note(charts.compression_accuracy_chart(accuracy_points(summaries)), "all tokens"),
                   key="compress_accuracy")
        st.caption("Points are connected only when evaluated on the same images (dataset and number); bars are "
                   "95 % Wilson intervals; dashed lines are the dense model on each evaluation set.")
        shown = tables.displayed(pd.DataFrame(summary_rows(summaries)))
        st.dataframe(shown, hide_index=True, column_order=tables.key_columns_first(shown, SUMMARY_FIRST),
                     column_config=tables.numeric_config(shown, {
                         "parameters kept": st.column_config.NumberColumn("parameters kept", format="percent",
                                                                          help=KEPT_DEFINITION),
                     }))
        _download(result, summaries)
    else:
        st.caption("No compression of this model has been evaluated yet.")
