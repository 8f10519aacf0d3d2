"""Heads: per-head utilization of q, k, v and of the output projection's input, heads x layers.

Built from :func:`analysis.heads.head_table` at the sidebar's energies (no data pass). Clicking a cell selects
its layer for every page (``st.session_state["selected_layer"]``). Results without head data (CNNs, analyses
from before per-head analysis) get a note, and attention layers without a determinable layout say why.
"""

from __future__ import annotations

from functools import partial

import streamlit as st

import ui  # noqa: F401  first: the whole app's modules in one thread at a time (ui/__init__.py)
from analysis.heads import HEAD_PARTS, head_table, layouts_line, reasons_by_text
from ui import frame, head_charts, state, tables, text

CHART_KEY = "heads_chart"
PART_KEY = "heads_part"
TABLE_OPEN = "heads_table_open"  # the folded table's open state (frame.folded)

frame.intro("Heads", head_charts.INTRO, head_charts.FORMULA, head_charts.OUTRO, lead=head_charts.LEAD)
result = frame.require_result()
if result is None:
    st.stop()

table = head_table(result)
reasons = reasons_by_text(result)
if table.empty:
    st.info(head_charts.NO_HEAD_DATA, icon=":material/info:")
else:
    per_head = table[table["head"].notna()]
    cols = st.columns(len(HEAD_PARTS))
    for col, part in zip(cols, HEAD_PARTS):
        values = per_head.loc[per_head["part"] == part, "utilization"]
        col.metric(f"Mean u, {head_charts.SHORT_LABELS[part]}", text.pct(float(values.mean()) if len(values) else None),
                   help=f"Mean over every head of every attention layer: {head_charts.PART_LABELS[part]}.")
    parts = [p for p in HEAD_PARTS if p in set(per_head["part"])]
    if st.session_state.get(PART_KEY) not in parts:
        st.session_state[PART_KEY] = parts[0]
    part = st.radio("Part", parts, key=PART_KEY, horizontal=True, format_func=head_charts.PART_LABELS.get)
    selected = state.selected_layer(result)
    frame.plot(lambda: head_charts.head_heatmap(table, part, selected), result.meta, key=CHART_KEY,
               on_select=partial(state.select_layer_from_chart, CHART_KEY), selection_mode="points",
               same_as=("heads", result.key, part, selected, *state.energies()))
    st.caption(f"Head layout, read from the model and confirmed by a probe: {layouts_line(result)}.")
    head_table_box = frame.folded("Per-head table", TABLE_OPEN)
    if head_table_box.open:  # built only when opened (frame.folded)
        with head_table_box:
            shown, bars = tables.percent_bars(tables.displayed(table), {"utilization": "utilization"})
            st.dataframe(shown, hide_index=True, column_config=tables.numeric_config(shown, bars))
for why, layers in reasons.items():
    shown = ", ".join(f"`{layer}`" for layer in layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
    st.caption(f"No head numbers for {shown}: {why}.")
