"""Plotly figures of results: for notebooks, and the very builders the app's pages draw with.

Public API (README, section Use it from Python)::

    from analysis import plots
    plots.utilization(result)                  # utilization per layer (depth order, kind colours, MLU line)
    plots.spectra(result, "blocks.3.mlp.fc1")  # singular values of W and of W' (the projected layer)
    plots.eigenvalues(result, "blocks.3.mlp.fc1", side="in")   # eigenvalues of C_in (or C_out) and e's k
    plots.compare([a, b], labels=["supervised", "MAE"])       # per-layer utilization overlaid
    plots.compare_mlu([a, b])                  # MLU per result with its split-half error
    plots.timeline(timeline_result)            # MLU and linear probe against training step, per series
    plots.timeline_groups(timeline_result)     # utilization of each layer group against training step

Each returns a ``plotly.graph_objects.Figure`` (shown by Jupyter; ``fig.write_html(...)`` to save). The
builders themselves live in :mod:`analysis.plots.charts` and :mod:`analysis.plots.timeline_charts` (the
app's ``ui.charts`` and ``ui.timeline_charts`` are these modules), so a notebook and the app draw the same
chart from the same result. Titles carry which vectors were counted, as the app's do.
"""

from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go

from ..result import Result
from ..tokens import label as token_label
from . import charts, timeline_charts

__all__ = ["charts", "compare", "compare_mlu", "eigenvalues", "spectra", "timeline", "timeline_charts",
           "timeline_groups", "utilization"]


def _note(results: Sequence[Result]) -> str:
    notes = list(dict.fromkeys(token_label(r.meta.token_set) + (" · centred" if r.meta.centred else "")
                               for r in results))
    return notes[0] if len(notes) == 1 else " / ".join(notes)


def utilization(result: Result, selected: str | None = None) -> go.Figure:
    """Utilization per layer at the result's energies (:func:`charts.utilization_bars`): one colour per
    kind, layers outside the MLU hatched, split-half whiskers, the MLU as a dashed line with its error."""
    figure = charts.utilization_bars(result.layers, result.mlu, selected, mlu_err=result.mlu_err)
    return charts.with_note(figure, _note([result]))


def spectra(result: Result, layer: str) -> go.Figure:
    """Singular values of ``layer``'s W against those of W' = P_out W P_in (:func:`charts.singular_values_chart`):
    W looks full rank, W' drops to zero beyond the utilized rank."""
    return charts.with_note(charts.singular_values_chart(result.layer(layer), result.energy_in, result.energy_out),
                            _note([result]))


def eigenvalues(result: Result, layer: str, side: str = "in") -> go.Figure:
    """Eigenvalues of ``layer``'s C_in (``side="in"``) or C_out (``"out"``) and the energy they leave out, with
    the threshold of the result's energy (:func:`charts.eigen_chart`)."""
    if side not in ("in", "out"):
        raise ValueError(f"side must be 'in' or 'out', got {side!r}")
    spectrum = result.layer(layer)
    values, energy = (spectrum.eig_in, result.energy_in) if side == "in" else (spectrum.eig_out, result.energy_out)
    width = spectrum.d_in if side == "in" else spectrum.d_out
    title = f"{'Input' if side == 'in' else 'Output'} second moment C_{side} of {layer} (d_{side} = {width})"
    return charts.with_note(charts.eigen_chart(values, energy, title, charts.kind_color(spectrum.kind)),
                            _note([result]))


def _compared(results: Sequence[Result], labels: Sequence[str] | None):
    from ..compare import compare_results

    if len(results) < 2:
        raise ValueError("compare needs at least two results")
    summary, per_layer = compare_results(list(results))
    if labels is not None:
        if len(labels) != len(results):
            raise ValueError(f"{len(labels)} labels for {len(results)} results")
        renamed = dict(zip(summary["analysis"], labels))
        per_layer = per_layer.rename(columns=renamed)
        summary = summary.assign(analysis=list(labels))
    return summary, per_layer, list(summary["analysis"])


def compare(results: Sequence[Result], labels: Sequence[str] | None = None) -> go.Figure:
    """Per-layer utilization of two or more results overlaid, layers in depth order
    (:func:`charts.compare_lines`); ``labels`` name them (default: model and dataset)."""
    _summary, per_layer, names = _compared(results, labels)
    return charts.with_note(charts.compare_lines(per_layer, names), _note(results))


def compare_mlu(results: Sequence[Result], labels: Sequence[str] | None = None) -> go.Figure:
    """The MLU of each result with its split-half error bar (:func:`charts.mlu_bars`)."""
    summary, _per_layer, names = _compared(results, labels)
    letters = [chr(ord("A") + i) for i in range(len(names))]
    summary = summary.assign(analysis=[f"{letter}: {name}" for letter, name in zip(letters, names)])
    return charts.with_note(charts.mlu_bars(summary, captions=names), _note(results))


def timeline(result, names: dict[str, str] | None = None) -> go.Figure:
    """MLU and linear-probe accuracy against training step, one colour per series
    (:func:`timeline_charts.story_chart`), from an :func:`analysis.timeline` result; ``names`` maps series to
    display names."""
    return timeline_charts.story_chart(result.table, names)


def timeline_groups(result, names: dict[str, str] | None = None) -> go.Figure:
    """Mean utilization of each layer group against training step (:func:`timeline_charts.groups_chart`)."""
    return timeline_charts.groups_chart(result.groups(), names)
