"""Side-by-side comparison of analyses: MLU and parameters per analysis, utilization per layer, the training
facts of each model (regime, budget, accuracy, shortfall against its recipe's target), and a warning when the
analyses were not made alike (datasets, numbers of images).

Differences of utilizations are in *percentage points*: ``delta_pp = 100 (u_B - u_A)`` (a change from 20 % to
30 % is +10 pp, not +50 %).
"""

from __future__ import annotations

import math
import threading
from typing import Sequence

import pandas as pd

from .regimes import TrainingFacts, training_facts
from .result import Result

def label_of(result: Result) -> str:
    """A short label: the model id on the dataset id."""
    return f"{result.meta.model_id} on {result.meta.dataset_id}"


def format_pp(delta: float, digits: int = 1) -> str:
    """A difference of two fractions in percentage points: ``0.052 -> '+5.2 pp'``."""
    if delta is None or (isinstance(delta, float) and math.isnan(delta)):
        return "n/a"
    return f"{100 * delta:+.{digits}f} pp"


def compare_results(results: list[Result]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(summary, per_layer)``: one summary row per analysis (MLU, delta to the first as a fraction
    ``mlu_delta`` and in percentage points ``mlu_delta_pp``, parameters kept, images) and one row per layer
    name (depth order) with each analysis's utilization and its difference to the first analysis."""
    labels = _unique_labels(results)
    first_mlu = results[0].mlu
    summary = pd.DataFrame(
        [
            {
                "analysis": label,
                "key": r.key,
                "mlu": r.mlu,
                "mlu_err": r.mlu_err,
                "mlu_delta": r.mlu - first_mlu,
                "mlu_delta_pp": 100 * (r.mlu - first_mlu),
                "kept": r.parameters()["kept"],
                "images": r.meta.n_images,
            }
            for label, r in zip(labels, results)
        ]
    )
    per_layer = None
    for label, r in zip(labels, results):
        table = r.layers[["layer", "kind", "utilization"]].rename(columns={"utilization": label})
        per_layer = table if per_layer is None else per_layer.merge(table.drop(columns="kind"), on="layer", how="outer", sort=False)
    order = list(dict.fromkeys(name for r in results for name in r.layers["layer"]))  # depth order
    per_layer = per_layer.set_index("layer").loc[order].reset_index()
    for label in labels[1:]:
        per_layer[f"{label} - {labels[0]}"] = per_layer[label] - per_layer[labels[0]]
    return summary, per_layer


def long_table(results: Sequence[Result], labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Every analysed layer of every analysis, one row each (long format, for charts and export):
    ``analysis, model_id, layer, kind, block, depth, utilization, delta_pp`` where ``depth`` is the layer's
    position in the union depth order and ``delta_pp`` its difference to the first analysis in percentage
    points (NaN where the first analysis has no such layer)."""
    labels = list(labels) if labels is not None else _unique_labels(list(results))
    order = list(dict.fromkeys(name for r in results for name in r.layers["layer"]))
    depth = {name: i for i, name in enumerate(order)}
    base = results[0].layers.set_index("layer")["utilization"] if results else pd.Series(dtype=float)
    frames = []
    for label, r in zip(labels, results):
        t = r.layers[["layer", "kind", "block", "utilization"]].copy()
        t.insert(0, "model_id", r.meta.model_id)
        t.insert(0, "analysis", label)
        t["depth"] = t["layer"].map(depth)
        t["delta_pp"] = 100 * (t["utilization"] - t["layer"].map(base))
        frames.append(t)
    columns = ["analysis", "model_id", "layer", "kind", "block", "depth", "utilization", "delta_pp"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def regimes_table(results: Sequence[Result], labels: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per analysis with its model's training facts beside its MLU:
    ``analysis, model_id, regime, regime_short, family, budget, linear_probe, top1, accuracy_here, target,
    measured, falls_short, caveat, mlu, mlu_delta_pp, kept, images, dataset`` (accuracies and MLU as fractions;
    ``mlu_delta_pp`` to the first row; ``accuracy_here``: the accuracies were measured on the analysed dataset,
    otherwise they say nothing about it and are not to be shown beside it). ``caveat`` is a sentence or
    an empty string."""
    labels = list(labels) if labels is not None else _unique_labels(list(results))
    rows = []
    first = results[0].mlu if results else float("nan")
    for label, r in zip(labels, results):
        facts: TrainingFacts = training_facts(r.meta.model_id)
        rows.append({
            "analysis": label, "model_id": facts.model_id, "regime": facts.label, "regime_short": facts.short_label,
            "family": facts.family, "budget": facts.budget, "linear_probe": facts.linear_probe, "top1": facts.top1,
            "accuracy_here": facts.measured_on(r.meta.dataset_id),
            "target": facts.target.value if facts.target else None, "measured": facts.measured,
            "falls_short": facts.falls_short, "caveat": facts.caveat() or "",
            "mlu": r.mlu, "mlu_delta_pp": 100 * (r.mlu - first), "kept": r.parameters()["kept"],
            "images": r.meta.n_images, "dataset": r.meta.dataset_id,
        })
    return pd.DataFrame(rows)


def mixture_warning(results: Sequence[Result]) -> str | None:
    """One sentence when the analyses were not made alike (different datasets or numbers of images), which
    changes utilization by itself (k grows with the number of vectors seen); None when they agree."""
    datasets = list(dict.fromkeys(r.meta.dataset_id for r in results))
    images = list(dict.fromkeys(int(r.meta.n_images) for r in results))
    parts = []
    if len(datasets) > 1:
        parts.append("different datasets (" + ", ".join(datasets) + ")")
    if len(images) > 1:
        parts.append("different numbers of images (" + ", ".join(f"{n:,}" for n in images) + ")")
    if not parts:
        return None
    return ("These analyses were made on " + " and on ".join(parts) + ": part of any difference comes from that, "
            "not from the models (k grows with the number of vectors seen). Compare analyses made alike.")


def _unique_labels(results: list[Result]) -> list[str]:
    labels = [label_of(r) for r in results]
    seen: dict[str, int] = {}
    out = []
    for label, r in zip(labels, results):
        if labels.count(label) > 1:
            seen[label] = seen.get(label, 0) + 1
            label = f"{label} [{(r.key or '')[:6]}]"
        out.append(label)
    return out


QUICK_IMAGES = 1000
"""Images per model of the Compare page's quick option (a seeded sample of the dataset)."""

_plan_lock = threading.Lock()


def planned_keys(model_ids: Sequence[str], dataset_id: str, settings) -> list[tuple[str, str | None, str | None]]:
    """``(model_id, key, error)`` for each model: the content key its analysis on ``dataset_id`` with
    ``settings`` has (loads the model, reads no image), or the one-line reason it cannot be planned here.
    Starts nothing; whether the key is cached is the caller's question (``ResultCache.has``)."""
    from .engine import plan
    from .errors import AnalysisError

    out = []
    for model_id in model_ids:
        try:
            with _plan_lock:  # planning touches process-global state (RNG of seeded random weights)
                out.append((model_id, plan(model_id, dataset_id, settings).key, None))
        except AnalysisError as exc:
            out.append((model_id, None, str(exc)))
    return out
