"""Utilization across training: analyse every checkpoint of a series and return one table.

A *series* is named by a string:

- ``zoo:<name>``: the checkpoints the zoo manifest lists for that model (``checkpoints``, written by
  ``python -m analysis.training.publish``), each analysed under its record's own model id:
  ``zoo:<name>?step=<N>`` for an intermediate float16 checkpoint, ``zoo:<name>`` for the final model and, for a
  model published before checkpoints were kept, ``zoo:vit-fmnist-random`` for step 0 (the same seed-0
  initialisation, bit for bit). A zoo model without a list is a one-point series.
- ``folder-of-checkpoints:<path>?arch=<timm arch>[&<timm kwarg>=<value>...]``: every ``.safetensors``,
  ``.pth``, ``.pt``, ``.ckpt`` and ``.bin`` file directly inside ``<path>``, each analysed as
  ``file:<file>?arch=<arch>&...`` (so ``.pth`` files are read only with ``torch.load(weights_only=True)`` and
  ``ANALYSIS_ALLOWED_DIRS`` applies, see :mod:`analysis.restrictions`). The step of a file comes from, in order:
  ``step<sep><digits>`` in its name (``step_1200.safetensors``, ``epoch=3-step=900.ckpt``); the safetensors
  metadata key ``step``; the last number in its name (``ckpt_00042.pt``). The epoch likewise from
  ``epoch<sep><digits>`` or the metadata key ``epoch``; accuracies from the metadata keys
  ``linear_probe_top1``, ``knn_top1`` (the zoo recipes write all of these). Files are ordered by step; a file
  without any step is kept as a row with an error status; two files at one step are refused.
- any other model id: a one-point series (step unknown).

Every checkpoint is a normal analysis through :func:`analysis.engine.analyze` (cached under its model id,
the weights' fingerprint, the dataset and the settings), so a timeline run twice reads only the cache, and a
point shared with another series (the zoo's initialisation) is computed once. A checkpoint that cannot be
analysed (missing, corrupt, wrong architecture) gives a row whose ``status`` names the file and the reason;
the other rows are analysed as usual.

The table (:attr:`Timeline.table`, *wide* format, one row per checkpoint in series order then step order):
``series, checkpoint, model_id, step, epoch, linear_probe_top1, knn_top1, mlu, kept, images, key, status``,
then one column ``u:<layer>`` per analysed layer (utilization ``u = r / min(d_in, d_out)`` at the timeline's
energies; NaN for a layer a checkpoint does not have). :meth:`Timeline.layers` gives the same per-layer
numbers in *long* format (``series, checkpoint, step, layer, kind, block, in_mlu, utilization``).
:meth:`Timeline.at_energy` re-thresholds every checkpoint from its stored spectra (no data pass).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd

from .defaults import DEFAULT_ENERGY
from .errors import AnalysisError, SettingsError
from .progress import ProgressCallback
from .result import Result
from .settings import AnalysisSettings

FOLDER_PREFIX = "folder-of-checkpoints:"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
SUMMARY_COLUMNS = ["series", "checkpoint", "model_id", "step", "epoch", "linear_probe_top1", "knn_top1", "mlu",
                   "kept", "images", "key", "status"]
LAYER_PREFIX = "u:"

_STEP_IN_NAME = re.compile(r"(?:^|[^a-z])(?:global_)?step[=_-]?(\d+)", re.IGNORECASE)
_EPOCH_IN_NAME = re.compile(r"(?:^|[^a-z])epoch[=_-]?(\d+)", re.IGNORECASE)
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


@dataclass(frozen=True)
class Checkpoint:
    """One point of a series: what to analyse and what is known about it before the analysis.

    ``problem`` is set when the point cannot be analysed at all (e.g. no step could be found)."""

    series: str
    label: str
    model_id: str
    step: int | None = None
    epoch: float | None = None
    accuracy: Mapping[str, float | None] = field(default_factory=dict)
    problem: str | None = None


def series_checkpoints(spec: str) -> list[Checkpoint]:
    """The checkpoints of one series spec (module docstring), in step order."""
    if not isinstance(spec, str) or not spec.strip():
        raise SettingsError(f"a series must be a model id or {FOLDER_PREFIX}<path>?arch=<timm arch>, got {spec!r}")
    spec = spec.strip()
    if spec.startswith(FOLDER_PREFIX):
        return _folder_series(spec)
    from .models.registry import ModelId

    parsed = ModelId.parse(spec)
    if parsed.source == "zoo" and not parsed.options:
        return _zoo_series(parsed.name, spec)
    record = _zoo_record(parsed) if parsed.source == "zoo" else None
    if record is not None:
        return [_from_zoo_record(spec, record)]
    return [Checkpoint(series=spec, label=spec, model_id=str(parsed))]


def _zoo_series(name: str, spec: str) -> list[Checkpoint]:
    from .models.zoo import read_manifest

    entry = read_manifest()["models"].get(name) or {}
    records = [r for r in entry.get("checkpoints") or [] if isinstance(r, Mapping)]
    if not records:
        return [Checkpoint(series=spec, label=f"zoo:{name}", model_id=f"zoo:{name}",
                           step=entry.get("steps"), epoch=entry.get("epochs"))]
    return [_from_zoo_record(spec, r) for r in sorted(records, key=lambda r: int(r.get("step") or 0))]


def _zoo_record(parsed) -> Mapping | None:
    """The manifest record of ``zoo:<name>?step=N`` (None for other options or an unknown step)."""
    from .models.zoo import read_manifest

    if set(parsed.options) != {"step"}:
        return None
    entry = read_manifest()["models"].get(parsed.name) or {}
    for record in entry.get("checkpoints") or []:
        if str(record.get("step")) == parsed.options["step"]:
            return record
    return None


def _from_zoo_record(series: str, record: Mapping) -> Checkpoint:
    acc = record.get("accuracy") or {}
    return Checkpoint(series=series, label=Path(str(record.get("file"))).name, model_id=str(record["model_id"]),
                      step=int(record.get("step") or 0), epoch=_float(record.get("epoch")),
                      accuracy={k: acc.get(k) for k in ("linear_probe_top1", "knn_top1")})


def _folder_series(spec: str) -> list[Checkpoint]:
    from urllib.parse import parse_qsl

    from .compression.checkpoint import read_metadata
    from .restrictions import check_path

    path_text, _, query = spec[len(FOLDER_PREFIX):].partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    if not path_text:
        raise SettingsError(f"{spec!r} names no folder; use {FOLDER_PREFIX}<path>?arch=<timm arch>")
    if not options.get("arch"):
        raise SettingsError(f"{spec!r} needs ?arch=<timm architecture>, e.g. {FOLDER_PREFIX}{path_text}?arch=resnet18")
    folder = check_path(Path(path_text).expanduser(), "checkpoint folder")
    if not folder.is_dir():
        raise SettingsError(f"checkpoint folder {path_text!r} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES)
    if not files:
        raise SettingsError(f"checkpoint folder {path_text!r} holds no {', '.join(CHECKPOINT_SUFFIXES)} files")
    if any(c in str(folder) for c in "?&"):
        raise SettingsError(f"checkpoint folder {path_text!r}: a path with '?' or '&' cannot be part of a model id")
    query_out = "&".join(f"{k}={v}" for k, v in options.items())
    points, seen = [], {}
    for file in files:
        meta = read_metadata(file)
        step = _int(_search(_STEP_IN_NAME, file.stem))
        if step is None:
            step = _int(meta.get("step"))
        if step is None:
            step = _int(_search(_LAST_NUMBER, file.stem))
        epoch = _float(_search(_EPOCH_IN_NAME, file.stem))
        if epoch is None:
            epoch = _float(meta.get("epoch"))
        problem = None if step is not None else (f"{file.name}: no step in its name (step_<N>, ...-step=<N>, "
                                                 "a number) or in its safetensors metadata")
        if step is not None and step in seen:
            raise SettingsError(f"checkpoint folder {path_text!r}: {seen[step]} and {file.name} are both at step {step}")
        if step is not None:
            seen[step] = file.name
        points.append(Checkpoint(series=spec, label=file.name, model_id=f"file:{file}?{query_out}", step=step,
                                 epoch=epoch, accuracy={k: _float(meta.get(k)) for k in ("linear_probe_top1", "knn_top1")},
                                 problem=problem))
    return sorted(points, key=lambda p: (p.step is None, p.step or 0))


def _search(pattern: re.Pattern, text: str) -> str | None:
    match = pattern.search(text)
    return match.group(1) if match else None


def _int(value: object) -> int | None:
    try:
        return int(str(value)) if value is not None else None
    except ValueError:
        return None


def _float(value: object) -> float | None:
    try:
        out = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return None if out is None or math.isnan(out) else out


@dataclass(frozen=True)
class Timeline:
    """Checkpoints with their analyses (``results[i]`` is None when ``errors[i]`` says why)."""

    points: list[Checkpoint]
    results: list[Result | None]
    errors: list[str | None]
    dataset: str
    energy_in: float = DEFAULT_ENERGY
    energy_out: float = DEFAULT_ENERGY

    def at_energy(self, energy_in: float, energy_out: float | None = None) -> "Timeline":
        """Every checkpoint re-thresholded from its stored spectra."""
        results = [None if r is None else r.at_energy(energy_in, energy_out) for r in self.results]
        first = next((r for r in results if r is not None), None)
        e_in = first.energy_in if first else energy_in
        e_out = first.energy_out if first else (energy_in if energy_out is None else energy_out)
        return replace(self, results=results, energy_in=e_in, energy_out=e_out)

    @property
    def series(self) -> list[str]:
        return list(dict.fromkeys(p.series for p in self.points))

    @property
    def table(self) -> pd.DataFrame:
        """The wide table (module docstring)."""
        rows, layer_order = [], []
        for point, result, error in zip(self.points, self.results, self.errors):
            row = {"series": point.series, "checkpoint": point.label, "model_id": point.model_id,
                   "step": point.step, "epoch": point.epoch,
                   "linear_probe_top1": point.accuracy.get("linear_probe_top1"),
                   "knn_top1": point.accuracy.get("knn_top1"), "mlu": math.nan, "kept": math.nan, "images": None,
                   "key": None, "status": "ok" if error is None else f"error: {error}"}
            if result is not None:
                row.update(mlu=result.mlu, kept=result.parameters()["kept"], images=result.meta.n_images,
                           key=result.key)
                for name, u in zip(result.layers["layer"], result.layers["utilization"]):
                    if name not in layer_order:
                        layer_order.append(name)
                    row[LAYER_PREFIX + name] = float(u)
            rows.append(row)
        columns = SUMMARY_COLUMNS + [LAYER_PREFIX + n for n in layer_order]
        table = pd.DataFrame(rows, columns=columns)
        for col in ("step", "images"):
            table[col] = table[col].astype("Int64")
        for col in ("epoch", "linear_probe_top1", "knn_top1"):
            table[col] = table[col].astype(float)
        return table

    def groups(self) -> pd.DataFrame:
        """Mean utilization per layer group (kind) at every analysed checkpoint, over the layers that count in
        the MLU (``in_mlu``, which holds only for ``ok`` layers): ``series, checkpoint, step, kind, label, utilization, layers``.

        A group is a layer kind (:class:`analysis.models.kinds.Kind`: attention q,k,v, attention output, MLP
        expand, MLP contract, ...), in data-flow order; ``utilization`` is the mean ``u = r / min(d_in, d_out)``
        of its layers, so the groups' means weighted by ``layers`` give the MLU."""
        from .models.kinds import kind_label, kinds_in_order

        rows = []
        for point, result in zip(self.points, self.results):
            if result is None:
                continue
            counted = result.layers[result.layers["in_mlu"].astype(bool)]
            for kind in kinds_in_order(counted["kind"]):
                u = counted.loc[counted["kind"] == kind, "utilization"].astype(float)
                rows.append({"series": point.series, "checkpoint": point.label, "step": point.step, "kind": kind,
                             "label": kind_label(kind), "utilization": float(u.mean()), "layers": int(u.size)})
        return pd.DataFrame(rows, columns=["series", "checkpoint", "step", "kind", "label", "utilization", "layers"])

    def reading(self, names: Mapping[str, str] | None = None) -> str:
        """One sentence that says what the MLU curves show, computed from the table
        (:func:`analysis.timeline_reading.reading`); ``names`` maps series to display names."""
        from .timeline_reading import reading

        return reading(self.table, names)

    def layers(self) -> pd.DataFrame:
        """Per-layer utilization in long format (module docstring)."""
        frames = []
        for point, result in zip(self.points, self.results):
            if result is None:
                continue
            part = result.layers[["layer", "kind", "block", "in_mlu", "utilization"]].copy()
            part.insert(0, "step", point.step)
            part.insert(0, "checkpoint", point.label)
            part.insert(0, "series", point.series)
            part["depth"] = range(len(part))
            frames.append(part)
        columns = ["series", "checkpoint", "step", "layer", "kind", "block", "in_mlu", "utilization", "depth"]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def resolve(series: str | Sequence[str]) -> list[Checkpoint]:
    """Every checkpoint of one spec or of several (in the order given, each in step order)."""
    specs = [series] if isinstance(series, str) else list(series)
    if not specs:
        raise SettingsError("timeline needs at least one series or model id")
    points: list[Checkpoint] = []
    for spec in specs:
        points.extend(series_checkpoints(spec))
    return points


