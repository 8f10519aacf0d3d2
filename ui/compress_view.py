"""The "Factorize, evaluate, fine-tune" section of the Compress page.

A form runs :func:`analysis.compression.compress` for the open analysis' model at the current energies (or a
parameter budget), with a progress bar; each run's summary is stored in the cache (``compressions/``), so
the accuracy-against-parameters chart collects every compression of this model, and the last run's
factorized model can be downloaded as safetensors (loadable back as ``file:<path>``).
"""

from __future__ import annotations

import streamlit as st

from analysis.compression import CompressionRequest, FinetuneSettings, compress, store_summary, stored_summaries
from analysis.compression.pipeline import PAIRED_EVAL
from analysis.errors import AnalysisError
from analysis.progress import Progress
from analysis.result import Result

from . import charts, state, text

LAST_EXPORT = "compress_last_export"
TRAIN_SPLIT_FOR = {test: train for train, test in PAIRED_EVAL.items()}
"""An analysis of a test split compresses from the matching train split (the test split stays held out)."""

SUMMARY_COLUMNS = ["energy_in", "energy_out", "keep_target", "kept_fraction", "acc_dense", "acc_projected",
                   "acc_finetuned", "drop_projected", "drop_finetuned", "finetune_steps", "eval_dataset",
                   "evaluation_method", "created"]


def summary_rows(summaries: list[dict]) -> list[dict]:
    """Flat rows for the table of stored compressions."""
    rows = []
    for s in summaries:
        row = {c: s.get(c) for c in SUMMARY_COLUMNS}
        row["finetune_steps"] = (s.get("finetune") or {}).get("steps", 0)
        rows.append(row)
    return rows


def _run(request: CompressionRequest) -> None:
    bar = st.progress(0.0, text="starting")

    def progress(p: Progress) -> None:
        bar.progress(p.fraction, text=f"{p.stage}: {p.done:,} / {p.total:,}")

    try:
        report = compress(request, progress=progress)
    except AnalysisError as exc:
        bar.empty()
        st.error(str(exc))
        return
    bar.empty()
    store_summary(report.summary, state.cache().root)
    st.session_state[LAST_EXPORT] = {"model": request.model, "summary": report.summary, "bytes": report.export_bytes()}
    st.success(
        f"Kept {text.pct(report.summary['kept_fraction'])} of the counted layers' parameters: top-1 "
        f"{text.pct(report.summary['acc_dense'], 2)} dense, {text.pct(report.summary['acc_projected'], 2)} factorized"
        + (f", {text.pct(report.summary['acc_finetuned'], 2)} after fine-tuning" if report.summary["acc_finetuned"]
           is not None else "")
    )


def section(result: Result, e_in: float, e_out: float) -> None:
    """Draw the form, the stored compressions of this model, the accuracy chart and the download."""
    model_id = result.meta.model_id
    analysed = result.meta.dataset_id
    st.subheader("Factorize, evaluate, fine-tune")
    st.markdown(
        "Replace each counted layer by its two thin factors where that saves parameters, measure top-1 before "
        "and after on a labelled split, and optionally fine-tune briefly to recover. Zoo models are scored by their "
        "own classifier; models whose classifier does not match the dataset's classes by a linear probe."
    )
    with st.form("compress_form"):
        cols = st.columns(3)
        dataset = cols[0].text_input("Analysis + fine-tuning data", TRAIN_SPLIT_FOR.get(analysed, analysed), key="compress_dataset",
                                     help="Its subspaces give the ranks; fine-tuning reads all of it.")
        samples = cols[1].number_input("Analysis images", min_value=16, max_value=1_000_000, value=5000, step=500,
                                       key="compress_samples")
        eval_dataset = cols[2].text_input("Evaluation data (labelled)", PAIRED_EVAL.get(dataset, analysed) or analysed,
                                          key="compress_eval_dataset")
        cols = st.columns(3)
        budget = cols[0].checkbox("Parameter budget instead of energies", value=False, key="compress_budget")
        keep = cols[1].slider("Parameters to keep", 0.05, 1.0, 0.6, 0.05, key="compress_keep",
                              help="Used when the budget box is ticked: the largest energy that fits.")
        eval_samples = cols[2].number_input("Evaluation images", min_value=16, max_value=1_000_000, value=2000, step=500,
                                            key="compress_eval_samples")
        cols = st.columns(3)
        steps = cols[0].number_input("Fine-tuning steps", min_value=0, max_value=20_000, value=0, step=50, key="compress_steps")
        lr = cols[1].select_slider("Fine-tuning learning rate", options=[1e-5, 3e-5, 1e-4, 3e-4, 1e-3], value=1e-4,
                              key="compress_lr")
        cols[2].caption(f"Energies: e_in = {text.energy(e_in)}, e_out = {text.energy(e_out)} (sidebar), unless a "
                        "budget is set.")
        submitted = st.form_submit_button("Compress and evaluate", icon=":material/compress:",
                                          key="compress_submit")
    if submitted:
        request = CompressionRequest(
            model=model_id, dataset=dataset.strip(), eval_dataset=eval_dataset.strip() or None, samples=int(samples),
            eval_samples=int(eval_samples), energy_in=e_in, energy_out=e_out, keep=float(keep) if budget else None,
            finetune=FinetuneSettings(steps=int(steps), lr=float(lr)),
        )
        _run(request)

    summaries = stored_summaries(state.cache().root, model=model_id)
    if summaries:
        st.plotly_chart(charts.accuracy_vs_kept(summaries), key="compress_accuracy")
        st.dataframe(summary_rows(summaries), hide_index=True, column_config={
            c: st.column_config.NumberColumn(c, format="percent") for c in
            ("kept_fraction", "acc_dense", "acc_projected", "acc_finetuned", "drop_projected", "drop_finetuned")
        })
    else:
        st.caption("No compression of this model has been evaluated yet.")
    last = st.session_state.get(LAST_EXPORT)
    if last and last["model"] == model_id:
        name = f"factorized-{text.short_key(result.key)}-kept{round(100 * last['summary']['kept_fraction'])}.safetensors"
        st.download_button("Download the factorized model (safetensors)", data=last["bytes"], file_name=name,
                           mime="application/octet-stream", on_click="ignore", key="compress_download_model",
                           icon=":material/download:")
        st.caption(f"Load it back with `file:<path>/{name}`: the file names its base model and rank map.")
