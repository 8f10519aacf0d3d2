"""Charts of the One image page: each layer's share of the image's input energy inside the dataset's subspace
with the image's own rank beside the dataset's ``k_in``, and the residual heatmap of one layer over the image.

Same look as :mod:`ui.charts` (its layout, fonts and layer-kind colours)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.one_image import LayerImage, OneImage

from .charts import CHART_HEIGHT, _layout, kind_color, kind_label, percent_axis


def energy_fraction_chart(report: OneImage, selected: str | None = None, height: int = CHART_HEIGHT) -> go.Figure:
    """Top: per layer (depth order) the share of the image's input energy *outside* the dataset's top-k_in
    subspace, ``1 - ||X V_k||^2 / ||X||^2``, bars from zero coloured by kind (the selected layer marked by a
    triangle), against the dataset's own share outside, ``1 - e_in`` (dashed): a bar above the line is a layer
    where this image is less typical than the dataset's average. Bottom: the image's own rank against the
    dataset's k_in. Points carry the layer name (customdata).

    Bars start at zero (a bar chart whose axis started at 97 % would exaggerate every difference); the
    shares inside the subspace, close to 100 %, are in the hover."""
    names = [item.layer for item in report.layers]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[0.6, 0.4])
    for kind in dict.fromkeys(item.kind for item in report.layers):  # one trace per kind, in depth order
        items = [item for item in report.layers if item.kind == kind]
        fig.add_bar(
            x=[item.layer for item in items], y=[1.0 - item.energy_fraction for item in items],
            marker_color=kind_color(kind), name=kind_label(kind), legendgroup=kind,
            customdata=[[item.layer, item.own_rank, item.k_in, item.loss, item.energy_fraction] for item in items],
            hovertemplate=("<b>%{customdata[0]}</b><br>energy outside the dataset's subspace %{y:.3%}"
                           " (inside %{customdata[4]:.3%})<br>own rank %{customdata[1]}, dataset k_in "
                           "%{customdata[2]}<br>loss of W' on this image %{customdata[3]:.2e}<extra></extra>"),
            row=1, col=1,
        )
    fig.update_xaxes(categoryorder="array", categoryarray=names)
    outside = 1.0 - np.array([item.energy_fraction for item in report.layers], dtype=np.float64)
    finite = outside[np.isfinite(outside)]
    line = 1.0 - report.energy_in
    top = 1.2 * float(max(finite.max() if finite.size else 0.0, line, 1e-4))
    # the dataset's share as a named line (in the legend, so no label sits on the bars)
    fig.add_scatter(x=names, y=[line] * len(names), mode="lines", name=f"the dataset's share: 1 − e_in = {line:.3g}",
                    line=dict(color="#555", width=2, dash="dash"), hoverinfo="skip", row=1, col=1)
    fig.update_yaxes(title="energy outside<br>the subspace", range=[0.0, top], row=1, col=1, **percent_axis(0, top))
    if selected in names:  # a marker above the selected layer's bar (the selection is shared by every page)
        fig.add_scatter(x=[selected], y=[top], mode="markers", showlegend=False, cliponaxis=False,
                        marker=dict(symbol="triangle-down", size=16, color="black"), hoverinfo="skip", row=1, col=1)
    fig.add_scatter(x=names, y=[item.k_in for item in report.layers], mode="lines+markers", name="dataset k_in",
                    line=dict(color="#888", width=2, dash="dot"), marker=dict(size=6, symbol="square"),
                    hovertemplate="%{x}<br>dataset k_in %{y}<extra></extra>", row=2, col=1)
    fig.add_scatter(x=names, y=[item.own_rank for item in report.layers], mode="lines+markers",
                    name="this image's own rank", line=dict(color="#d62728", width=3), marker=dict(size=8),
                    hovertemplate="%{x}<br>own rank %{y}<extra></extra>", row=2, col=1)
    fig.update_yaxes(title="rank at e_in", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(tickangle=-45, row=2, col=1)
    return _layout(fig, f"Image {report.index}: its energy outside the dataset's subspace, and its own rank",
                   height=int(height * 1.3), bargap=0.25, margin=dict(l=80, r=30, t=165, b=130))


def residual_heatmap(item: LayerImage, picture: np.ndarray | None = None, height: int = CHART_HEIGHT) -> go.Figure:
    """The layer's per-vector loss on its grid, drawn over the image (``picture``: ``(H, W, 3)`` uint8) with
    the cells spread evenly over it; the colour is the share of this image's ``||W X||^2`` lost there."""
    heatmap = item.heatmap()
    if heatmap is None:
        raise ValueError(f"layer {item.layer} has no grid: {item.grid.reason}")
    rows, cols = heatmap.shape
    fig = go.Figure()
    if picture is not None:
        h, w = picture.shape[:2]
        fig.add_trace(go.Image(z=picture, hoverinfo="skip"))
        x = (np.arange(cols) + 0.5) * w / cols - 0.5
        y = (np.arange(rows) + 0.5) * h / rows - 0.5
        opacity = 0.6
    else:
        x, y, opacity = np.arange(cols), np.arange(rows), 1.0
    cells = np.array([[f"{r}, {c}" for c in range(cols)] for r in range(rows)])
    fig.add_heatmap(z=heatmap, x=x, y=y, colorscale="Inferno", opacity=opacity, customdata=cells,
                    colorbar=dict(title="loss", tickformat=".1e"), zmin=0.0,
                    hovertemplate="cell (row, col) %{customdata}<br>loss %{z:.2e} of ||WX||²<extra></extra>")
    fig.update_yaxes(autorange="reversed", scaleanchor="x", showgrid=False, title=None, showticklabels=False)
    fig.update_xaxes(showgrid=False, title=None, showticklabels=False)
    return _layout(fig, f"Loss of W' — {item.layer}", height=height, margin=dict(l=20, r=20, t=60, b=20))
