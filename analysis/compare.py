"""Side-by-side comparison of analyses: MLU and parameters per analysis, utilization per layer."""

from __future__ import annotations

import pandas as pd

from .result import Result


def label_of(result: Result) -> str:
    """A short label: the model id, plus the dataset when it is not the default."""
    return f"{result.meta.model_id} on {result.meta.dataset_id}"


def compare_results(results: list[Result]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(summary, per_layer)``: one summary row per analysis (MLU, delta to the first, parameters kept) and
    one row per layer name with each analysis's utilization and its difference to the first analysis."""
    labels = _unique_labels(results)
    first_mlu = results[0].mlu
    summary = pd.DataFrame(
        [
            {
                "analysis": label,
                "key": r.key,
                "mlu": r.mlu,
                "mlu_delta": r.mlu - first_mlu,
                "kept": r.parameters()["kept"],
                "images": r.meta.n_images,
            }
            for label, r in zip(labels, results)
        ]
    )
    per_layer = None
    for i, (label, r) in enumerate(zip(labels, results)):
        table = r.layers[["layer", "kind", "utilization"]].rename(columns={"utilization": label})
        per_layer = table if per_layer is None else per_layer.merge(table.drop(columns="kind"), on="layer", how="outer", sort=False)
    order = list(dict.fromkeys(name for r in results for name in r.layers["layer"]))  # depth order
    per_layer = per_layer.set_index("layer").loc[order].reset_index()
    for label in labels[1:]:
        per_layer[f"{label} - {labels[0]}"] = per_layer[label] - per_layer[labels[0]]
    return summary, per_layer


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
