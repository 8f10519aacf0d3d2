"""Notebook views of results: the Result's own HTML and the analysis.plots figures, which are the app's
chart builders (ui.charts is analysis.plots.charts)."""

from __future__ import annotations

from html import escape

import numpy as np
import pytest
import torch
from torch import nn

from analysis import analyze, plots
from tests.helpers import TINY_VIT


def _traces(figure) -> str:
    import json

    from plotly.utils import PlotlyJSONEncoder

    return json.dumps(figure.to_plotly_json()["data"], cls=PlotlyJSONEncoder, sort_keys=True)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))
    a = analyze(TINY_VIT, "fashion-mnist:test", samples=32, cache_dir=cache)
    b = analyze(TINY_VIT, "digits", samples=32, cache_dir=cache)
    return a, b


def test_the_app_draws_with_the_library_builders():
    import ui
    from ui import charts, timeline_charts

    assert charts is plots.charts and timeline_charts is plots.timeline_charts and ui.charts is plots.charts
    from ui.charts import utilization_bars

    assert utilization_bars is plots.charts.utilization_bars


def test_plots_are_the_page_charts_of_the_result(results):
    a, b = results
    figure = plots.utilization(a)
    page = plots.charts.utilization_bars(a.layers, a.mlu, None, mlu_err=a.mlu_err)
    assert _traces(figure) == _traces(page)
    assert "all tokens" in figure.layout.title.text
    layer = a.layers.loc[a.layers["in_mlu"], "layer"].iloc[0]
    spectra = plots.spectra(a, layer)
    names = [t.name or "" for t in spectra.data]
    assert any(n.startswith("W ") for n in names) and any(n.startswith("W'") for n in names)
    assert plots.eigenvalues(a, layer, side="out").data
    compared = plots.compare([a, b], labels=["fmnist", "digits"])
    assert [t.name for t in compared.data] == ["fmnist", "digits"]
    assert list(compared.data[0].y) == list(a.layers["utilization"])
    bars = plots.compare_mlu([a, b], labels=["fmnist", "digits"])
    assert list(bars.data[0].y) == [a.mlu, b.mlu]
    with pytest.raises(ValueError, match="1 labels for 2 results"):
        plots.compare([a, b], labels=["x"])


def test_a_result_shows_itself_in_a_notebook(results):
    a, _ = results
    html = a._repr_html_()
    counts = a.status_counts()
    assert f"MLU {100 * a.mlu:.1f}%" in html and f"&plusmn; {100 * a.mlu_err:.1f} pp" in html
    assert escape(a.meta.model_id) in html and "fashion-mnist:test, 32 images" in html and a.key in html
    assert f"{counts['ok']} ok" in html and sum(counts.values()) >= len(a.spectra)
    assert repr(a).startswith(f"Result(model='{a.meta.model_id}'") and "mlu=" in repr(a)
    torch.manual_seed(0)
    unstored = analyze(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), (b for b in [torch.randn(8, 3, 2, 2)]))
    assert "not stored: not stored in the cache: a one-shot iterator" in unstored._repr_html_()


def test_a_timeline_plots_its_mlu_and_layer_groups_against_step(results):
    from analysis.timeline import Checkpoint, Timeline

    a, b = results
    points = [Checkpoint("run", "init", "m0", step=0, accuracy={"linear_probe_top1": 0.1}),
              Checkpoint("run", "final", "m1", step=100, accuracy={"linear_probe_top1": 0.8})]
    series = Timeline(points=points, results=[a, b], errors=[None, None], dataset="fashion-mnist:test")
    figure = plots.timeline(series, names={"run": "my run"})
    mlu = next(t for t in figure.data if t.name == "my run")
    assert list(mlu.y) == [a.mlu, b.mlu]
    groups = plots.timeline_groups(series)
    assert {t.name for t in groups.data} == {"run"} and len(groups.data) == series.groups()["kind"].nunique()


