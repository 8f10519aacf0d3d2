"""Plotly figure builders for every page. Pure functions of library objects: no Streamlit here.

Conventions shared by all charts (so the pages look like one product):

- one colour per layer kind (:data:`KIND_COLORS`), the same on every page;
- one colour per analysis on the Compare page (:data:`ANALYSIS_COLORS`), distinct from the kind colours;
- layers are always drawn in depth (model) order; layers outside the MLU (patch embedding, classifier head)
  are hatched, because the paper's mean excludes them;
- every point or bar that stands for a layer carries the layer name as ``customdata[0]`` so a click on it
  can select that layer.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis import metrics
from analysis import status as layer_status
from analysis.models.kinds import KIND_NAMES
from analysis.models.kinds import kind_label as _kind_label
from analysis.models.kinds import kinds_in_order as _kinds_in_order
from analysis.result import WPRIME_ENERGIES, LayerSpectrum

from . import numbers

KIND_ORDER: tuple[str, ...] = KIND_NAMES
"""Kinds in the order a network meets them (legends, heatmap rows): :class:`analysis.models.kinds.Kind`."""

KIND_COLORS: dict[str, str] = {
    "patch_embed": "#7f7f7f",
    "pos_embed": "#c7c7c7",
    "attn_qkv": "#1f77b4",
    "attn_proj": "#17becf",
    "class_attn_qkv": "#aec7e8",
    "class_attn_proj": "#9edae5",
    "token_mix_fc1": "#ffbb78",
    "token_mix_fc2": "#ff9896",
    "token_mix": "#dbdb8d",
    "mlp_fc1": "#ff7f0e",
    "mlp_fc2": "#d62728",
    "conv": "#2ca02c",
    "pointwise_conv": "#9467bd",
    "squeeze_excite": "#98df8a",
    "downsample": "#c5b0d5",
    "linear": "#8c564b",
    "grouped_conv": "#e377c2",
    "head_side": "#d4d47a",
    "head": "#bcbd22",
}
"""The colour of each layer kind, used by every chart that colours layers (names, labels and order live in
:mod:`analysis.models.kinds`)."""

_FALLBACK_COLORS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")

ANALYSIS_COLORS: tuple[str, ...] = ("#4c78a8", "#e45756", "#54a24b", "#b279a2")
"""Colours of the (up to four) analyses on the Compare page, in selection order."""

CHART_HEIGHT = 460
LAYER_BARS_HEIGHT = 600
"""Height of a bar per layer chart (:func:`utilization_bars`, :func:`savings_bars`, :func:`delta_bars`): its legend
above (hung under the title, :func:`legend_under_title`) and the rotated layer names under it take about
310 px, so at 420 px its plot area was a flat strip of 150 px on a wide screen."""
ZERO_ERROR = 1e-12
"""Preservation errors below this are floating-point noise (the error is exactly 0 at e = 1); not drawn on log axes."""
FONT_SIZE = 15
"""Base font (axis titles, hover); ticks and legend use it too, the title 20 px: readable on a projector."""
TITLE_SIZE = 20
_MARGIN = dict(l=70, r=30, t=110, b=70)
"""The top margin holds the title (top line) and the legend (second line) without overlap."""


TITLE_TOP = 0.985
"""Where every title's top line sits (a fraction of the figure's height, from its bottom: :func:`_layout`)."""
LEGEND_GAP_PX = 6
"""Space between a title and a legend hung under it (:func:`legend_under_title`)."""


def title_bottom_px(fig: go.Figure) -> float:
    """Pixels from the figure's top to the bottom of its title's line (one line of the title's font)."""
    layout = fig.layout
    size = layout.title.font.size if layout.title.font and layout.title.font.size else TITLE_SIZE
    return (1 - TITLE_TOP) * (layout.height or CHART_HEIGHT) + 1.3 * size


def legend_under_title(fig: go.Figure) -> go.Figure:
    """Hang ``fig``'s horizontal legend from just under its title (container coordinates), so the legend takes
    the rows it needs at the width it is drawn and Plotly reserves exactly that room above the plot: a kind
    legend wraps into three rows at 1280 px in presentation mode but fits one at 1920 px, where a top margin
    sized for three left about 40 px empty under the title. The top margin itself holds the title and one row;
    :func:`for_projector` hangs it again for the larger title."""
    legend_size = fig.layout.legend.font.size if fig.layout.legend.font and fig.layout.legend.font.size else FONT_SIZE - 1
    top = title_bottom_px(fig) + LEGEND_GAP_PX
    fig.update_layout(legend=dict(yref="container", y=1 - top / (fig.layout.height or CHART_HEIGHT), yanchor="top"),
                      margin=dict(t=int(top + 1.5 * legend_size + 12)))
    return fig


def kind_color(kind: str) -> str:
    """The colour of ``kind`` (a stable fallback for kinds this module does not know)."""
    if kind in KIND_COLORS:
        return KIND_COLORS[kind]
    return _FALLBACK_COLORS[sum(map(ord, kind)) % len(_FALLBACK_COLORS)]


def kind_label(kind: str) -> str:
    return _kind_label(kind)


def kinds_in_order(kinds: Iterable[str]) -> list[str]:
    """Distinct kinds, known ones in data-flow order, unknown ones after them alphabetically."""
    return _kinds_in_order(kinds)


def _layout(fig: go.Figure, title: str, **kwargs) -> go.Figure:
    """Shared look: title on the first line of the top margin, the legend on the line below it (never over
    the title or the plot), projector-sized fonts, dark ticks."""
    fig.update_layout(
        title=dict(text=title, x=0.0, xanchor="left", y=TITLE_TOP, yanchor="top", yref="container",
                   font=dict(size=TITLE_SIZE)),
        height=kwargs.pop("height", CHART_HEIGHT),
        margin=kwargs.pop("margin", _MARGIN),
        font=dict(size=FONT_SIZE, color="#222"),
        legend=kwargs.pop("legend", dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0.0,
                                         font=dict(size=FONT_SIZE - 1))),
        **kwargs,
    )
    fig.update_xaxes(tickfont=dict(size=FONT_SIZE - 2, color="#222"), title_font=dict(size=FONT_SIZE, color="#222"))
    fig.update_yaxes(tickfont=dict(size=FONT_SIZE - 1, color="#222"), title_font=dict(size=FONT_SIZE, color="#222"))
    return fig


def with_note(fig: go.Figure, note: str) -> go.Figure:
    """Append ``note`` (which vectors the analysis counted, :func:`ui.text.analysis_note`) to the title."""
    if note:
        title = fig.layout.title.text or ""
        fig.update_layout(title_text=f"{title} <span style='font-size:{FONT_SIZE - 1}px;color:#555'>· {note}</span>")
    return fig


LINE_LABEL_MARGIN = 100
"""Right margin (px) that holds an MLU label (two lines) beside the plot (:func:`label_line`)."""


def label_line(fig: go.Figure, y: float, text: str, color: str = "#222", size: int = FONT_SIZE) -> None:
    """Label the horizontal line at ``y`` in the right margin, level with the line's end: outside the plot area
    no bar, whisker or point can cover it (inside, a label sat on whichever bar was under it). The chart needs a
    right margin as wide as the label (:data:`LINE_LABEL_MARGIN` for an MLU); ``<br>`` splits it into lines."""
    fig.add_annotation(x=1.0, xref="x domain", xanchor="left", xshift=6, y=y, yref="y", yanchor="middle",
                       text=text, align="left", showarrow=False, font=dict(size=size, color=color))


