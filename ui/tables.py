"""Tables derived from results for the pages (pure pandas over library calls; no Streamlit)."""

from __future__ import annotations

import datetime as _dt

import numpy as np
import pandas as pd

from analysis.cache import CacheEntry
from analysis.result import Result
from analysis.sweep import energy_sweep  # noqa: F401  (re-exported: pages import it from here)


def layer_savings(result: Result) -> pd.DataFrame:
    """Per-layer parameter counts at the result's energies, with the saving each factorization gives."""
    table = result.layers
    out = table[["layer", "kind", "block", "d_in", "d_out", "rank", "params_dense", "params_factorized",
                 "preservation_error", "in_mlu"]].copy()
    out["kept"] = out["params_factorized"] / out["params_dense"]
    out["saved"] = out["params_dense"] - out["params_factorized"]
    return out


MISSING = "-"
"""What a table on screen shows for a value that does not exist (a layer outside the blocks has no block, a
flagged layer no error), instead of Streamlit's grey "None"."""


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def displayed(table: pd.DataFrame, formats: dict[str, str] | None = None) -> pd.DataFrame:
    """A table for the screen: every column that has a missing value becomes text, with :data:`MISSING` there
    and the others formatted (``formats``: column -> format spec, ``.4g`` by default for floats; ``block`` as
    an integer). Columns without missing values keep their type (sorting, progress bars)."""
    formats = {"block": "d", **(formats or {})}
    out = table.copy()
    for column in out.columns:
        values = out[column]
        if not any(_missing(v) for v in values):
            continue
        spec = formats.get(column, ".4g")

        def shown(v, spec=spec):
            if _missing(v):
                return MISSING
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
                return format(int(v) if spec == "d" else float(v), spec)
            return str(v)

        out[column] = [shown(v) for v in values]
    return out


def checkpoint_step(model_id: str) -> int | None:
    """The training step of a checkpoint's model id (``zoo:vit-fmnist-mae?step=936`` -> 936), else None: the
    Timeline analyses one such id per point of a series, and they are listed after the models themselves."""
    from analysis.models.registry import ModelId

    try:
        step = ModelId.parse(model_id).options.get("step")
        return None if step is None else int(step)
    except (ValueError, TypeError, AttributeError):
        return None


def library_order(entries: list[CacheEntry]) -> list[CacheEntry]:
    """The Library's rows: the analyses of whole models first, newest first; then the checkpoints of training
    series (the Timeline's points, adopted from the shipped entries all at once), grouped by model and in step
    order. Ties fall to the key, so the order is the same on every run. (Newest first throughout put the
    Timeline's two dozen checkpoints above the four main analyses, below the table's visible rows.)"""
    steps = {e.key: checkpoint_step(e.meta.model_id) for e in entries}  # each id parsed once
    main = sorted((e for e in entries if steps[e.key] is None), key=lambda e: (-(e.created or 0.0), e.key))
    points = sorted((e for e in entries if steps[e.key] is not None),
                    key=lambda e: (e.meta.model_id.partition("?")[0], steps[e.key], e.meta.dataset_id, e.key))
    return main + points


def _settings(entry: CacheEntry) -> str:
    """The settings that rarely differ, in one short cell (the sample and token counts only when limited); the
    layer count and code version are on the reproducibility card."""
    meta = entry.meta
    parts = [f"{meta.samples:,} samples" if meta.samples is not None else "",
             f"{meta.tokens_per_image} tok/img" if meta.tokens_per_image is not None else "",
             f"seed {meta.seed}", meta.precision, meta.device]
    return " · ".join(p for p in parts if p)


def entry_row(entry: CacheEntry, mlu: float | None = None) -> dict:
    """One Library row from a cache entry's listing (its settings and ids, no arrays read): what tells the
    entries apart first (model, dataset, images, MLU, when), then the statistics pass's time and the settings
    that rarely differ in one cell (the page's column widths make it all fit at 1280 px, no sideways scrolling).
    The full key is on the reproducibility card; its first 8 digits are enough for the CLI."""
    meta = entry.meta
    return {  # the MLU beside the key: a long model id pushed it out of sight at 1280 px
        "key": entry.key[:8],
        "MLU": mlu,
        "model": meta.model_id,
        "dataset": meta.dataset_id,
        "images": meta.n_images,
        "created": _dt.datetime.fromtimestamp(entry.created).strftime("%Y-%m-%d %H:%M") if entry.created else "",
        "stats s": _round(meta.timings.statistics_s),
        "settings": _settings(entry),
    }


