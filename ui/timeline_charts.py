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

from ui.charts import CHART_HEIGHT, _layout as _shared_layout, analysis_color

INTRO = (
    "How much of each layer a model uses as it trains: every checkpoint of a series (a zoo regime, or a folder "
    "of your own checkpoints) is a normal cached analysis, drawn against its training step, layer by layer and "
    "against its linear-probe accuracy. The zoo's regimes have two points today, their initialisation and their "
    "final model, until they are retrained with checkpoints; the sidebar's energies re-threshold every point."
)

STEP0_NOTE = "step 0 (initialisation) is drawn at x = {x0:g} on the log axis"


def _layout(fig: go.Figure, title: str, height: int = CHART_HEIGHT) -> go.Figure:
    """The other pages' look (:func:`ui.charts._layout`: fonts, dark ticks, title above the legend)."""
    return _shared_layout(fig, title, height=height)


def step_label(step: float) -> str:
    """A tick label for a training step: ``500``, ``2k``, ``1.5k``, ``10k``, ``1M``."""
    if step >= 1e6:
        return f"{step / 1e6:g}M"
    if step >= 1e3:
        return f"{step / 1e3:g}k"
    return f"{step:g}"


def log_ticks(low: float, high: float) -> list[float]:
    """Ticks at 1, 2 and 5 times the powers of ten between ``low`` and ``high`` (positive): enough to read a log
    axis, never a lone pair of decades."""
    ticks = []
    for power in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0 ** power
            if low <= value <= high:
                ticks.append(value)
    return ticks


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


def _steps_with_zero_tick(fig: go.Figure, steps: pd.Series, x0: float) -> None:
    """A log step axis ticked at 1, 2, 5 x 10^k (:func:`log_ticks`) over the data, with step 0 at ``x0``."""
    fig.update_xaxes(type="log", title="training step (log scale)")
    positive = sorted({float(s) for s in steps if not _nan(s) and float(s) > 0})
    has_zero = any((not _nan(s)) and float(s) == 0 for s in steps)
    if not positive:
        if has_zero:
            fig.update_xaxes(tickvals=[x0], ticktext=["0"])
        return
    ticks = log_ticks(positive[0] / 1.5, positive[-1] * 1.5)
    vals = ([x0] if has_zero else []) + [t for t in ticks if not has_zero or t > x0 * 1.5]
    fig.update_xaxes(tickvals=vals, ticktext=[("0" if has_zero and v == x0 else step_label(v)) for v in vals])
    if has_zero:
        fig.add_annotation(text=STEP0_NOTE.format(x0=x0), xref="paper", yref="paper", x=0.0, y=-0.28,
                           showarrow=False, font=dict(size=13, color="#333"), xanchor="left")


def mlu_vs_step(table: pd.DataFrame) -> go.Figure:
    """MLU against training step, one line per series (rows with an error are left out)."""
    ok = table[table["status"] == "ok"]
    x0 = step_zero_position(list(ok["step"]))
    fig = go.Figure()
    for i, (series, rows) in enumerate(ok.groupby("series", sort=False)):
        rows = rows.sort_values("step")
        fig.add_scatter(
            x=_x(rows["step"], x0), y=rows["mlu"], mode="lines+markers", name=series,
            line=dict(color=analysis_color(i)),
            customdata=np.stack([rows["checkpoint"].astype(str), rows["step"].astype(str)], axis=-1),
            hovertemplate="%{customdata[0]}<br>step %{customdata[1]}<br>MLU %{y:.1%}<extra>%{fullData.name}</extra>",
        )
    _steps_with_zero_tick(fig, ok["step"], x0)
    fig.update_yaxes(tickformat=".0%", title="MLU", rangemode="tozero")
    fig = _layout(fig, "MLU against training step")
    fig.update_layout(margin=dict(b=90))  # room for the step-0 note
    return fig


def depth_step_heatmap(layers: pd.DataFrame, series: str) -> go.Figure:
    """Utilization of every layer (rows, depth order from the top) at every checkpoint of ``series`` (columns,
    step order), from :meth:`Timeline.layers` (long format)."""
    sub = layers[layers["series"] == series]
    fig = go.Figure()
    if sub.empty:
        return _layout(fig, f"{series}: no analysed checkpoint")
    order = sub.drop_duplicates("layer").sort_values("depth")["layer"].tolist()
    columns = sub.drop_duplicates("checkpoint").sort_values("step")
    labels = [f"step {s}" if not _nan(s) else c for s, c in zip(columns["step"], columns["checkpoint"])]
    grid = sub.pivot_table(index="layer", columns="checkpoint", values="utilization", aggfunc="first")
    grid = grid.reindex(index=order, columns=list(columns["checkpoint"]))
    fig.add_heatmap(
        z=grid.to_numpy(dtype=float), x=labels, y=order, zmin=0.0, zmax=1.0, colorscale="Viridis",
        colorbar=dict(title="u", tickformat=".0%"),
        customdata=np.array([[c for c in columns["checkpoint"]]] * len(order)),
        hovertemplate="%{y}<br>%{x} (%{customdata})<br>u = %{z:.1%}<extra></extra>",
    )
    fig.update_yaxes(autorange="reversed", title="layer (depth order)", type="category")
    fig.update_xaxes(title="checkpoint", type="category")
    return _layout(fig, f"Utilization per layer across training: {series}",
                   height=max(CHART_HEIGHT, 16 * len(order) + 120))


def mlu_vs_probe(table: pd.DataFrame) -> go.Figure:
    """MLU against linear-probe top-1, one colour per series, every checkpoint whose accuracy is known."""
    ok = table[(table["status"] == "ok") & table["linear_probe_top1"].notna()]
    fig = go.Figure()
    for i, (series, rows) in enumerate(ok.groupby("series", sort=False)):
        rows = rows.sort_values("step")
        fig.add_scatter(
            x=rows["linear_probe_top1"], y=rows["mlu"], mode="markers+lines+text", name=series,
            text=[f"{s}" for s in rows["step"]], textposition="top center", line=dict(color=analysis_color(i), dash="dot"),
            customdata=np.stack([rows["checkpoint"].astype(str), rows["step"].astype(str)], axis=-1),
            hovertemplate="%{customdata[0]}<br>step %{customdata[1]}<br>probe %{x:.1%}, MLU %{y:.1%}"
                          "<extra>%{fullData.name}</extra>",
        )
    fig.update_xaxes(tickformat=".0%", title="linear-probe top-1 (Fashion-MNIST test)")
    fig.update_yaxes(tickformat=".0%", title="MLU")
    title = "MLU against linear-probe accuracy (labels: training step)"
    if ok.empty:
        title += ": no checkpoint with a known accuracy"
    return _layout(fig, title)
