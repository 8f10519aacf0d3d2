"""Chart builders of the Timeline page (Plotly figures from :class:`analysis.timeline.Timeline` tables; no
Streamlit here).

Step axis: training steps span 0 to thousands, so the x axis is logarithmic; step 0 has no place on a log
axis and is drawn at ``x0 = (smallest positive step) / 2`` (1/2 when every step is 0), with tick label ``0`` and
a note under the chart. The hover always shows the true step.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis.plots.charts import CHART_HEIGHT, FONT_SIZE, _layout, analysis_color, percent_axis

INTRO = (
    "How much of each layer a model uses as it trains: every checkpoint of a series (a zoo regime, or a folder "
    "of your own checkpoints) is a normal cached analysis, drawn against its training step beside its "
    "linear-probe accuracy, by layer group, layer by layer, and against the probe. The zoo's regimes start from "
    "one shared initialisation (step 0) and were checkpointed at log-spaced steps; the sidebar's energies "
    "re-threshold every point."
)

STEP0_NOTE = "step 0 (initialisation) is drawn at x = {x0:g} on the log axis"


def step_zero_position(steps: Sequence[float | int | None]) -> float:
    """Where step 0 goes on the log axis: half the smallest positive step (0.5 when there is none)."""
    positive = [float(s) for s in steps if s is not None and not _nan(s) and float(s) > 0]
    return min(positive) / 2 if positive else 0.5


def _nan(value: object) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def _x(steps: pd.Series, x0: float) -> list[float | None]:
    return [None if _nan(s) else (x0 if float(s) <= 0 else float(s)) for s in steps]


def log_step_ticks(steps: Sequence[float | int | None], x0: float | None = None) -> tuple[list[float], list[str]]:
    """Readable ticks for a log step axis: 1, 3, 10, 30, 100, 300, 1k, 3k, ... over the positive steps' range
    (one tick before the smallest, one after the largest), plus ``0`` at ``x0`` when step 0 is drawn there."""
    positive = sorted({float(s) for s in steps if not _nan(s) and float(s) > 0})
    values: list[float] = []
    if positive:
        low, high = positive[0], positive[-1]
        for k in range(0, 10):
            for mantissa in (1, 3):
                v = mantissa * 10.0 ** k
                if low / 3.5 <= v <= high * 3.5:
                    values.append(v)
    labels = [_short(v) for v in values]
    if x0 is not None:
        values, labels = [x0] + [v for v in values if v > x0 * 1.5], ["0"] + [l for v, l in zip(values, labels) if v > x0 * 1.5]
    return values, labels


def _short(value: float) -> str:
    """1, 30, 300, 1k, 3k, 10k, 1M: a tick label a projector can show."""
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def _steps_with_zero_tick(fig: go.Figure, steps: pd.Series, x0: float, **axis) -> None:
    has_zero = any((not _nan(s)) and float(s) == 0 for s in steps)
    ticks, labels = log_step_ticks(list(steps), x0 if has_zero else None)
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=labels, tickfont=dict(size=FONT_SIZE - 2, color="#222"),
                     **axis)
    if has_zero and not axis:
        fig.add_annotation(text=STEP0_NOTE.format(x0=x0), xref="paper", yref="paper", x=0.0, y=-0.28,
                           showarrow=False, font=dict(size=11), xanchor="left")


def _hover(rows: pd.DataFrame, what: str) -> dict:
    return dict(customdata=np.stack([rows["checkpoint"].astype(str), rows["step"].astype(str)], axis=-1),
                hovertemplate="%{customdata[0]}<br>step %{customdata[1]}<br>" + what + "<extra>%{fullData.name}</extra>")


def story_chart(table: pd.DataFrame, names: dict[str, str] | None = None, height: int = CHART_HEIGHT + 140) -> go.Figure:
    """MLU (top) and linear-probe top-1 (bottom) against training step for every series on one shared log axis,
    one colour per series: when utilization moves, and whether the representation improved meanwhile."""
    from plotly.subplots import make_subplots

    names = names or {}
    ok = table[table["status"] == "ok"]
    x0 = step_zero_position(list(ok["step"]))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.6, 0.4], vertical_spacing=STORY_GAP)
    last_points = ok.sort_values("step").groupby("series", sort=False).tail(1)
    for i, (series, rows) in enumerate(ok.groupby("series", sort=False)):
        rows = rows.sort_values("step")
        name, color = names.get(series, series), analysis_color(i)
        fig.add_scatter(x=_x(rows["step"], x0), y=rows["mlu"], mode="lines+markers", name=name, legendgroup=series,
                        line=dict(color=color, width=3), marker=dict(size=9), **_hover(rows, "MLU %{y:.1%}"),
                        row=1, col=1)
        probe = rows[rows["linear_probe_top1"].notna()]
        fig.add_scatter(x=_x(probe["step"], x0), y=probe["linear_probe_top1"], mode="lines+markers", name=name,
                        legendgroup=series, showlegend=False, line=dict(color=color, width=2, dash="dot"),
                        marker=dict(size=7, symbol="diamond"), **_hover(probe, "linear probe %{y:.1%}"), row=2, col=1)
    _steps_with_zero_tick(fig, ok["step"], x0, row=1, col=1)
    _steps_with_zero_tick(fig, ok["step"], x0, row=2, col=1)
    fig.update_xaxes(title="training step (log scale; 0 = initialisation)", row=2, col=1)
    fig.update_yaxes(tickformat=".0%", title="MLU", rangemode="tozero", row=1, col=1)
    probe = ok["linear_probe_top1"].dropna().astype(float)
    if len(probe):
        fig.update_yaxes(title="linear probe", row=2, col=1, **probe_axis(float(probe.min()), float(probe.max())))
    else:
        fig.update_yaxes(tickformat=".0%", title="linear probe", row=2, col=1)
    return _layout(fig, "MLU and linear-probe accuracy against training step", height=height)


STORY_GAP = 0.14
"""Space between :func:`story_chart`'s MLU and probe panels (a fraction of the plot's height, about 60 px): at
0.08 the MLU's "0%" tick sat just above the probe's "90%", two scales read as one."""
PROBE_HEADROOM = 0.12
"""The probe panel's range reaches this fraction of its data span beyond the data at either end, so its top tick
sits inside the panel, below the gap, not at its edge under the MLU's 0%."""