def _label_width(note) -> float:
    """A generous width in px of an annotation's longest line: 0.6 em a character (tags dropped), plus its shift."""
    import re

    lines = re.sub(r"<(?!br)[^>]*>", "", note.text).split("<br>")
    return 0.6 * note.font.size * max(len(line) for line in lines) + abs(note.xshift or 0)


def test_line_labels_sit_beside_the_plot_where_nothing_can_cover_them(results):
    """A horizontal line's label beside bars sits in the right margin, outside the plot area, and the margin is
    wide enough for it, in presentation mode too: inside, the MLU label sat on whichever bar was under it."""
    from ui import charts

    a, _ = results
    beside = [("MLU", plots.utilization(a))]
    beside += [("e = ", charts.learn_energy_chart(np.array([3.0, 1.0]), e)) for e in (0.8, 0.9, 0.95, 0.99, 0.999)]
    for start, built in beside:
        for figure in (built, charts.for_projector(built)):
            note = next(n for n in figure.layout.annotations if start in n.text)
            assert note.xref == "x domain" and note.x >= 1.0 and note.xanchor == "left", start
            assert figure.layout.margin.r >= _label_width(note), (start, figure.layout.margin.r, _label_width(note))


def test_the_eigenvalue_threshold_label_stays_inside_its_plot_area(results):
    """The eigenvalue chart has a right axis whose tick labels lie beyond its plot area: "1 − e" sits inside
    the plot area, at its right edge (at x = 0.97 of the paper it ran into those tick labels)."""
    from ui import charts

    a, _ = results
    spectrum = a.layer(a.layers.loc[a.layers["in_mlu"], "layer"].iloc[0])
    for energy in (0.9, 0.99, 0.999):
        for figure in (charts.eigen_chart(spectrum.eig_in, energy, "C_in"),
                       charts.for_projector(charts.eigen_chart(spectrum.eig_out, energy, "C_out"))):
            note = next(n for n in figure.layout.annotations if n.text.startswith("1 − e"))
            assert note.xref == "x domain" and note.x <= 1.0 and note.xanchor == "right", note


def test_the_energy_sweeps_play_buttons_and_slider_grow_with_the_projectors_text(results):
    """Presentation mode scales every text of a chart: the animation's Play / Pause buttons and its slider too
    (they stayed at the normal size beside the larger axes)."""
    from ui import charts

    a, _ = results
    sweep = charts.energy_animation(a.layer(a.layers["layer"].iloc[1]), 0.99)
    big = charts.for_projector(sweep)
    assert [b.label for b in big.layout.updatemenus[0].buttons] == ["▶ Play", "❚❚ Pause"]
    assert big.layout.updatemenus[0].font.size == round(sweep.layout.updatemenus[0].font.size * charts.PROJECTOR_SCALE)
    assert big.layout.sliders[0].font.size == round(sweep.layout.sliders[0].font.size * charts.PROJECTOR_SCALE)
    assert big.layout.sliders[0].currentvalue.font.size > sweep.layout.sliders[0].currentvalue.font.size
    assert big.layout.sliders[0].currentvalue.prefix == "e = "  # only the fonts change
    assert big.layout.font.size == round(sweep.layout.font.size * charts.PROJECTOR_SCALE)


def _depth_rows(layers: int, checkpoints: int = 3):
    import pandas as pd

    return pd.DataFrame([dict(series="run", layer=f"blocks.{i // 4}.part{i % 4}", depth=i, checkpoint=f"c{j}",
                              step=10 * j, utilization=0.1 + 0.01 * i) for i in range(layers) for j in range(checkpoints)])