PROJECTOR_SCALE = 1.25
"""Presentation mode: every text of a chart this much larger, and the top margin grown to keep its room."""


def for_projector(fig: go.Figure, scale: float = PROJECTOR_SCALE) -> go.Figure:
    """A copy of ``fig`` with every font (title, axes, ticks, legend, annotations, bar texts, an animation's
    Play / Pause buttons and slider) ``scale`` times larger, for a projector; the margins grow with the text so
    the title keeps its line above the legend."""
    fig = go.Figure(fig)

    def bigger(font, default: float) -> dict:
        size = font.size if font is not None and font.size else default
        return dict(size=round(size * scale))

    layout = fig.layout
    fig.update_layout(font=bigger(layout.font, FONT_SIZE), title_font=bigger(layout.title.font, TITLE_SIZE),
                      legend_font=bigger(layout.legend.font, FONT_SIZE - 1))
    fig.for_each_xaxis(lambda ax: ax.update(tickfont=bigger(ax.tickfont, FONT_SIZE - 2),
                                            title_font=bigger(ax.title.font, FONT_SIZE)))
    fig.for_each_yaxis(lambda ax: ax.update(tickfont=bigger(ax.tickfont, FONT_SIZE - 1),
                                            title_font=bigger(ax.title.font, FONT_SIZE)))
    def grown(font, default: float) -> dict:  # the font's other settings (family, colour) kept
        return {**(font.to_plotly_json() if font else {}), **bigger(font, default)}

    for note in fig.layout.annotations or ():
        note.font = grown(note.font, FONT_SIZE)
    for menu in layout.updatemenus or ():  # the animation's Play / Pause buttons grow with the text around them
        menu.font = grown(menu.font, FONT_SIZE)
    for slider in layout.sliders or ():  # its step labels and the "e = ..." readout
        slider.font = grown(slider.font, FONT_SIZE - 1)
        if slider.currentvalue is not None:
            slider.currentvalue.font = grown(slider.currentvalue.font, FONT_SIZE)
    for trace in fig.data:
        if getattr(trace, "textfont", None) is not None and "textfont" in trace:
            trace.textfont = {**trace.textfont.to_plotly_json(), **bigger(trace.textfont, FONT_SIZE)}
    margin = layout.margin
    if margin is not None and margin.t:
        fig.update_layout(margin=dict(t=int(margin.t * scale), b=int((margin.b or 70) * scale),
                                      l=int((margin.l or 70) * scale), r=int((margin.r or 30) * scale)))
    if layout.height:
        fig.update_layout(height=int(layout.height * 1.1))
    if layout.legend.yref == "container":  # a legend hung under the title follows the larger title
        legend_under_title(fig)
    return fig


