"""Compress: parameters kept and mean preservation error against energy (e_in = e_out swept over the grid),
per-layer savings at the current energies, factorize/evaluate/fine-tune as a background job with accuracy
against parameters kept and the factorized model's download (:mod:`ui.compress_view`), and downloads of the
per-layer table."""

from __future__ import annotations

from functools import partial

import streamlit as st

import ui  # noqa: F401  first: the whole app's modules in one thread at a time (ui/__init__.py)
from analysis.metrics import KEPT_DEFINITION
from analysis.table_export import export_bytes
from analysis.result import Result
from ui import charts, compress_view, frame, state, tables, text

MIME = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet", "json": "application/json"}


@st.cache_data(max_entries=32, show_spinner=False)
def _sweep(key: str, _result: Result):
    """The energy sweep of one analysis (depends only on its stored spectra, hence on its key)."""
    return tables.energy_sweep(_result)


frame.intro("Compress", text.COMPRESS_INTRO, text.COMPRESS_FORMULA, lead=text.COMPRESS_LEAD)
result = frame.require_result()
if result is None:
    st.stop()

e_in, e_out = state.energies()
params = result.parameters()
savings = tables.layer_savings(result)
counted = savings[savings["in_mlu"]]

cols = st.columns(4)
cols[0].metric("Parameters kept", text.pct(params["kept"]),
               help=f"Of the open analysis ({result.meta.dataset_id}, {text.count(result.meta.n_images)} "
                    f"images) at the sidebar's energies; {KEPT_DEFINITION}.")
cols[1].metric("Parameters saved", text.count(params["params_dense"] - params["params_factorized"]),
               help=f"of {text.count(params['params_dense'])} in the counted layers")
mean_error = counted["preservation_error"].mean() if len(counted) else float("nan")
cols[2].metric("Mean preservation error", "n/a" if mean_error != mean_error else f"{mean_error:.2e}")
frame.metric_with_error(cols[3], "MLU", result.mlu, result.mlu_err, "± its split-half error bar")

sweep = _sweep(result.key, result)
frame.plot(charts.compression_sweep_chart(sweep, e_in if e_in == e_out else None), result.meta, key="compress_sweep")
if e_in != e_out:
    st.caption("The sweep sets e_in = e_out; your current energies differ, so no marker is drawn on it.")

frame.plot(charts.savings_bars(result.layers), result.meta, key="compress_savings")
shown, bars = tables.percent_bars(tables.displayed(savings, {"preservation_error": ".2e"}), {"kept": "kept"},
                                  width="small")
st.dataframe(
    shown,
    hide_index=True,
    column_order=tables.key_columns_first(shown, tables.SAVINGS_TABLE_FIRST),  # "kept" on screen at 1280 px
    column_config=tables.numeric_config(shown, {
        **bars,
        "params_factorized": st.column_config.NumberColumn("factorized", help="params_factorized: at rank r"),
        "params_dense": st.column_config.NumberColumn("dense", help="params_dense"),
        "preservation_error": st.column_config.NumberColumn("error", format="%.2e", help="preservation_error"),
        "in_mlu": st.column_config.CheckboxColumn("in MLU", help="in_mlu: counted in the MLU"),
    }),
)

compress_view.section(result, e_in, e_out)

st.subheader("Download the per-layer table")
st.caption(f"At the current energies e_in = {text.energy(e_in)}, e_out = {text.energy(e_out)}.")
download_cols = st.columns(3)
stem = f"utilization-{text.short_key(result.key)}-e{text.energy(e_in)}-{text.energy(e_out)}"
for col, fmt in zip(download_cols, ("csv", "parquet", "json")):
    col.download_button(
        f"{fmt.upper()}", data=partial(export_bytes, result, fmt), file_name=f"{stem}.{fmt}",
        mime=MIME[fmt], on_click="ignore", key=f"compress_download_{fmt}", icon=":material/download:",
    )