def test_the_depth_step_heatmap_names_every_layer_with_room_for_each_name():
    """Every layer is named on the heatmap's axis, in depth order (Plotly's automatic category ticks named every
    other one), with a row tall enough for its name in presentation mode too; a very deep model gets every k-th
    name and the axis title says so."""
    from ui import charts, timeline_charts as tc

    rows = _depth_rows(26)
    order = list(rows.drop_duplicates("layer")["layer"])
    for figure in (tc.depth_step_heatmap(rows, "run"), charts.for_projector(tc.depth_step_heatmap(rows, "run"))):
        axis = figure.layout.yaxis
        assert axis.tickmode == "array" and list(axis.tickvals) == order and list(axis.ticktext) == order
        assert axis.title.text == "layer (depth order)"
        margin = figure.layout.margin
        row = (figure.layout.height - margin.t - margin.b) / len(order)
        assert row >= axis.tickfont.size + 2, (row, axis.tickfont.size)
    deep = _depth_rows(130, checkpoints=2)
    names = list(deep.drop_duplicates("layer")["layer"])
    axis = tc.depth_step_heatmap(deep, "run").layout.yaxis
    assert list(axis.tickvals) == names[::3] and "every 3rd named" in axis.title.text
    late = _depth_rows(4, checkpoints=2).assign(step=lambda t: t["step"] * 585)  # steps 0 and 5,850
    assert list(tc.depth_step_heatmap(late, "run").data[0].x) == ["step 0", "step 5,850"]  # as the page writes steps


def test_the_selected_bars_outline_stays_out_of_the_legend(results):
    """The selected layer's bar is outlined by a rectangle over it, not by its bar's own outline: Plotly draws a
    bar trace's legend swatch with its first bar's outline, so selecting a kind's first layer outlined that kind's
    legend entry ("attention q,k,v" in black)."""
    from ui import charts

    a, _ = results
    table = a.layers
    for place, selected in enumerate(table["layer"]):
        figure = plots.utilization(a, selected)
        for trace in figure.data:
            width = trace.marker.line.width
            assert not width or not any(np.atleast_1d(width)), (selected, trace.name)
        outline = [s for s in figure.layout.shapes if s.name == "selected"]
        assert len(outline) == 1, selected
        box = outline[0]
        assert box.xref == "x" and box.yref == "y" and box.line.width == charts.SELECTED_OUTLINE["width"]
        assert box.x0 < place < box.x1 and box.x1 - box.x0 == pytest.approx(1.0 - figure.layout.bargap)
        assert box.y0 == 0.0 and box.y1 == pytest.approx(table["utilization"].iloc[place])
    assert not [s for s in plots.utilization(a).layout.shapes if s.name == "selected"]  # nothing selected


def test_the_difference_charts_zero_tick_has_no_sign(results):
    """The per-layer difference chart labels its ticks with their sign, but zero reads "0 pp" (a signed format
    wrote "+0 pp"); the ticks are round steps covering every difference."""
    from analysis.compare import compare_results
    from ui import charts

    a, b = results
    summary, per_layer = compare_results([a, b])
    labels = list(summary["analysis"])
    axis = charts.delta_bars(per_layer, labels).layout.yaxis
    assert axis.tickmode == "array" and not axis.tickformat
    ticks = dict(zip(axis.tickvals, axis.ticktext))
    assert ticks[0] == "0 pp"
    assert all(t.startswith("+") for v, t in ticks.items() if v > 0)
    assert all(t.startswith("−") for v, t in ticks.items() if v < 0)
    differences = 100 * per_layer[f"{labels[1]} - {labels[0]}"].dropna()
    assert min(axis.tickvals) <= min(0, differences.min()) and max(axis.tickvals) >= max(0, differences.max())
    assert charts.signed_axis(-12.3, 4.1, " pp")["ticktext"] == ["−15 pp", "−10 pp", "−5 pp", "0 pp", "+5 pp"]
    assert charts.signed_axis(0.0, 0.0, " pp")["ticktext"] == ["0 pp"]