def entry_label(entry: CacheEntry) -> str:
    """A label for menus: key prefix first (always visible), then model on dataset and images."""
    meta = entry.meta
    return f"{entry.key[:8]} · {meta.model_id} on {meta.dataset_id} · {meta.n_images} images"


def _round(value):
    return None if value is None else float(np.round(value, 2))


def display_labels(labels: list[str], width: int = 56) -> list[str]:
    """Short, unique chart labels: a letter, then the label (middle elided when longer than ``width``).

    When every label ends with the same `` on <dataset>``, that part is dropped (the page states it once).
    """
    suffixes = {label.rpartition(" on ")[2] for label in labels}
    common = len(suffixes) == 1 and all(" on " in label for label in labels)
    out = []
    for i, label in enumerate(labels):
        body = label.rpartition(" on ")[0] if common else label
        if len(body) > width:
            half = (width - 1) // 2
            body = body[:half] + "…" + body[-half:]
        out.append(f"{chr(ord('A') + i)}: {body}")
    return out


def relabel(summary: pd.DataFrame, per_layer: pd.DataFrame, short: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``compare_results`` tables with the analyses renamed to ``short`` (same order)."""
    long = list(summary["analysis"])
    mapping = dict(zip(long, short))
    summary = summary.assign(analysis=short, full_label=long)
    renamed = {}
    for column in per_layer.columns:
        if column in mapping:
            renamed[column] = mapping[column]
        elif " - " in column:
            for a in long[1:]:
                if column == f"{a} - {long[0]}":
                    renamed[column] = f"{mapping[a]} - {short[0]}"
    return summary, per_layer.rename(columns=renamed)


def depth_order(per_layer: pd.DataFrame, results: list[Result]) -> pd.DataFrame:
    """Rows of a per-layer comparison in depth order: the first analysis's layers in model order, then any
    layer only the others have, in their own model order (a merge may have sorted them by name)."""
    order: list[str] = []
    seen: set[str] = set()
    for result in results:
        for name in result.layers["layer"]:
            if name not in seen:
                seen.add(name)
                order.append(name)
    rank = {name: i for i, name in enumerate(order)}
    return per_layer.sort_values("layer", key=lambda col: col.map(rank)).reset_index(drop=True)


def key_columns_first(table: pd.DataFrame, first: list[str]) -> list[str]:
    """A ``column_order`` for ``st.dataframe``: the ``first`` columns (those ``table`` has) in that order, then
    every other column as it comes. A wide table scrolls sideways at 1280 px: what it is read for must be in
    the part on screen (Compress's "kept" and the Library's MLU were beyond it)."""
    head = [name for name in first if name in table.columns]
    return head + [name for name in table.columns if name not in head]


LAYER_TABLE_FIRST = ["layer", "utilization", "rank", "k_in", "k_out", "d_in", "d_out", "kind", "block"]
"""The Layers page's per-layer table: the layer, its utilization and what it is made of first."""
SAVINGS_TABLE_FIRST = ["layer", "kept", "rank", "params_factorized", "params_dense", "saved", "preservation_error"]
"""The Compress page's per-layer table: the layer and its parameters kept first."""


def percent_bars(table: pd.DataFrame, labels: dict[str, str], width: str | None = None) -> tuple[pd.DataFrame, dict]:
    """``table`` with the fraction columns ``labels`` (column -> header) in percent, and their progress-bar
    column configs, every value with one decimal ("35.4%", "38.8%"). Streamlit's own "percent" format drops
    trailing zeros, so one column read "35.4%" beside "38.78%". A column :func:`displayed` made text is left."""
    import streamlit as st

    out, config = table.copy(), {}
    for name, label in labels.items():
        if name in out and pd.api.types.is_numeric_dtype(out[name]):
            out[name] = 100.0 * out[name]
        config[name] = st.column_config.ProgressColumn(label, min_value=0.0, max_value=100.0, format="%.1f%%",
                                                       width=width)
    return out, config


def numeric_config(table: pd.DataFrame, config: dict) -> dict:
    """``config`` (Streamlit column configs) where the columns :func:`displayed` made text keep only their
    header, help and width (a number format on text would show the missing marks as "None" again)."""
    out = {}
    for name, value in config.items():
        if name not in table or pd.api.types.is_numeric_dtype(table[name]):
            out[name] = value
        else:
            out[name] = {key: value.get(key) for key in ("label", "help", "width") if value.get(key) is not None}
    return out
