"""Chart builders of the Heads page (Plotly figures from :func:`analysis.heads.head_table`; no Streamlit here).

The heads x layers map: one column per attention module in depth order (labelled by its block, or by its
name where blocks do not tell them apart), one row per head (head 0 on top), colour = the head's
utilization of the chosen part. Modules with fewer heads (early stages of a hierarchical model) leave their
lower cells empty. As on the Layers page, an invisible marker on every cell carries the hover and the click
(Plotly heatmaps send no selection events to Streamlit), with the layer to select as ``customdata[0]``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ui.charts import FONT_SIZE, MAX_CELL_TEXT_COLUMNS, _layout, fitted_range

LEAD = (
    "**How much of its space each attention head uses**: one column per attention layer in depth order, one row "
    "per head, for the queries, keys, values or the output projection's input. Click a cell to select its layer."
)
INTRO = (
    "A fused `qkv` layer writes three things from one input: queries, keys and values, each split into $H$ heads "
    "of $d_h$ rows. Each part $p$ (and each head, a $d_h \\times d_h$ block of it) has its own output second "
    "moment, a diagonal block of the layer's $C_{out}$, so each gets its own $k_{out}$, while all of them read the "
    "one input subspace of $k_{in}$ directions:"
)
FORMULA = (
    r"C_p = W_p C_{in} W_p^\top + W_p s b_p^\top + b_p s^\top W_p^\top + N b_p b_p^\top, \qquad "
    r"u_{p,h} = \frac{\min(k_{in}, k_{out,h})}{\min(d_{in}, d_h)}, \qquad "
    r"u_{\text{proj},h} = \frac{k_{in,h}}{d_h}"
)
OUTRO = (
    "The output projection's input is the heads' outputs side by side, so its per-head numbers are the input "
    "side only (the output is one sum over the heads). Related work reports that data reach 90 % of a head's energy "
    "in 2 to 11 of its 64 directions; here you can see which heads and layers use few."
)
NO_HEAD_DATA = (
    "This analysis has no per-head numbers: its model has no attention layers whose head layout the tool could "
    "determine, or it was computed before per-head analysis existed (run it again on the Analyze page to add them)."
)

PART_LABELS: dict[str, str] = {
    "q": "queries q",
    "k": "keys k",
    "v": "values v",
    "proj_in": "output projection's input",
}
"""How each part of :data:`analysis.heads.HEAD_PARTS` is named on the page."""


SHORT_LABELS: dict[str, str] = {"q": "q", "k": "k", "v": "v", "proj_in": "proj input"}
"""Parts as short metric labels."""


def column_labels(table: pd.DataFrame) -> dict[str, str]:
    """``{attention module: axis label}``: its block label where that is non-empty and names one module,
    the module's name otherwise, in depth order."""
    modules = list(dict.fromkeys(table["attention"]))
    blocks = {m: str(table.loc[table["attention"] == m, "block_label"].iloc[0]) for m in modules}
    labels = list(blocks.values())
    return {m: blocks[m] if blocks[m] and labels.count(blocks[m]) == 1 else m for m in modules}


def head_heatmap(table: pd.DataFrame, part: str, selected: str | None = None, height: int | None = None) -> go.Figure:
    """Utilization of ``part`` per head (rows) and attention module (columns) from a head table.

    The colour scale is fitted to the data (:func:`ui.charts.fitted_range`); the column holding the
    ``selected`` layer is outlined. Whole-part rows of the table are not drawn (their value is in the hover
    title of each column)."""
    heads_only = table[(table["part"] == part) & table["head"].notna()]
    fig = go.Figure()
    label = PART_LABELS.get(part, part)
    if heads_only.empty:
        return _layout(fig, f"Per-head utilization of the {label}: no head data", height=height or 300)
    labels = column_labels(table)
    modules = [m for m in labels if m in set(heads_only["attention"])]
    x_labels = [labels[m] for m in modules]
    n_heads = int(heads_only["head"].max()) + 1
    z = np.full((n_heads, len(modules)), np.nan)
    cells = []
    whole = table[(table["part"] == part) & table["head"].isna()].set_index("attention")
    for j, module in enumerate(modules):
        rows = heads_only[heads_only["attention"] == module]
        part_u = float(whole.loc[module, "utilization"]) if module in whole.index else float("nan")
        for _, row in rows.iterrows():
            h = int(row["head"])
            z[h, j] = row["utilization"]
            cells.append((h, j, [row["layer"], int(row["k"]), int(row["d"]), int(row["rank"]), float(row["utilization"]),
                                 module, part_u]))
    zmin, zmax = fitted_range(z)
    show_text = len(modules) <= MAX_CELL_TEXT_COLUMNS and n_heads <= 24
    text = np.where(np.isnan(z), "", np.vectorize(lambda v: f"{v:.0%}")(np.nan_to_num(z)))
    y_labels = [f"head {h}" for h in range(n_heads)]
    fig.add_heatmap(
        x=x_labels, y=y_labels, z=z, zmin=zmin, zmax=zmax, colorscale="Viridis",
        text=text if show_text else None, texttemplate="%{text}" if show_text else None,
        textfont=dict(size=FONT_SIZE - 2), hoverinfo="skip",
        colorbar=dict(title=dict(text="utilization", side="right"), tickformat=".0%", thickness=16),
    )
    invisible = dict(opacity=0.0)
    what = "k_in" if part == "proj_in" else "k_out"
    fig.add_scatter(
        x=[x_labels[j] for _, j, _ in cells], y=[y_labels[h] for h, _, _ in cells], mode="markers", name="cells",
        showlegend=False,
        marker=dict(symbol="square", size=max(10, min(30, 600 // max(1, len(modules), n_heads))), opacity=0.0,
                    color="black"),
        selected=dict(marker=invisible), unselected=dict(marker=invisible),
        customdata=[data for _, _, data in cells],
        hovertemplate=(f"<b>%{{customdata[5]}}</b>, %{{y}}<br>{what} %{{customdata[1]}} of %{{customdata[2]}}, "
                       "rank r %{customdata[3]}<br>utilization %{customdata[4]:.1%}"
                       f"<br>whole {part}: %{{customdata[6]:.1%}}<br>click: select %{{customdata[0]}}<extra></extra>"),
    )
    for j, module in enumerate(modules):
        if selected and selected in set(heads_only.loc[heads_only["attention"] == module, "layer"]):
            fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=-0.5, y1=n_heads - 0.5, xref="x", yref="y",
                          line=dict(color="#ff2d2d", width=4), fillcolor="rgba(0,0,0,0)", name="selected")
    step = max(1, int(np.ceil(len(modules) / 24)))
    by_block = all(label != module for label, module in zip(x_labels, modules))
    fig.update_xaxes(title="block (depth)" if by_block else "attention layer (depth)", type="category",
                     tickangle=0 if len(modules) <= 16 else -60, tickmode="array", tickvals=x_labels[::step],
                     ticktext=x_labels[::step], range=[-0.5, len(modules) - 0.5])
    fig.update_yaxes(type="category", automargin=True, range=[n_heads - 0.5, -0.5],  # head 0 on top
                     tickvals=y_labels[:: max(1, int(np.ceil(n_heads / 24)))])
    energy = float(heads_only["energy"].iloc[0])
    side = "e_in" if part == "proj_in" else "e_out"
    return _layout(fig, f"Per-head utilization of the {label} ({side} = {energy:g})",
                   height=height or max(320, 30 * n_heads + 200), clickmode="event+select",
                   margin=dict(l=70, r=30, t=80, b=70))