def test_every_charts_axis_titles_are_dark(results):
    """Every axis title of every chart builder keeps the shared dark title font (the Timeline heatmap's layer axis
    title was given whole after the shared layout, which dropped its font: Streamlit drew it faded grey)."""
    from analysis.compare import compare_results
    from analysis.timeline import Checkpoint, Timeline
    from ui import charts, tables, timeline_charts as tc

    a, b = results
    layer = a.layers.loc[a.layers["in_mlu"], "layer"].iloc[0]
    spectrum = a.layer(layer)
    summary, per_layer = compare_results([a, b])
    labels = list(summary["analysis"])
    points = [Checkpoint("run", "init", "m0", step=0, accuracy={"linear_probe_top1": 0.1}),
              Checkpoint("run", "final", "m1", step=100, accuracy={"linear_probe_top1": 0.8})]
    series = Timeline(points=points, results=[a, b], errors=[None, None], dataset="fashion-mnist:test")
    figures = {
        "bars": charts.utilization_bars(a.layers, a.mlu, layer), "heatmap": charts.block_kind_heatmap(a.layers, layer),
        "singular": charts.singular_values_chart(spectrum, 0.99, 0.99), "eigen": charts.eigen_chart(spectrum.eig_in, 0.99, "C_in"),
        "sweep": charts.energy_animation(spectrum, 0.99), "lines": charts.compare_lines(per_layer, labels),
        "mlu": charts.mlu_bars(summary), "delta": charts.delta_bars(per_layer, labels),
        "savings": charts.savings_bars(a.layers), "compress": charts.compression_sweep_chart(tables.energy_sweep(a), 0.99),
        "learn": charts.learn_energy_chart(np.array([3.0, 1.0]), 0.9),
        "story": tc.story_chart(series.table), "groups": tc.groups_chart(series.groups()),
        "depth": tc.depth_step_heatmap(series.layers(), "run"), "probe": tc.mlu_vs_probe(series.table),
    }
    for name, figure in figures.items():
        for projector in (False, True):
            shown = charts.for_projector(figure) if projector else figure
            axes = []
            shown.for_each_xaxis(axes.append)
            shown.for_each_yaxis(axes.append)
            for axis in axes:
                if axis.title.text:
                    assert axis.title.font.color == "#222", (name, axis.title.text)


def test_bar_labels_keep_one_size_in_presentation_mode():
    """Labels over bars are never shrunk to their bar's width (Plotly's default): on the Learn page in
    presentation mode "100.0%" was drawn smaller than "97.9%" beside it. One explicit size, grown by the
    projector's scale like every other text."""
    import pandas as pd

    from ui import charts

    summary = pd.DataFrame({"analysis": ["A: x", "B: y"], "mlu": [0.2, 0.31], "mlu_err": [0.01, 0.01]})
    for figure in (charts.learn_energy_chart(np.array([47.0, 1.0]), 0.99), charts.mlu_bars(summary, ["a", "b"])):
        for shown in (figure, charts.for_projector(figure)):
            bars = [t for t in shown.data if t.type == "bar" and t.text is not None]
            assert bars and all(t.constraintext == "none" and t.textfont.size for t in bars)
        assert charts.for_projector(figure).data[0].textfont.size == round(figure.data[0].textfont.size
                                                                             * charts.PROJECTOR_SCALE)


def test_the_c_in_and_c_out_charts_share_their_log_range(results):
    """Side by side, the eigenvalue charts of C_in and C_out span one log range (whole decades, every curve and
    threshold inside it) on both of their axes, so their decades are level: each fitted alone, 10^-6 sat at
    different heights. The Spectra page passes that range to both."""
    from ui import charts

    a, _ = results
    spectrum = a.layer(a.layers.loc[a.layers["in_mlu"], "layer"].iloc[0])
    shared = charts.eigen_log_range([spectrum.eig_in, spectrum.eig_out], [0.99, 0.999])
    assert shared[1] > 0 and (shared[0] + 0.3) == int(shared[0] + 0.3)
    drawn = []
    for eig, energy in ((spectrum.eig_in, 0.99), (spectrum.eig_out, 0.999)):
        figure = charts.eigen_chart(eig, energy, "C", log_range=shared)
        assert list(figure.layout.yaxis.range) == shared and list(figure.layout.yaxis2.range) == shared
        drawn += [np.log10(np.asarray(t.y, dtype=float)) for t in figure.data]
        alone = charts.eigen_chart(eig, energy, "C").layout.yaxis
        assert alone.range is not None and alone.range[0] >= shared[0]  # alone: its own (possibly shorter) range
    values = np.concatenate(drawn)
    assert shared[0] <= values.min() and values.max() <= shared[1]
    assert shared[0] <= np.log10(1 - 0.999)