def percent_axis(low: float, high: float, ticks: int = 6) -> dict:
    """Tick settings of a percent axis over ``[low, high]`` (fractions): a round step (1, 2 or 5 times a power
    of ten) giving about ``ticks`` ticks, and as many decimals as that step needs, so no two tick labels read
    the same (``32%, 32%, 33%`` over a narrow range) and none carries digits that mean nothing."""
    raw = max(abs(high - low), 1e-9) / max(ticks, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    digits = max(0, min(4, -math.floor(math.log10(step * 100) + 1e-9)))
    return dict(tickformat=f".{digits}%", dtick=step, tick0=0.0)


def signed_axis(low: float, high: float, suffix: str = "", ticks: int = 6) -> dict:
    """Tick settings of an axis of differences over ``[low, high]`` (0 always included): a round step (1, 2 or
    5 times a power of ten) giving about ``ticks`` ticks, labelled with their sign (``+5 pp``, ``−10 pp``) but
    zero without one (``0 pp``: a format with a sign wrote ``+0 pp``)."""
    low, high = min(low, 0.0), max(high, 0.0)
    raw = max(high - low, 0.1) / max(ticks, 1)  # (nearly) no differences: ticks a few hundredths apart
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    digits = max(0, -math.floor(math.log10(step) + 1e-9))
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    values = [round(i * step, digits) for i in range(first, last + 1)]
    # Plotly's own negative ticks use the minus sign (U+2212), not a hyphen
    texts = [f"0{suffix}" if v == 0 else f"{'+' if v > 0 else '−'}{abs(v):.{digits}f}{suffix}" for v in values]
    return dict(tickmode="array", tickvals=values, ticktext=texts)


# ------------------------------------------------------------------------------------------ Layers
def _count(value) -> str:
    """An integer, or ``undefined`` for a missing k (zero input or output energy, :mod:`analysis.status`)."""
    return "undefined" if pd.isna(value) else str(int(value))


def _layer_customdata(table: pd.DataFrame) -> np.ndarray:
    error = table["preservation_error"].astype(float)
    return np.column_stack([
        table["layer"].astype(str),
        table["d_in"].astype(int),
        table["d_out"].astype(int),
        table["k_in"].map(_count),
        table["k_out"].map(_count),
        table["rank"].map(_count),
        table["params_dense"].astype(int).map("{:,}".format),
        table["params_factorized"].astype(int).map("{:,}".format),
        error.map(lambda v: "n/a" if np.isnan(v) else f"{v:.2e}"),
        table["in_mlu"].map(lambda v: "yes" if v else "no (flagged)"),
        _column(table, "utilization_err").map(lambda v: numbers.error_bar(v) or "not measured"),
        _rank_error(table).map(lambda v: numbers.dims_error(v) or "not measured"),
    ])


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    return table[name].astype(float) if name in table else pd.Series(np.nan, index=table.index)


def _rank_error(table: pd.DataFrame) -> pd.Series:
    """The split-half error bar of each layer's rank r in dimensions: u's error times min(d_in, d_out)."""
    return _column(table, "utilization_err") * np.minimum(table["d_in"], table["d_out"]).astype(float)


_LAYER_HOVER = (
    "<b>%{customdata[0]}</b><br>utilization %{y:.1%}<br>"
    "d_in %{customdata[1]}, d_out %{customdata[2]}<br>"
    "k_in %{customdata[3]}, k_out %{customdata[4]}, rank r %{customdata[5]}<br>"
    "parameters %{customdata[6]} dense, %{customdata[7]} at rank r<br>"
    "preservation error %{customdata[8]}<br>counted in MLU: %{customdata[9]}<br>"
    "split-half error bar: u %{customdata[10]}, r %{customdata[11]}<extra></extra>"
)


BAR_GAP = 0.15
"""Gap between the bars of a bar-per-layer chart, as a fraction of a category's width."""
SELECTED_OUTLINE = dict(color="black", width=3)
"""The outline of the selected layer's bar (:func:`utilization_bars`)."""


def _outline_bar(fig: go.Figure, table: pd.DataFrame, selected: str | None, bargap: float) -> None:
    """Outline the ``selected`` layer's bar with a rectangle (a layout shape named ``selected``) on the
    categorical layer axis. Not the bar's own ``marker.line``: Plotly draws a bar trace's legend swatch with
    its first bar's outline, so the selected layer's outline showed on its kind's legend entry."""
    layers = list(table["layer"])
    if selected not in layers:
        return
    value = float(table["utilization"].iloc[layers.index(selected)])
    if np.isnan(value):  # undefined k: no bar to outline
        return
    place, half = layers.index(selected), (1.0 - bargap) / 2
    fig.add_shape(type="rect", xref="x", yref="y", x0=place - half, x1=place + half, y0=0.0, y1=value,
                  line=SELECTED_OUTLINE, fillcolor="rgba(0,0,0,0)", layer="above", name="selected")


def utilization_bars(table: pd.DataFrame, mlu: float, selected: str | None = None,
                     height: int = LAYER_BARS_HEIGHT, mlu_err: float = float("nan")) -> go.Figure:
    """Utilization per layer in depth order, one colour per kind, the MLU as a dashed line.

    Layers not counted in the MLU are hatched; the ``selected`` layer gets a black outline. Where the table
    has split-half errors (``utilization_err``), they are drawn as whiskers, and ``mlu_err`` as a band.
    """
    fig = go.Figure()
    errors = table["utilization_err"] if "utilization_err" in table else pd.Series(np.nan, index=table.index)
    for kind in kinds_in_order(table["kind"]):
        sub = table[table["kind"] == kind]
        sub_err = errors[sub.index].astype(float)
        whiskers = dict(type="data", array=sub_err.fillna(0.0).to_numpy(), color="#333", thickness=1.5, width=3,
                        visible=bool(sub_err.notna().any()))
        fig.add_bar(
            error_y=whiskers,
            x=sub["layer"],
            y=sub["utilization"],
            name=kind_label(kind),
            marker=dict(
                color=kind_color(kind),
                pattern=dict(shape=["" if counted else "/" for counted in sub["in_mlu"]]),
            ),
            customdata=_layer_customdata(sub),
            hovertemplate=_LAYER_HOVER,
        )
    _outline_bar(fig, table, selected, bargap=BAR_GAP)
    if not np.isnan(mlu):
        if not np.isnan(mlu_err) and mlu_err > 0:
            fig.add_hrect(y0=mlu - mlu_err, y1=mlu + mlu_err, fillcolor="black", opacity=0.08, line_width=0)
        fig.add_hline(y=mlu, line_dash="dash", line_color="black", line_width=2)
        bar = numbers.error_bar(mlu_err)
        label_line(fig, mlu, f"<b>MLU {numbers.pct(mlu)}</b>" + (f"<br>{bar}" if bar else ""), size=FONT_SIZE + 1)
    fig.update_xaxes(categoryorder="array", categoryarray=list(table["layer"]), tickangle=-60, title="layer (depth order)")
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%", title="utilization r / min(d_in, d_out)")
    return legend_under_title(_layout(fig, "Utilization per layer", bargap=BAR_GAP, clickmode="event+select",
                                      height=height, margin={**_MARGIN, "r": LINE_LABEL_MARGIN}))


def convergence_chart(curve: pd.DataFrame, selected: str | None = None, mlu_err: float = float("nan"),
                      height: int = CHART_HEIGHT) -> go.Figure:
    """MLU (and the ``selected`` layer's utilization) against images seen, from
    :func:`analysis.uncertainty.convergence`; the last point carries the split-half error bar."""
    fig = go.Figure()
    mlu = curve[curve["layer"] == "MLU"]
    if len(mlu):
        errors = [0.0] * (len(mlu) - 1) + [0.0 if np.isnan(mlu_err) else mlu_err]
        fig.add_scatter(x=mlu["images"], y=mlu["utilization"], mode="lines+markers", name="MLU",
                        line=dict(color="black", width=3), marker=dict(size=9),
                        error_y=dict(type="data", array=errors, visible=not np.isnan(mlu_err), thickness=2, width=6),
                        hovertemplate="%{x:,} images: MLU %{y:.1%}<extra></extra>")
    if selected is not None:
        layer = curve[curve["layer"] == selected]
        if len(layer):
            fig.add_scatter(x=layer["images"], y=layer["utilization"], mode="lines+markers", name=selected,
                            line=dict(color="#1f77b4", width=2, dash="dot"), marker=dict(size=7),
                            hovertemplate="%{x:,} images: u %{y:.1%}<extra>" + selected + "</extra>")
    values = curve["utilization"].dropna()
    top = float(values.max()) if len(values) else 1.0
    fig.update_xaxes(type="log", title="images seen (log scale)")
    fig.update_yaxes(range=[0, min(1.05, max(0.1, top * 1.25))], tickformat=".0%", title="utilization")
    return _layout(fig, "Convergence: the answer against images seen", height=height)


def fitted_range(values: np.ndarray, step: float = 0.05) -> tuple[float, float]:
    """A colour range fitted to ``values`` (fractions): min and max rounded outward to ``step``, at least one
    step wide, clipped to [0, 1]. NaNs are ignored; all-NaN gives (0, 1)."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    low = max(0.0, np.floor(finite.min() / step - 1e-9) * step)
    high = min(1.0, np.ceil(finite.max() / step + 1e-9) * step)
    if high - low < step:
        high = min(1.0, low + step) if low + step <= 1.0 else high
        low = high - step
    return float(low), float(high)


MAX_CELL_TEXT_COLUMNS = 14
"""Above this many blocks the cell percentages would overlap: they move to the hover only."""


def block_kind_heatmap(table: pd.DataFrame, selected: str | None = None) -> go.Figure:
    """Mean utilization per (block, kind): rows are layer kinds, columns are blocks in depth order.

    The colour scale is fitted to the data (:func:`fitted_range`, colourbar beside it), so 11 % and 29 % do
    not look alike; the cell holding the ``selected`` layer is outlined. Layers outside any block (patch
    embedding, head) have no column; several layers of one kind in one block are averaged and listed in the
    hover. With many blocks the cell texts are dropped and the x labels thinned, so they never overlap.
    """
    blocked = table[table["block"].notna()].copy()
    fig = go.Figure()
    if blocked.empty:
        return _layout(fig, "Utilization by block and kind (no layers inside blocks)")
    blocked["block"] = blocked["block"].astype(int)
    blocks = sorted(blocked["block"].unique())
    kinds = kinds_in_order(blocked["kind"])
    z = np.full((len(kinds), len(blocks)), np.nan)
    names = np.full((len(kinds), len(blocks)), "", dtype=object)
    for (kind, block), group in blocked.groupby(["kind", "block"]):
        i, j = kinds.index(kind), blocks.index(block)
        z[i, j] = group["utilization"].mean()
        names[i, j] = ", ".join(group["layer"])
    zmin, zmax = fitted_range(z)
    show_text = len(blocks) <= MAX_CELL_TEXT_COLUMNS
    text = np.where(np.isnan(z), "", np.vectorize(lambda v: f"{v:.0%}")(np.nan_to_num(z)))
    x_labels, y_labels = [str(b) for b in blocks], [kind_label(k) for k in kinds]
    fig.add_heatmap(
        x=x_labels,
        y=y_labels,
        z=z,
        zmin=zmin,
        zmax=zmax,
        colorscale="Viridis",
        text=text if show_text else None,
        texttemplate="%{text}" if show_text else None,
        textfont=dict(size=FONT_SIZE - 1),
        hoverinfo="skip",
        colorbar=dict(title=dict(text="utilization", side="right"), tickformat=".0%", thickness=16),
    )
    # Plotly heatmap cells send no selection events to Streamlit (streamlit/streamlit#8760), so an invisible
    # marker on every filled cell carries the hover and the click; customdata[0] is the layer a click selects.
    cells = [(i, j) for i in range(len(kinds)) for j in range(len(blocks)) if names[i, j]]
    invisible = dict(opacity=0.0)
    fig.add_scatter(
        x=[x_labels[j] for _, j in cells],
        y=[y_labels[i] for i, _ in cells],
        mode="markers",
        name="cells",
        showlegend=False,
        marker=dict(symbol="square", size=max(12, min(34, 700 // max(1, len(blocks)))), opacity=0.0, color="black"),
        selected=dict(marker=invisible),
        unselected=dict(marker=invisible),
        customdata=[[names[i, j].split(", ")[0], names[i, j], z[i, j]] for i, j in cells],
        hovertemplate="block %{x}, %{y}<br>utilization %{customdata[2]:.1%}<br>%{customdata[1]}"
                      "<br>click: select %{customdata[0]}<extra></extra>",
    )
    for i, j in cells:
        if selected and selected in names[i, j].split(", "):
            fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5, xref="x", yref="y",
                          line=dict(color="#ff2d2d", width=4), fillcolor="rgba(0,0,0,0)", name="selected")
    step = max(1, int(np.ceil(len(blocks) / 24)))
    fig.update_xaxes(title="block (depth)", type="category", tickangle=0,
                     tickmode="array", tickvals=x_labels[::step], ticktext=x_labels[::step])
    fig.update_yaxes(autorange="reversed", automargin=True)
    return _layout(fig, "Utilization by block and layer kind", height=max(300, 56 * len(kinds) + 200),
                   clickmode="event+select", margin=dict(l=40, r=30, t=80, b=70))


# ------------------------------------------------------------------------------------------ Spectra
def _positive(values: np.ndarray, reference: float, floor: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """(index from 1, value / reference) for the values above ``floor`` relative (zeros cannot be drawn on log)."""
    values = np.asarray(values, dtype=np.float64)
    if reference <= 0:
        return np.array([]), np.array([])
    scaled = values / reference
    keep = scaled > floor
    return np.arange(1, len(values) + 1)[keep], scaled[keep]


def nearest_wprime_energy(energy: float) -> float:
    """The stored W' energy closest to ``energy`` (W' spectra are stored at e_in = e_out = e)."""
    return min(WPRIME_ENERGIES, key=lambda e: abs(e - energy))


ZERO_FLOOR = 1e-7
"""Singular values of W' below this fraction of W's largest are zero (W' has rank at most r): they are drawn
on a floor line at this height, marked "zero beyond r", so the collapse is visible on the log axis."""


def _floored(values: np.ndarray, reference: float, full: int) -> tuple[np.ndarray, np.ndarray]:
    """(index from 1 to ``full``, value / reference clamped from below at :data:`ZERO_FLOOR`).

    W' is stored by its min(k_out, k_in) leading singular values; the other ``full - len(values)`` (with
    ``full = min(d_in, d_out)``) are exactly zero and are appended, so every zero sits on the floor line."""
    values = np.asarray(values, dtype=np.float64)
    if reference <= 0:
        return np.array([]), np.array([])
    padded = np.zeros(max(full, values.size))
    padded[: values.size] = values
    return np.arange(1, padded.size + 1), np.maximum(padded / reference, ZERO_FLOOR)


WPRIME_SHADES = ("#9ecae1", "#6baed6", "#3182bd", "#08519c", "#08306b")
"""W' curves from the lowest to the highest stored energy (light to dark): distinct, readable, not dotted."""


