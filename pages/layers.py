"""Layers: utilization per layer in depth order (coloured by kind, MLU line), block x kind heatmap, table.

Clicking a bar, or a heatmap cell (its first layer), selects that layer for every page
(``st.session_state["selected_layer"]``).
"""

from __future__ import annotations

from functools import partial

import streamlit as st

import ui  # noqa: F401  first: the whole app's modules in one thread at a time (ui/__init__.py)
from analysis import uncertainty
from ui import card_view, charts, frame, state, tables, text

CHART_KEY = "layers_chart"
HEATMAP_KEY = "layers_heatmap"
CONVERGENCE_OPEN = "layers_convergence_open"  # the folded panels' open state (frame.folded)
TABLE_OPEN = "layers_table_open"

frame.intro("Layers", text.LAYERS_INTRO, text.LAYERS_FORMULA, text.LAYERS_OUTRO, lead=text.LAYERS_LEAD)
result = frame.require_result()
if result is None:
    st.stop()

table = result.layers
params = result.parameters()
e_in, e_out = state.energies()
counted = int(table["in_mlu"].sum())
for line in result.warnings:  # flagged layers (not reached / not exact / too few samples): never in the MLU
    st.warning(line, icon=":material/warning:")

cols = st.columns(4)
frame.metric_with_error(cols[0], "MLU", result.mlu, result.mlu_err,
                        "Mean of u over the layers counted (inside the blocks), ± its split-half error bar.")
cols[1].metric("Layers counted", f"{counted} of {len(table)}")
cols[2].metric("Parameters kept", text.pct(params["kept"]),
               help="If every counted layer is factorized at its rank r (where that is smaller): "
                    f"{text.count(params['params_factorized'])} of {text.count(params['params_dense'])} "
                    "parameters of the counted layers.")
cols[3].metric("Energies", f"{text.energy(e_in)} / {text.energy(e_out)}", help="e_in / e_out (sidebar).")

selected = state.selected_layer(result)
same = (result.key, e_in, e_out, selected)  # what the charts depend on: shared by every session asking
frame.plot(
    lambda: charts.utilization_bars(table, result.mlu, selected, height=frame.chart_height(charts.LAYER_BARS_HEIGHT),
                                    mlu_err=result.mlu_err),
    result.meta, key=CHART_KEY, on_select=partial(state.select_layer_from_chart, CHART_KEY), selection_mode="points",
    same_as=("bars", *same, frame.chart_height(charts.LAYER_BARS_HEIGHT)),
)
left, right = st.columns([1, 1], vertical_alignment="bottom")
with left:
    selected = frame.layer_stepper(result, "layers_layer_pick", "Selected layer (or click a bar or a cell)")
row = table[table["layer"] == selected].iloc[0]
with right:
    st.markdown(  # each "d_out = 288" one unbroken formula (text.formula): KaTeX wrapped lines after the "="
        f"**{selected}** ({charts.kind_label(row['kind'])}): "
        + ", ".join(text.formula(expression) for expression in (
            f"d_{{in}} = {text.whole(row['d_in'])}", f"d_{{out}} = {text.whole(row['d_out'])}",
            f"k_{{in}} = {text.whole(row['k_in'])}", f"k_{{out}} = {text.whole(row['k_out'])}",
            f"r = {text.whole(row['rank'])}",
            "u = " + (text.pct(row["utilization"]).replace("%", r"\%") if row["utilization"] == row["utilization"]
                      else r"\text{undefined}")))
        + (f"; the mean direction holds {text.pct(row['mean_share_in'])} of its input energy"
           if row["mean_share_in"] == row["mean_share_in"] else "")
    )
    st.page_link("pages/spectra.py", label="See its spectra", icon=":material/show_chart:")
# full width: in a narrow column the kind labels and the colour bar leave the cells too thin to click apart
frame.plot(lambda: charts.block_kind_heatmap(table, selected), result.meta, key=HEATMAP_KEY, same_as=("heatmap", *same),
                on_select=partial(state.select_layer_from_chart, HEATMAP_KEY), selection_mode="points")

# the folded panels are built only when opened (frame.folded): their chart and tables, drawn for nobody, were
# most of the browser's work on this page
convergence = frame.folded("How sure is this? Convergence with the number of images", CONVERGENCE_OPEN)
if convergence.open:
    with convergence:
        curve = uncertainty.convergence(result)
        if curve.empty:
            st.info("This analysis was run without the uncertainty setting (no split-half halves or snapshots). "
                    "Run it again with uncertainty on to see error bars and the convergence curve.")
        else:
            st.markdown(text.CONVERGENCE_TEXT)
            frame.plot(
                lambda: charts.convergence_chart(curve, selected, result.mlu_err, height=frame.chart_height(400)),
                result.meta, key="layers_convergence", same_as=("convergence", *same, frame.chart_height(400)))
            st.caption(text.convergence_verdict(curve, result.mlu_err))

per_layer = frame.folded("Per-layer table", TABLE_OPEN)
if per_layer.open:
    with per_layer:
        shown, bars = tables.percent_bars(tables.displayed(table, {"preservation_error": ".2e", "w_stable_rank": ".1f",
                                                                   "w_effective_rank": ".1f"}), {"utilization": "utilization"})
        st.dataframe(
            shown,
            hide_index=True,
            column_order=tables.key_columns_first(shown, tables.LAYER_TABLE_FIRST),  # utilization on screen at 1280 px
            column_config=tables.numeric_config(shown, {
                **bars,
                "preservation_error": st.column_config.NumberColumn("preservation_error", format="%.2e"),
                "w_stable_rank": st.column_config.NumberColumn("w_stable_rank", format="%.1f"),
                "w_effective_rank": st.column_config.NumberColumn("w_effective_rank", format="%.1f"),
            }),
        )
if result.not_applicable:
    st.caption("Not analysed (not applicable): " + ", ".join(f"`{x['layer']}` ({x['reason']})" for x in result.not_applicable))
card_view.card_expander(result.meta, (result.energy_in, result.energy_out), key="layers_card")