def test_the_sweeps_k_lines_show_over_the_r_line_they_equal(results):
    """r = min(k_in, k_out) always lies on one of the k lines: the energy sweep draws r first, as a wide pale
    band, and both k lines over it, narrower and dashed, so the k that equals r stays visible (drawn last, the
    r line hid k_out)."""
    from ui import charts

    a, _ = results
    spectrum = a.layer(a.layers.loc[a.layers["in_mlu"], "layer"].iloc[0])
    figure = charts.energy_animation(spectrum, 0.99)
    for data in [figure.data] + [frame.data for frame in figure.frames]:
        names = [t.name.split(" = ")[0] for t in data]
        r, k_in, k_out = (names.index(n) for n in ("r", "k_in", "k_out"))
        assert r < k_in and r < k_out
        band = data[r]
        assert band.x[0] in (data[k_in].x[0], data[k_out].x[0])  # r equals one of the k
        for k in (data[k_in], data[k_out]):
            assert k.line.dash and k.line.width < band.line.width
        assert data[k_in].line.dash != data[k_out].line.dash


def test_kind_legends_hang_under_the_title_and_take_only_the_rows_they_need(results):
    """A bar-per-layer chart's kind legend wraps into three rows at 1280 px in presentation mode but fits one at
    1920 px: a top margin sized for three rows (150 px) left about 40 px empty under the title there. The legend
    now hangs from just under the title in container coordinates, where Plotly reserves above the plot exactly
    the rows it draws; the margin itself holds the title and one row, in both modes. Compress's 100 % reference
    line says what it is, beside the plot like the MLU's label."""
    from ui import charts

    a, _ = results
    assert a.layers["kind"].nunique() >= 5  # three rows at two a row: the old margin's case
    savings = charts.savings_bars(a.layers)
    for figure in (charts.utilization_bars(a.layers, a.mlu, None), savings):
        for shown in (figure, charts.for_projector(figure)):
            legend, layout = shown.layout.legend, shown.layout
            assert legend.yref == "container" and legend.yanchor == "top" and legend.orientation == "h"
            top_px = (1 - legend.y) * layout.height
            title_px = (1 - layout.title.y) * layout.height + 1.3 * layout.title.font.size
            assert title_px + 4 <= top_px <= title_px + 12, (title_px, top_px)  # just under the title
            one_row = 1.5 * legend.font.size
            assert top_px + one_row <= layout.margin.t <= top_px + one_row + 20, (layout.margin.t, top_px)
    note = next(n for n in savings.layout.annotations if "dense" in n.text)
    assert note.y == 1.0 and note.xref == "x domain" and note.x >= 1.0 and "100 %" in note.text
    assert savings.layout.margin.r >= _label_width(note)


def test_learn_directions_are_axes_through_the_points_and_the_dropped_one_is_dark():
    """Each eigen-direction is drawn both ways from the origin (no sign), so a direction with 2 % of the energy
    is not a stub hidden under the main one where the points cross; the dropped one is dark grey, not pale."""
    from analysis.plots import charts
    from ui import learn

    points = learn.synthetic_inputs(0.15)
    values, vectors = learn.eigen(points)
    fig = charts.learn_points_chart(points, vectors, values, k=1)
    dropped = [t for t in fig.data if t.name and t.name.startswith("direction 2")][0]
    x, y = np.array(dropped.x, dtype=float), np.array(dropped.y, dtype=float)
    assert x[1] == pytest.approx(-x[4]) and y[1] == pytest.approx(-y[4]) and np.hypot(x[1], y[1]) > 0
    assert dropped.line.color == "#333" and dropped.line.dash == "dash"
    guide = [t for t in fig.data if t.showlegend is False and t.line.color == "#333"][0]
    reach = float(np.abs(points).max())
    length = float(np.hypot(guide.x[1], guide.y[1]))
    assert length == pytest.approx(reach) and length > 3 * np.hypot(x[1], y[1])  # across the cloud
    kept = [t for t in fig.data if t.name and t.name.startswith("direction 1")][0]
    assert kept.line.color == "#d62728" and list(kept.marker.size) == [0, 12, 0, 0, 12]