def probe_axis(low: float, high: float) -> dict:
    """The probe panel's y axis over accuracies ``low`` .. ``high``: padded by :data:`PROBE_HEADROOM` (at least
    1 point), with round percent ticks (:func:`analysis.plots.charts.percent_axis`)."""
    span = max(high - low, 0.01)
    pad = max(PROBE_HEADROOM * span, 0.01)
    axis = percent_axis(low, high, ticks=4)
    return dict(range=[max(0.0, low - pad), min(1.0, high + pad)], **axis)


def groups_chart(groups: pd.DataFrame, names: dict[str, str] | None = None, height: int = CHART_HEIGHT) -> go.Figure:
    """Mean utilization of each layer group (:meth:`analysis.timeline.Timeline.groups`) against training step:
    one panel per group (data-flow order, at most four per row), one colour per series, one y scale for all."""
    from plotly.subplots import make_subplots

    names = names or {}
    kinds = list(dict.fromkeys(groups["kind"]))
    if not kinds:
        return _layout(go.Figure(), "Utilization by layer group: no analysed checkpoint", height=height)
    labels = list(dict.fromkeys(groups["label"]))
    cols = min(2, len(kinds))  # two a row: the groups' names stay on one line at 1280 px
    rows_n = -(-len(kinds) // cols)
    fig = make_subplots(rows=rows_n, cols=cols, shared_yaxes=True, subplot_titles=labels, horizontal_spacing=0.04,
                        vertical_spacing=0.22 if rows_n > 1 else 0.1)
    x0 = step_zero_position(list(groups["step"]))
    top = float(groups["utilization"].max()) if len(groups) else 1.0
    for i, (series, part) in enumerate(groups.groupby("series", sort=False)):
        for j, kind in enumerate(kinds):
            rows = part[part["kind"] == kind].sort_values("step")
            fig.add_scatter(x=_x(rows["step"], x0), y=rows["utilization"], mode="lines+markers",
                            name=names.get(series, series), legendgroup=series, showlegend=j == 0,
                            line=dict(color=analysis_color(i), width=2), marker=dict(size=6),
                            **_hover(rows, "u %{y:.1%}"), row=j // cols + 1, col=j % cols + 1)
    for j in range(len(kinds)):
        _steps_with_zero_tick(fig, groups["step"], x0, row=j // cols + 1, col=j % cols + 1)
    fig.update_yaxes(tickformat=".0%", range=[0, min(1.0, top * 1.1 + 0.02)])
    fig.update_yaxes(title="mean utilization", col=1)
    fig.update_annotations(font=dict(size=FONT_SIZE - 1, color="#222"))
    fig = _layout(fig, "Utilization by layer group against training step", height=int(height * 0.8) * rows_n + 60)
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.12 / rows_n, xanchor="left", x=0.0))
    return fig  # the legend under the panels: above them it covered the first row's titles


HEATMAP_ROW_PX = 20
"""Height of one layer's row in :func:`depth_step_heatmap`: room for its name at :data:`HEATMAP_TICK_SIZE`, also
with the projector's larger text (:func:`analysis.plots.charts.for_projector`)."""
HEATMAP_TICK_SIZE = FONT_SIZE - 2
HEATMAP_MOST_NAMED = 64
"""At most this many layers are named on the heatmap's axis (a ViT-B has 50 analysed layers): beyond it every
k-th is, the axis title says so, and the chart stops growing (the hover names every row)."""


def depth_step_heatmap(layers: pd.DataFrame, series: str) -> go.Figure:
    """Utilization of every layer (rows, depth order from the top) at every checkpoint of ``series`` (columns,
    step order), from :meth:`Timeline.layers` (long format). Every row is named on the axis (Plotly's automatic
    ticks named every other one); a model with more than :data:`HEATMAP_MOST_NAMED` layers gets every k-th."""
    sub = layers[layers["series"] == series]
    fig = go.Figure()
    if sub.empty:
        return _layout(fig, f"{series}: no analysed checkpoint")
    order = sub.drop_duplicates("layer").sort_values("depth")["layer"].tolist()
    columns = sub.drop_duplicates("checkpoint").sort_values("step")
    labels = [f"step {int(s):,}" if not _nan(s) else c for s, c in zip(columns["step"], columns["checkpoint"])]
    grid = sub.pivot_table(index="layer", columns="checkpoint", values="utilization", aggfunc="first")
    grid = grid.reindex(index=order, columns=list(columns["checkpoint"]))
    fig.add_heatmap(
        z=grid.to_numpy(dtype=float), x=labels, y=order, zmin=0.0, zmax=1.0, colorscale="Viridis",
        colorbar=dict(title="u", tickformat=".0%"),
        customdata=np.array([[c for c in columns["checkpoint"]]] * len(order)),
        hovertemplate="%{y}<br>%{x} (%{customdata})<br>u = %{z:.1%}<extra></extra>",
    )
    step = -(-len(order) // HEATMAP_MOST_NAMED)
    title = "layer (depth order)" if step == 1 else f"layer (depth order; every {_ordinal(step)} named, hover for all)"
    fig.update_xaxes(title="checkpoint", type="category")
    _layout(fig, f"Utilization per layer across training: {series}",
            height=max(CHART_HEIGHT, HEATMAP_ROW_PX * min(len(order), HEATMAP_MOST_NAMED) + 190))
    # title_text, not title=: a title given whole replaced the one _layout styled (its font, so its dark colour)
    fig.update_yaxes(autorange="reversed", title_text=title, type="category", tickmode="array", tickvals=order[::step],
                     ticktext=order[::step], tickfont=dict(size=HEATMAP_TICK_SIZE))
    return fig


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


CROWDED = (0.08, 0.1)
"""A labelled point is crowded when another series has a point within these fractions of the x and y spans
(about a label's width and height on the chart)."""
LABEL_LIFT_PX = 56
"""How far above (or below, under another series' label) a crowded point its label goes, joined to the point by an
arrow."""


def mlu_vs_probe(table: pd.DataFrame, names: dict[str, str] | None = None) -> go.Figure:
    """MLU against linear-probe top-1, one colour per series, every checkpoint whose accuracy is known; only each
    series' last point is labelled, with the series' name and its step, in its colour (labels at every point pile
    up where series share step 0; the hover names every point). A label whose point has another series' points
    close by (a one-point series at step 0 sits among the others' starts) is lifted :data:`LABEL_LIFT_PX` above
    them with an arrow to its point: drawn on the point, "step 0" could have been any of three series' start."""
    names = names or {}
    ok = table[(table["status"] == "ok") & table["linear_probe_top1"].notna()]
    fig = go.Figure()
    x_span = max(float(ok["linear_probe_top1"].max() - ok["linear_probe_top1"].min()), 0.01) if len(ok) else 1.0
    y_span = max(float(ok["mlu"].max() - ok["mlu"].min()), 0.01) if len(ok) else 1.0
    last_points = ok.sort_values("step").groupby("series", sort=False).tail(1)
    for i, (series, rows) in enumerate(ok.groupby("series", sort=False)):
        rows = rows.sort_values("step")
        color, name = analysis_color(i), names.get(series, series)
        fig.add_scatter(
            x=rows["linear_probe_top1"], y=rows["mlu"], mode="markers+lines", name=name,
            line=dict(color=color, dash="dot"),
            customdata=np.stack([rows["checkpoint"].astype(str), rows["step"].astype(str)], axis=-1),
            hovertemplate="%{customdata[0]}<br>step %{customdata[1]}<br>probe %{x:.1%}, MLU %{y:.1%}"
                          "<extra>%{fullData.name}</extra>",
        )
        if not len(rows):
            continue
        last = rows.iloc[-1]
        x, y = float(last["linear_probe_top1"]), float(last["mlu"])
        others = ok[ok["series"] != series]
        crowded = bool(((others["linear_probe_top1"] - x).abs().le(CROWDED[0] * x_span)
                        & (others["mlu"] - y).abs().le(CROWDED[1] * y_span)).any())
        step = last["step"]
        label = f"{name} · step {int(step):,}" if not _nan(step) else f"{name} · {last['checkpoint']}"
        font = dict(size=FONT_SIZE - 1, color=color)
        if crowded:
            # lifted away from the other series' labels: each sits above and left of its last point, so a last
            # point above this one, near in x, has its label where this one would go (at 1280 px "random init ·
            # step 0" covered "DINO · step 1,872")
            near = last_points[(last_points["series"] != series)
                               & (last_points["linear_probe_top1"] - x).abs().le(3 * CROWDED[0] * x_span)]
            below = bool((near["mlu"] > y).any())
            fig.add_annotation(x=x, y=y, text=label, showarrow=True, arrowhead=2, arrowwidth=1.5, arrowcolor=color,
                               ax=0, ay=LABEL_LIFT_PX if below else -LABEL_LIFT_PX, font=font,
                               bgcolor="rgba(255,255,255,0.85)")
        else:
            fig.add_annotation(x=x, y=y, text=label, showarrow=False, xanchor="right", yanchor="bottom",
                               xshift=-4, yshift=4, font=font)
    fig.update_xaxes(tickformat=".0%", title="linear-probe top-1 (Fashion-MNIST test)")
    fig.update_yaxes(tickformat=".0%", title="MLU")
    title = "MLU against linear-probe accuracy (label: each series' last step)"
    if ok.empty:
        title += ": no checkpoint with a known accuracy"
    return _layout(fig, title)