def timeline(
    series: str | Sequence[str],
    dataset: str,
    settings: AnalysisSettings | int | None = None,
    *legacy,
    use_cache: bool = True,
    cache_dir: str | None = None,
    progress: ProgressCallback | None = None,
    **changes,
) -> Timeline:
    """Analyse every checkpoint of ``series`` (one spec or a list, see the module docstring) on ``dataset``.

    Each checkpoint goes through :func:`analysis.engine.analyze` with the same ``settings``
    (:class:`~analysis.settings.AnalysisSettings`; its fields may also be keyword arguments, as for
    ``analyze``); an :class:`~analysis.errors.AnalysisError` of one checkpoint becomes that row's ``status``
    and the rest go on. ``progress`` receives each analysis' :class:`~analysis.progress.Progress` with the
    stage prefixed by ``"<i>/<n> <checkpoint>: "``.
    """
    from .engine import analyze

    settings = AnalysisSettings.of_call(settings, legacy, changes, caller="timeline")
    points = resolve(series)
    results: list[Result | None] = []
    errors: list[str | None] = []
    by_model: dict[str, Result] = {}
    for i, point in enumerate(points):
        if point.problem:
            results.append(None)
            errors.append(point.problem)
            continue
        if point.model_id in by_model:  # one model id in several series: one analysis
            results.append(by_model[point.model_id])
            errors.append(None)
            continue
        prefix = f"{i + 1}/{len(points)} {point.label}: "
        forward = None if progress is None else (lambda p, prefix=prefix: progress(replace(p, stage=prefix + p.stage)))
        try:
            result = analyze(point.model_id, dataset, settings, use_cache=use_cache, cache_dir=cache_dir,
                             progress=forward)
        except AnalysisError as exc:
            results.append(None)
            errors.append(f"{point.label}: {exc}")
            continue
        by_model[point.model_id] = result
        results.append(result)
        errors.append(None)
    return Timeline(points=points, results=results, errors=errors, dataset=dataset, energy_in=settings.energy_in,
                    energy_out=settings.energy_out)


def from_results(points: Iterable[Checkpoint], results: Mapping[str, Result | None], errors: Mapping[str, str],
                 dataset: str, energy_in: float, energy_out: float) -> Timeline:
    """A :class:`Timeline` from analyses done elsewhere (the app's background jobs), keyed by model id;
    ``errors[model_id]`` explains a missing one."""
    points = list(points)
    res, errs = [], []
    for point in points:
        result = None if point.problem else results.get(point.model_id)
        res.append(None if result is None else result.at_energy(energy_in, energy_out))
        errs.append(point.problem or (None if result is not None else
                                      f"{point.label}: {errors.get(point.model_id, 'not analysed yet')}"))
    return Timeline(points=points, results=res, errors=errs, dataset=dataset, energy_in=energy_in,
                    energy_out=energy_out)


__all__ = ["Checkpoint", "Timeline", "from_results", "resolve", "series_checkpoints", "timeline"]