def test_difference_hover_says_none_or_below_the_precision_instead_of_plus_zero():
    """The Compare page's per-layer difference hovered "+0.0 pp" both for a layer whose utilization is the same
    (same rank) and for one a few hundredths of a point apart: "0 pp", and "+<0.1 pp" as the error bars write
    "± <0.1 pp"; a real difference keeps its sign and one decimal, the minus the axis' ticks use."""
    import pandas as pd

    from analysis.plots import numbers
    from ui import charts

    per_layer = pd.DataFrame({"layer": ["a", "b", "c", "d"], "A: x": [0.2] * 4, "B: y": [0.2, 0.2002, 0.1877, 0.25]})
    per_layer["B: y - A: x"] = per_layer["B: y"] - per_layer["A: x"]
    per_layer.loc[0, "B: y - A: x"] = 0.0
    figure = charts.delta_bars(per_layer, ["A: x", "B: y"])
    bars = figure.data[0]
    assert list(bars.customdata) == ["0 pp", "+<0.1 pp", "−1.2 pp", "+5.0 pp"]
    assert "%{customdata}" in bars.hovertemplate and "%{y:+.1f}" not in bars.hovertemplate
    assert numbers.difference_pp(-0.0004) == "−<0.1 pp" and numbers.difference_pp(float("nan")) == "n/a"


def _story_table():
    import pandas as pd

    rows = []
    for series, probes in (("sup", [0.657, 0.80, 0.906]), ("mae", [0.67, 0.78, 0.82])):
        for step, probe, mlu in zip([0, 117, 5850], probes, [0.15, 0.2, 0.32]):
            rows.append(dict(series=series, checkpoint=f"{series} {step}", step=step, status="ok", mlu=mlu,
                             model_id=f"zoo:{series}", linear_probe_top1=probe))
    rows.append(dict(series="random", checkpoint="init", step=0, status="ok", mlu=0.151, model_id="zoo:random",
                     linear_probe_top1=0.686))
    return pd.DataFrame(rows)


def test_timeline_story_panels_keep_their_scales_apart():
    """The stacked MLU and probe panels put the MLU's "0%" just above the probe's "90%" (about 30 px apart at
    1920 px): at least 60 px of height now separate the MLU's 0 from the probe's top tick, in both modes."""
    import math

    from ui import charts
    from ui import timeline_charts as tc

    figure = tc.story_chart(_story_table())
    for shown in (figure, charts.for_projector(figure)):
        layout = shown.layout
        plot_px = layout.height - layout.margin.t - layout.margin.b
        mlu_bottom = layout.yaxis.domain[0]  # the MLU panel starts at 0 (rangemode tozero): its 0 % tick is here
        assert layout.yaxis.rangemode == "tozero"
        low, high = layout.yaxis2.range
        step = layout.yaxis2.dtick
        top_tick = math.floor(high / step + 1e-9) * step
        assert low <= 0.657 and high >= 0.906 and top_tick <= high
        top_tick_at = layout.yaxis2.domain[0] + (top_tick - low) / (high - low) * (layout.yaxis2.domain[1] - layout.yaxis2.domain[0])
        assert (mlu_bottom - top_tick_at) * plot_px >= 60, (mlu_bottom, top_tick_at, plot_px)