def singular_values_chart(spectrum: LayerSpectrum, energy_in: float, energy_out: float,
                          height: int = CHART_HEIGHT) -> go.Figure:
    """Singular values of W and of W' = P_out W P_in, normalized by the largest singular value of W, log y.

    W' is stored at e_in = e_out = e for e in ``WPRIME_ENERGIES``; every stored curve is drawn down to its
    zeros (on the :data:`ZERO_FLOOR` line, "zero beyond r"), the one nearest the current energies bold and
    the others solid and thinner. The vertical line marks the utilized rank r at the current energies.
    """
    fig = go.Figure()
    s = np.asarray(spectrum.w_singular, dtype=np.float64)
    top = float(s[0]) if s.size else 0.0
    x, y = _positive(s, top)
    fig.add_scatter(x=x, y=y, mode="lines+markers", name="W (trained weights)", line=dict(color="black", width=3),
                    marker=dict(size=4), hovertemplate="i = %{x}<br>s_i / s_1(W) = %{y:.3g}<extra>W</extra>")
    wanted = min(energy_in, energy_out)
    current = nearest_wprime_energy(wanted)
    for n, energy in enumerate(sorted(spectrum.wprime_singular)):
        wx, wy = _floored(spectrum.wprime_singular[energy], top, min(spectrum.d_in, spectrum.d_out))
        bold = energy == current
        # "(now)" only when the stored curve is the one at the sidebar's energy; else it is only the nearest
        tag = (" (now)" if energy == wanted else f" (nearest stored to {wanted:g})") if bold else ""
        fig.add_scatter(
            x=wx, y=wy, mode="lines+markers" if bold else "lines",
            name=f"W' at e = {energy:g}{tag}", opacity=1.0 if bold else 0.75,
            line=dict(color=kind_color(spectrum.kind) if bold else WPRIME_SHADES[n % len(WPRIME_SHADES)],
                      width=4 if bold else 1.5),
            marker=dict(size=6),
            hovertemplate=f"i = %{{x}}<br>s_i(W') / s_1(W) = %{{y:.3g}}<extra>W' e={energy:g}</extra>",
        )
    k_in = metrics.k_at_energy(spectrum.eig_in, energy_in)
    k_out = metrics.k_at_energy(spectrum.eig_out, energy_out)
    rank = metrics.utilized_rank(k_in, k_out)
    # lines without add_*line's annotations: Plotly places those at the linear value on a log axis
    fig.add_hline(y=ZERO_FLOOR, line_dash="dot", line_color="#555", line_width=2)
    fig.add_annotation(x=1.0, xref="paper", xanchor="right", y=np.log10(ZERO_FLOOR), yref="y", yanchor="bottom",
                       text="zero beyond r", showarrow=False, font=dict(size=FONT_SIZE, color="#333"))
    if spectrum.status in layer_status.UNDEFINED_K:  # zero energy: no k, so no r to mark
        fig.add_annotation(x=0.5, xref="paper", y=1.0, yref="paper", yanchor="top", showarrow=False,
                           text=f"r undefined ({spectrum.status})", font=dict(size=FONT_SIZE + 1, color="#333"))
    else:
        fig.add_vline(x=rank, line_dash="dash", line_color="#555", line_width=2)
        fig.add_annotation(x=rank, xref="x", xanchor="left", y=1.0, yref="paper", yanchor="top", text=f" r = {rank}",
                           showarrow=False, font=dict(size=FONT_SIZE + 1, color="#333"))
    fig.update_xaxes(title="index i (descending)")
    fig.update_yaxes(type="log", title="singular value / largest of W", exponentformat="power",
                     range=[np.log10(ZERO_FLOOR) - 0.5, 0.3])
    return _layout(fig, f"Singular values of W and W' — {spectrum.name}", height=height,
                   legend=dict(orientation="v", yanchor="top", y=1.0, xanchor="left", x=1.02, font=dict(size=FONT_SIZE - 1)),
                   margin=dict(l=70, r=30, t=60, b=60))