def test_the_probe_scatter_labels_a_crowded_start_above_it_with_an_arrow_and_its_series():
    """The one-point series (random init, step 0) was labelled "step 0" on its point, where the three regimes'
    start points overlap: which series' start was meant could not be read. Its label names the series and is
    lifted above the cluster with an arrow to the point, in the series' colour; a last point with room keeps a
    plain label beside it, also named."""
    from ui import timeline_charts as tc

    names = {"sup": "supervised", "mae": "MAE", "random": "random init"}
    figure = tc.mlu_vs_probe(_story_table(), names)
    assert not any(t.text for t in figure.data)  # no text drawn on the points themselves
    notes = {n.text: n for n in figure.layout.annotations}
    start = notes["random init · step 0"]
    assert start.showarrow and start.ay <= -40 and start.ax == 0 and (start.x, start.y) == (0.686, 0.151)
    colors = {t.name: t.line.color for t in figure.data}
    assert start.font.color == start.arrowcolor == colors["random init"]
    for label in ("supervised · step 5,850", "MAE · step 5,850"):
        assert not notes[label].showarrow and notes[label].font.color in colors.values()
    assert [t.name for t in figure.data] == ["supervised", "MAE", "random init"]


def test_a_crowded_start_under_another_series_label_is_lifted_below_it():
    """Every last point's label sits above and left of it; at 1280 px the lifted "random init · step 0" covered
    "DINO · step 1,872", whose last point was just above the start. With another series' last point above it and
    near in x, the crowded label goes below the point (the arrow still points at it); with none, above."""
    import pandas as pd

    from ui import timeline_charts as tc

    dino = [dict(series="dino", checkpoint=f"dino {step}", step=step, status="ok", mlu=mlu, model_id="zoo:dino",
                 linear_probe_top1=probe) for step, probe, mlu in ((0, 0.657, 0.15), (1872, 0.70, 0.175))]
    table = pd.concat([_story_table(), pd.DataFrame(dino)], ignore_index=True)
    notes = {n.text: n for n in tc.mlu_vs_probe(table, {"random": "random init", "dino": "DINO"}).layout.annotations}
    start = notes["random init · step 0"]
    assert start.showarrow and start.ay >= 40 and (start.x, start.y) == (0.686, 0.151)
    assert not notes["DINO · step 1,872"].showarrow


@pytest.mark.parametrize("energy", [0.5, 0.9, 0.99, 0.999])
def test_eigen_chart_axes_are_readable_and_their_ticks_mean_something(results, energy):
    """The C_in / C_out charts labelled every decade of their two log axes (13 superscripted labels a side down
    to 1e-12) and left the index axis to Plotly, whose "20" sat beside "k = 19" and which stopped short of the
    last index. Now: at most 7 labelled decades, level on both sides; the index axis spans 1 .. the last drawn
    eigenvalue and is labelled at k, at its ends and at round values that keep clear of them."""
    from analysis import metrics
    from ui import charts

    a, _ = results
    spectrum = a.layer(a.layers.loc[a.layers["in_mlu"], "layer"].iloc[0])
    for eig in (spectrum.eig_in, spectrum.eig_out):
        log_range = charts.eigen_log_range([spectrum.eig_in, spectrum.eig_out], [energy])
        figure = charts.eigen_chart(eig, energy, "C", log_range=log_range)
        for axis in (figure.layout.yaxis, figure.layout.yaxis2):
            low, high = axis.range
            labelled = [t for t in range(int(np.floor(low)), int(np.ceil(high)) + 1)
                        if low <= t <= high and (t - axis.tick0) % axis.dtick == 0]
            assert 2 <= len(labelled) <= charts.LOG_LABELS_MOST, (axis.dtick, labelled)
        assert figure.layout.yaxis.dtick == figure.layout.yaxis2.dtick
        x = figure.layout.xaxis
        k = metrics.k_at_energy(np.clip(eig, 0, None), energy)
        drawn = max(max(t.x) for t in figure.data)
        ticks = list(x.tickvals)
        assert k in ticks and drawn in ticks and x.range[0] < 1 and drawn < x.range[1] <= drawn * 1.05
        assert list(x.ticktext) == [str(t) for t in ticks]
        gaps = np.diff(ticks) / (drawn - 1)
        assert gaps.min() >= charts.INDEX_TICK_GAP - 1e-9, ticks  # no two labels crowd each other