RESIDUAL_FLOOR = 1e-12
"""Energy not held below this is rounding noise (exactly 0 once every direction is kept): not drawn on log axes."""


def _eigen_curves(eigenvalues: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(eig, cumulative, residual, x, y)`` of :func:`eigen_chart`: eigenvalues clipped at 0, their cumulative
    energy and the energy not held, and the drawable (positive) eigenvalues over the largest against i."""
    eig = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    cumulative = metrics.cumulative_energy(eig)
    residual = np.clip(1.0 - cumulative, 0.0, None)
    x, y = _positive(eig, float(eig[0]) if eig.size else 0.0)
    return eig, cumulative, residual, x, y


def eigen_log_range(spectra: Sequence[np.ndarray], energies: Sequence[float] = ()) -> list[float]:
    """One range (log10 units, whole decades) for both log axes of :func:`eigen_chart`, over every spectrum
    in ``spectra`` and every threshold ``1 - e``: the C_in and C_out charts side by side then show their
    decades level with each other (each fitted alone, 10^-6 sat at different heights)."""
    lows = [np.log10(1.0 - e) for e in energies if e < 1.0]
    for eigenvalues in spectra:
        _, _, residual, _, y = _eigen_curves(eigenvalues)
        kept = residual[residual > RESIDUAL_FLOOR]
        lows += [float(np.log10(v.min())) for v in (y, kept) if v.size]
    low = np.floor(min(lows)) if lows else -12.0
    return [float(low) - 0.3, 0.3]


def eigen_chart(eigenvalues: np.ndarray, energy: float, label: str, color: str = "#1f77b4",
                height: int = CHART_HEIGHT, log_range: Sequence[float] | None = None) -> go.Figure:
    """Eigenvalues of a second moment (normalized by the largest, log, left axis) and the energy *not* held by
    the top k, ``1 - sum_{i<=k} lambda_i / sum_i lambda_i`` (log, right axis): on a log scale the threshold
    ``1 - e`` (0.01 at e = 0.99, 0.001 at e = 0.999) is clearly visible, where a linear cumulative curve
    squeezes every energy above 0.9 into the top line. The k it gives is marked. Both log axes span
    ``log_range`` (:func:`eigen_log_range`; by default this spectrum's), so their decades are level."""
    eig, cumulative, residual, x, y = _eigen_curves(eigenvalues)
    d = eig.size
    k = metrics.k_at_energy(eig, energy)
    log_range = list(log_range) if log_range is not None else eigen_log_range([eigenvalues], [energy])
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_scatter(x=x, y=y, mode="lines", name="eigenvalue / largest", line=dict(color=color, width=3),
                    hovertemplate="i = %{x}<br>λ_i / λ_1 = %{y:.3g}<extra></extra>", secondary_y=False)
    keep = residual > RESIDUAL_FLOOR
    fig.add_scatter(x=np.arange(1, d + 1)[keep], y=residual[keep], mode="lines", name="energy not held by the top k",
                    line=dict(color="black", width=2.5),
                    customdata=cumulative[keep],
                    hovertemplate="k = %{x}<br>held %{customdata:.4%}, not held %{y:.2e}<extra></extra>",
                    secondary_y=True)
    threshold = 1.0 - energy
    if threshold > 0:
        fig.add_hline(y=threshold, line_dash="dash", line_color="#c00", line_width=2, secondary_y=True)
        # inside the plot area, at its right edge above the line: "x domain" ends where the plot does (paper
        # coordinates run on under the right axis' tick labels, where a label at x = 0.97 ran into them)
        fig.add_annotation(x=1.0, xref="x domain", xanchor="right", xshift=-4, y=np.log10(threshold), yref="y2",
                           yanchor="bottom", text=f"1 − e = {threshold:.3g}", showarrow=False,
                           bgcolor="rgba(255,255,255,0.8)", font=dict(size=FONT_SIZE, color="#c00"))
    if d and cumulative[-1] > 0:
        fig.add_vline(x=k, line_dash="dash", line_color=color, line_width=2)
        fig.add_annotation(x=k, xref="x", xanchor="left", y=0.0, yref="paper", yanchor="bottom",
                           text=f" k = {k} of {d}", showarrow=False, font=dict(size=FONT_SIZE + 1, color="#222"))
    else:  # zero energy: k is undefined (analysis.status), never a number
        fig.add_annotation(x=0.5, xref="paper", y=0.5, yref="paper", showarrow=False,
                           text="zero energy: k undefined", font=dict(size=FONT_SIZE + 1, color="#222"))
    drawn = ([int(x[-1])] if len(x) else []) + ([int(np.flatnonzero(keep)[-1]) + 1] if keep.any() else [])
    last = max(drawn, default=max(d, 1))
    fig.update_xaxes(title="index i / number of directions k", **index_axis(last, k if d and cumulative[-1] > 0 else None))
    decades = log_decades_per_tick(log_range)
    fig.update_yaxes(type="log", dtick=decades, tick0=0, range=log_range, title="λ_i / λ_1", exponentformat="power",
                     secondary_y=False)
    fig.update_yaxes(type="log", dtick=decades, tick0=0, range=log_range, title="energy not held (1 − cumulative)",
                     exponentformat="power", showgrid=False, secondary_y=True)
    return _layout(fig, label, height=height)


LOG_LABELS_MOST = 7
"""At most this many labelled decades on :func:`eigen_chart`'s log axes: a label a decade apart over twelve decades
(down to the 1e-12 floor) stacked 13 superscripted labels on each side, about 20 px apart at 1280 px."""


def log_decades_per_tick(log_range: Sequence[float]) -> int:
    """Decades between labelled ticks of a log axis over ``log_range`` (log10 units): 1, 2, 3 ... so that at most
    :data:`LOG_LABELS_MOST` are labelled."""
    span = max(float(log_range[1]) - float(log_range[0]), 1.0)
    return max(1, math.ceil(span / (LOG_LABELS_MOST - 1)))


INDEX_TICK_GAP = 0.1
"""On :func:`index_axis`, a round tick closer than this fraction of the axis to 1, k or the last index is dropped."""


def index_axis(last: int, k: int | None) -> dict:
    """An index axis (1 .. ``last``, the last drawn eigenvalue) whose ticks mean something: 1, the chosen ``k`` and
    ``last`` itself (an end too close to k gives way to it), and round values between them that keep clear of those
    (the automatic ticks put "20" right beside the k line's "k = 19" and ended before the last index)."""
    last = max(int(last), 2)
    raw = (last - 1) / 5
    power = 10.0 ** math.floor(math.log10(max(raw, 1e-9)))
    step = max(1, int(next(m * power for m in (1, 2, 5, 10) if m * power >= raw)))
    clear = INDEX_TICK_GAP * (last - 1)
    k = int(k) if k is not None and 1 <= k <= last else None
    marks = [k] if k is not None else []
    marks += [m for m in (1, last) if k is None or m == k or abs(m - k) >= clear]  # k wins a tie with an end
    marks = sorted(set(marks))
    values = marks + [v for v in range(step, last, step) if all(abs(v - m) >= clear for m in marks)]
    return dict(range=[1 - 0.01 * (last - 1), last + 0.01 * (last - 1)], tickmode="array", tickvals=sorted(values),
                ticktext=[str(v) for v in sorted(values)])


R_BAND_WIDTH = 8
"""Width (px) of the r line of :func:`energy_animation`: a pale band under the k lines, so a k line on it shows."""


def energy_animation(spectrum: LayerSpectrum, current_energy: float, height: int = CHART_HEIGHT) -> go.Figure:
    """"Sweep the energy": one animation frame per stored W' energy e (``e_in = e_out = e``), showing W's
    singular values, W' collapsing onto the zero floor beyond its rank, and the vertical lines k_in(e),
    k_out(e) and r(e) moving. A Play button and a slider step through the frames in the browser."""
    s = np.asarray(spectrum.w_singular, dtype=np.float64)
    top = float(s[0]) if s.size else 0.0
    wx, wy = _positive(s, top)
    energies = sorted(spectrum.wprime_singular)
    ceiling = 1.5

    def frame_data(energy: float) -> list[go.Scatter]:
        k_in = metrics.k_at_energy(spectrum.eig_in, energy)
        k_out = metrics.k_at_energy(spectrum.eig_out, energy)
        rank = metrics.utilized_rank(k_in, k_out)
        px, py = _floored(spectrum.wprime_singular[energy], top, min(spectrum.d_in, spectrum.d_out))
        return [
            go.Scatter(x=wx, y=wy, mode="lines", name="W", line=dict(color="black", width=3)),
            go.Scatter(x=px, y=py, mode="lines+markers", name="W'", line=dict(color=kind_color(spectrum.kind), width=4),
                       marker=dict(size=6)),
            # r = min(k_in, k_out) always lies on one of the k lines: it goes first, as a wide pale band, and the
            # k lines dashed over it, so the k it equals shows through (drawn last, r hid k_out under it)
            go.Scatter(x=[rank, rank], y=[ZERO_FLOOR, ceiling], mode="lines", name=f"r = {rank}",
                       line=dict(color="#d62728", width=R_BAND_WIDTH), opacity=0.45),
            go.Scatter(x=[k_in, k_in], y=[ZERO_FLOOR, ceiling], mode="lines", name=f"k_in = {k_in}",
                       line=dict(color="#2ca02c", width=2.5, dash="dash")),
            go.Scatter(x=[k_out, k_out], y=[ZERO_FLOOR, ceiling], mode="lines", name=f"k_out = {k_out}",
                       line=dict(color="#9467bd", width=2.5, dash="dot")),
        ]

    start = nearest_wprime_energy(current_energy) if energies else None
    fig = go.Figure(data=frame_data(start) if start is not None else [])
    fig.frames = [go.Frame(data=frame_data(e), name=f"{e:g}",
                           layout=dict(title=dict(text=f"Sweep the energy: e = {e:g} — {spectrum.name}")))
                  for e in energies]
    fig.update_layout(
        updatemenus=[dict(type="buttons", direction="left", x=0.0, y=-0.2, xanchor="left", yanchor="top",
                          pad=dict(t=0, r=10), showactive=False, font=dict(size=FONT_SIZE),
                          buttons=[dict(label="▶ Play", method="animate",
                                        args=[None, dict(frame=dict(duration=1100, redraw=True), fromcurrent=True,
                                                         transition=dict(duration=300))]),
                                   dict(label="❚❚ Pause", method="animate",
                                        args=[[None], dict(frame=dict(duration=0, redraw=False), mode="immediate")])])],
        sliders=[dict(active=energies.index(start) if start is not None else 0, x=0.3, y=-0.12, len=0.7,
                      currentvalue=dict(prefix="e = ", font=dict(size=FONT_SIZE), xanchor="right", offset=8),
                      font=dict(size=FONT_SIZE - 1), pad=dict(t=10, b=0),
                      steps=[dict(label=f"{e:g}", method="animate",
                                  args=[[f"{e:g}"], dict(mode="immediate", frame=dict(duration=0, redraw=True))])
                             for e in energies])],
    )
    fig.update_xaxes(title="index i (descending)", range=[0, max(len(s), 1) + 1])
    fig.update_yaxes(type="log", title="singular value / largest of W", exponentformat="power",
                     range=[np.log10(ZERO_FLOOR) - 0.5, np.log10(ceiling)])
    title = f"Sweep the energy: e = {start:g} — {spectrum.name}" if start is not None else "Sweep the energy"
    return _layout(fig, title, height=height + 80, margin=dict(l=70, r=30, t=110, b=150))


# ------------------------------------------------------------------------------------------ Compare
def short_layer_names(names: Sequence[str]) -> list[str]:
    """Layer names for a narrow axis: when most names start with one container and a block number
    (``blocks.3.mlp.fc1``), that container is dropped (``3.mlp.fc1``); other names are kept whole."""
    heads = [name.split(".", 2) for name in names]
    numbered = [h[0] for h in heads if len(h) > 2 and h[1].isdigit()]
    common = max(set(numbered), key=numbered.count) if numbered else None
    if common is None or numbered.count(common) < len(names) / 2:
        return list(names)
    return [name[len(common) + 1:] if name.startswith(common + ".") else name for name in names]


def _layer_axis(fig: go.Figure, layers: Sequence[str], short: bool, most: int = 30, **kwargs) -> None:
    """A categorical layer axis in depth order, with :func:`short_layer_names` ticks when ``short``, at most
    ``most`` of them (every k-th layer), so that the labels never run into each other."""
    layers = list(layers)
    names = short_layer_names(layers) if short else layers
    step = max(1, -(-len(layers) // most))
    fig.update_xaxes(categoryorder="array", categoryarray=layers, title="layer (depth order)", tickmode="array",
                     tickvals=layers[::step], ticktext=names[::step], **kwargs)


def _block_axis(fig: go.Figure, layers: Sequence[str]) -> None:
    """A categorical layer axis in depth order ticked once per block, at its first layer (``block 3``), and at
    each layer outside the blocks; for charts too narrow for every layer's name (the hover has them)."""
    layers = list(layers)
    short = short_layer_names(layers)
    vals, texts, places, blocks = [], [], [], []
    for place, (layer, name) in enumerate(zip(layers, short)):
        head = name.split(".", 1)[0]
        is_block = name != layer and head.isdigit()
        text = f"block {head}" if is_block else layer.split(".", 1)[0]
        if text in texts:
            continue  # only the first layer of each block (or of each top-level module)
        if places and place - places[-1] < 2:  # adjacent angled labels overprint: keep one, a block's first
            if not is_block or blocks[-1]:
                continue
            vals.pop(), texts.pop(), places.pop(), blocks.pop()
        vals.append(layer)
        texts.append(text)
        places.append(place)
        blocks.append(is_block)
    fig.update_xaxes(categoryorder="array", categoryarray=layers, tickmode="array", tickvals=vals, ticktext=texts,
                     tickangle=-45, title="layer (depth order; ticks at each block's first layer)")


def analysis_color(i: int) -> str:
    return ANALYSIS_COLORS[i % len(ANALYSIS_COLORS)]


def compare_lines(per_layer: pd.DataFrame, labels: Sequence[str], height: int = CHART_HEIGHT,
                  names: Sequence[str] | None = None) -> go.Figure:
    """Per-layer utilization of each analysis overlaid, layers in depth order (rows of ``per_layer``); the
    legend shows ``names`` (short, e.g. ``A · supervised``: one legend row) or the labels themselves."""
    fig = go.Figure()
    for i, label in enumerate(labels):
        fig.add_scatter(
            x=per_layer["layer"], y=per_layer[label], mode="lines+markers",
            name=names[i] if names is not None else label,
            line=dict(color=analysis_color(i), width=2), marker=dict(size=6), connectgaps=False,
            customdata=per_layer[["layer"]].to_numpy(),
            hovertemplate="%{customdata[0]}<br>utilization %{y:.1%}<extra>" + label + "</extra>",
        )
    _block_axis(fig, per_layer["layer"])
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%", title="utilization")
    return _layout(fig, "Utilization per layer, overlaid", height=height)


def mlu_bars(summary: pd.DataFrame, captions: Sequence[str] | None = None, height: int = CHART_HEIGHT) -> go.Figure:
    """MLU of each analysis (bars, in selection order). Labels ``"A: ..."`` show as their letter on the axis,
    followed by ``captions`` (one short word or two, e.g. the regime: ``MAE``) on a second line; each bar is
    labelled with its MLU and split-half error bar."""
    fig = go.Figure()
    names = list(summary["analysis"])
    letters = [name.split(":", 1)[0] for name in names]
    ticks = [f"<b>{letter}</b><br>{cap.replace(' ', '<br>')}" if cap else f"<b>{letter}</b>"
             for letter, cap in zip(letters, captions or [""] * len(names))]
    errors = summary["mlu_err"].astype(float) if "mlu_err" in summary else pd.Series(np.nan, index=summary.index)
    fig.add_bar(
        x=ticks, y=summary["mlu"],
        error_y=dict(type="data", array=errors.fillna(0.0).to_numpy(), visible=bool(errors.notna().any()),
                     color="#333", thickness=2, width=8),
        marker_color=[analysis_color(i) for i in range(len(summary))],
        text=[f"{v:.1%}" for v in summary["mlu"]], textposition="outside", textfont=dict(size=FONT_SIZE + 1),
        cliponaxis=False, constraintext="none",  # every MLU at one size, never shrunk to a narrow bar's width
        customdata=np.column_stack([np.array(names, dtype=object), errors.map(lambda e: numbers.error_bar(e) or "none")]),
        hovertemplate="%{customdata[0]}<br>MLU %{y:.1%} %{customdata[1]}<extra></extra>",
    )
    top = float(np.nanmax(summary["mlu"])) if len(summary) else 1.0
    # a short axis title and narrow side margins: the bars' width is what keeps the captions under them apart
    # (in presentation mode "supervised" and "MAE" ran together)
    fig.update_yaxes(range=[0, min(1.05, max(0.1, top * 1.25))], tickformat=".0%", title="MLU")
    fig.update_xaxes(tickangle=0, automargin=True)
    return _layout(fig, "MLU per analysis", showlegend=False, height=height, margin=dict(l=60, r=10, t=60, b=60))


def delta_bars(per_layer: pd.DataFrame, labels: Sequence[str], height: int = LAYER_BARS_HEIGHT) -> go.Figure:
    """Per-layer utilization difference of each analysis to the first one, in percentage points
    (``100 (u - u_first)``)."""
    fig = go.Figure()
    for i, label in enumerate(labels[1:], start=1):
        column = f"{label} - {labels[0]}"
        fig.add_bar(x=per_layer["layer"], y=100 * per_layer[column], name=f"{label.split(':', 1)[0]} minus "
                    f"{labels[0].split(':', 1)[0]}", marker_color=analysis_color(i),
                    customdata=[numbers.difference_pp(v) for v in per_layer[column].astype(float)],
                    hovertemplate="%{x}<br>difference %{customdata}<extra>" + label + "</extra>")
    fig.add_hline(y=0, line_color="black", line_width=1)
    _layer_axis(fig, per_layer["layer"], short=True, tickangle=-60)
    differences = [100 * per_layer[f"{label} - {labels[0]}"].astype(float) for label in labels[1:]]
    values = np.concatenate([d.to_numpy() for d in differences]) if differences else np.array([])
    values = values[np.isfinite(values)]
    low, high = (float(values.min()), float(values.max())) if values.size else (-1.0, 1.0)
    fig.update_yaxes(title=f"difference to {labels[0].split(':', 1)[0]} (percentage points)",
                     **signed_axis(low, high, " pp"))
    return _layout(fig, "Per-layer difference to the first analysis (percentage points)", barmode="group",
                   height=height)


# ------------------------------------------------------------------------------------------ Compress
def compression_sweep_chart(sweep: pd.DataFrame, current_energy: float | None) -> go.Figure:
    """Parameters kept, MLU (left, fractions) and mean preservation error (right, log) against the energy
    ``e = e_in = e_out``; energies on an even (categorical) axis because the grid is dense near 1."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = [f"{e:g}" for e in sweep["energy"]]
    fig.add_scatter(x=x, y=sweep["kept"], mode="lines+markers", name="parameters kept",
                    line=dict(color="#4c78a8", width=3), hovertemplate="e = %{x}<br>kept %{y:.1%}<extra></extra>",
                    secondary_y=False)
    fig.add_scatter(x=x, y=sweep["mlu"], mode="lines+markers", name="MLU",
                    line=dict(color="#54a24b", width=2), hovertemplate="e = %{x}<br>MLU %{y:.1%}<extra></extra>",
                    secondary_y=False)
    error = sweep["mean_error"].where(sweep["mean_error"] > ZERO_ERROR)  # below: rounding noise, exactly 0 in theory
    fig.add_scatter(x=x, y=error, mode="lines+markers", name="mean preservation error",
                    line=dict(color="#e45756", width=2, dash="dot"),
                    hovertemplate="e = %{x}<br>mean error %{y:.2e}<extra></extra>", secondary_y=True)
    energies = [float(e) for e in sweep["energy"]]
    if current_energy is not None and current_energy in energies:
        # on a category axis a shape's x is the category's position, not its label
        fig.add_vline(x=energies.index(current_energy), line_dash="dash", line_color="grey",
                      annotation_text=f"now: e = {current_energy:g}", annotation_position="top left")
    fig.update_xaxes(type="category", title="energy e (e_in = e_out)", tickangle=-60)
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%", title="fraction", secondary_y=False)
    fig.update_yaxes(type="log", dtick=1, title="mean preservation error", exponentformat="power", showgrid=False,
                     secondary_y=True)
    return _layout(fig, "Parameters kept and preservation error against energy")


def savings_bars(table: pd.DataFrame) -> go.Figure:
    """Fraction of each layer's parameters kept if it were factorized at its utilized rank, by kind colour."""
    fig = go.Figure()
    kept = table["params_factorized"] / table["params_dense"]
    frame = table.assign(kept=kept)
    for kind in kinds_in_order(frame["kind"]):
        sub = frame[frame["kind"] == kind]
        fig.add_bar(
            x=sub["layer"], y=sub["kept"], name=kind_label(kind),
            marker=dict(color=kind_color(kind),
                        pattern=dict(shape=["" if counted else "/" for counted in sub["in_mlu"]])),
            customdata=_layer_customdata(sub),
            hovertemplate="<b>%{customdata[0]}</b><br>kept %{y:.1%}: %{customdata[7]} of %{customdata[6]}<br>"
                          "rank r %{customdata[5]}<extra></extra>",
        )
    fig.add_hline(y=1.0, line_color="black", line_width=1)
    label_line(fig, 1.0, "dense<br>(100 %)")  # the reference says what it is: nothing saved
    fig.update_xaxes(categoryorder="array", categoryarray=list(table["layer"]), tickangle=-60, title="layer (depth order)")
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%", title="parameters kept (factorized / dense)")
    return legend_under_title(_layout(fig, "Parameters kept per layer at the current energies",
                                      height=LAYER_BARS_HEIGHT, margin={**_MARGIN, "r": LINE_LABEL_MARGIN}))


def _fitted_range(low: float, high: float, floor: float, ceiling: float, min_pad: float) -> list[float]:
    """``[low, high]`` padded by a tenth of its span (at least ``min_pad``), clipped to ``[floor, ceiling]``."""
    pad = max(min_pad, 0.1 * (high - low))
    return [max(floor, low - pad), min(ceiling, high + pad)]


def compression_accuracy_chart(points: pd.DataFrame) -> go.Figure:
    """Top-1 against parameters kept, from :func:`analysis.compression.summaries.accuracy_points`.

    One colour per evaluation set; points are connected only within a set (factorized runs, by parameters
    kept); fine-tuned runs are diamonds; every point has its Wilson 95 % interval as an error bar; each
    set's dense top-1 is a dashed reference line. Axes are fitted to the points, intervals and references.
    """
    fig = go.Figure()
    runs = points[points["stage"] != "dense"]
    sets = list(dict.fromkeys(points["evaluation_set"]))
    for i, label in enumerate(sets):
        color = analysis_color(i)
        for stage, mode, marker in (("factorized", "lines+markers", dict(size=8)),
                                    ("fine-tuned", "markers", dict(size=11, symbol="diamond"))):
            part = runs[(runs["evaluation_set"] == label) & (runs["stage"] == stage)].sort_values("kept_fraction")
            if part.empty:
                continue
            fig.add_scatter(
                x=part["kept_fraction"], y=part["top1"], mode=mode, name=stage, legendgroup=label,
                legendgrouptitle_text=label, line=dict(color=color, width=2), marker=dict(color=color, **marker),
                error_y=dict(type="data", symmetric=False, array=part["high"] - part["top1"],
                             arrayminus=part["top1"] - part["low"], color=color, thickness=1.2),
                customdata=part[["text", "energy_in", "energy_out", "finetune_steps"]].to_numpy(),
                hovertemplate=("kept %{x:.1%}<br>top-1 %{customdata[0]}<br>e_in %{customdata[1]}, e_out "
                               "%{customdata[2]}, fine-tune %{customdata[3]} steps<extra>" + label + "</extra>"),
            )
        dense = points[(points["evaluation_set"] == label) & (points["stage"] == "dense")]
        for _, row in dense.iterrows():
            fig.add_hline(y=row["top1"], line_dash="dash", line_color=color,
                          annotation_text=f"dense {row['text']}", annotation_position="top left",
                          annotation_font_color=color)
    kept = runs["kept_fraction"] if len(runs) else pd.Series([1.0])
    x_range = _fitted_range(float(kept.min()), float(kept.max()), 0.0, 1.05, 0.02)
    fig.update_xaxes(range=x_range, title="parameters kept (counted layers, factorized where smaller)",
                     **percent_axis(*x_range))
    y_range = _fitted_range(float(points["low"].min()), float(points["high"].max()), 0.0, 1.02, 0.01) \
        if len(points) else [0.0, 1.0]
    fig.update_yaxes(range=y_range, title="top-1 (95 % Wilson interval)", **percent_axis(*y_range))
    return _layout(fig, "Top-1 against parameters kept")


# ------------------------------------------------------------------------------------------ Learn
def learn_points_chart(points: np.ndarray, vectors: np.ndarray, values: np.ndarray, k: int) -> go.Figure:
    """The Learn page's picture: 2-D points (rows of ``points``), the eigen-directions of their second moment
    ``C = X^T X`` (columns of ``vectors``, eigenvalues ``values`` descending) drawn as axes through the origin,
    ``+-2.5 sqrt(lambda_i / N)`` long each way (an eigenvector has no sign; drawn one way from the origin, a
    direction with 2 % of the energy was a stub hidden where the points and the main axis cross), arrow-headed
    at both ends, over a thin dotted guide of the direction across the whole cloud (so a short arrow's direction
    still shows); the ``k`` kept directions solid red, the others dashed dark grey."""
    fig = go.Figure()
    fig.add_scatter(x=points[:, 0], y=points[:, 1], mode="markers", name="inputs x",
                    marker=dict(size=6, color="#4c78a8", opacity=0.55))
    scale = np.sqrt(np.clip(values, 0, None) / max(len(points), 1))
    reach = float(np.abs(points).max()) if len(points) else 1.0
    for i in range(len(values)):
        end = 2.5 * scale[i] * vectors[:, i]
        kept = i < k
        # the direction itself, thin across the whole cloud: an arrow of 2 % of the energy is a short stub
        guide = reach * vectors[:, i]
        fig.add_scatter(x=[-guide[0], guide[0]], y=[-guide[1], guide[1]], mode="lines", showlegend=False,
                        hoverinfo="skip",
                        line=dict(color="#d62728" if kept else "#333", width=1, dash="dot"))
        fig.add_scatter(x=[0, end[0], None, 0, -end[0]], y=[0, end[1], None, 0, -end[1]], mode="lines+markers",
                        name=f"direction {i + 1}: {values[i] / values.sum():.1%} of the energy" + (" (kept)" if kept else ""),
                        line=dict(color="#d62728" if kept else "#333", width=5 if kept else 3, dash=None if kept else "dash"),
                        marker=dict(size=[0, 12, 0, 0, 12], symbol="arrow", angleref="previous"))
    fig.update_xaxes(title="x₁", zeroline=True, scaleanchor="y", scaleratio=1)
    fig.update_yaxes(title="x₂", zeroline=True)
    return _layout(fig, "Inputs x and their directions", height=480)


def learn_energy_chart(values: np.ndarray, energy: float) -> go.Figure:
    """Cumulative energy of the eigenvalues against k (bars), with the threshold e and the resulting k."""
    cumulative = metrics.cumulative_energy(values)
    k = metrics.k_at_energy(values, energy)
    fig = go.Figure()
    fig.add_bar(x=[str(i) for i in range(1, len(values) + 1)], y=cumulative, name="energy held by the top k",
                marker_color=["#d62728" if i < k else "#bbb" for i in range(len(values))],
                text=[f"{c:.1%}" for c in cumulative], textposition="outside", cliponaxis=False,
                # never shrunk to its bar's width: "100.0%" was drawn smaller than "97.9%" beside it
                constraintext="none", textfont=dict(size=FONT_SIZE))
    fig.add_hline(y=energy, line_dash="dash", line_color="black")
    label_line(fig, energy, f"e = {energy:g}")
    fig.update_xaxes(title="k (directions kept)", type="category")
    fig.update_yaxes(range=[0, 1.15], tickformat=".0%", title="energy held")
    return _layout(fig, f"Energy held: k(e) = {k}", showlegend=False, height=480, margin={**_MARGIN, "r": 95})
