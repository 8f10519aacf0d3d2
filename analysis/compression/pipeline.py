"""Compression end to end: measure subspaces -> choose ranks -> factorize -> evaluate -> fine-tune -> export.

``compress(request)`` returns a :class:`CompressionReport` whose ``summary`` is the JSON the CLI prints and
saves (``params_dense, params_kept, acc_dense, acc_projected, acc_finetuned`` and per-layer ranks, among others);
``sweep(request, energies)`` gives accuracy against parameters kept along ``e = e_in = e_out`` (the Pareto
curve the app plots). Summaries are also stored under ``<cache>/compressions/`` (atomic writes) so the app
lists earlier compressions of a model.

Data roles: ``dataset`` supplies the subspaces (the analysis), the fine-tuning images (all of it) and, for the
linear-probe method, the probe's training images; ``eval_dataset`` supplies the reported top-1. When the
analysis dataset is ``fashion-mnist:train`` the evaluation defaults to ``fashion-mnist:test``; otherwise it
defaults to the analysis dataset itself and the summary says ``evaluated_on_analysis_data: true``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import pandas as pd
from torch import nn

from ..cache import atomic_write_bytes, content_key
from ..data import load_dataset
from ..defaults import DEFAULT_ENERGY
from ..engine import plan
from ..errors import SettingsError
from ..paths import cache_root
from ..progress import Progress, ProgressCallback
from ..result import check_energy
from ..settings import AnalysisSettings
from .accuracy import Evaluator
from .checkpoint import export_bytes, export_file
from .factorize import (
    LayerRank, choose_ranks, energy_for_budget, factorize_model, kept_fraction, preservation_error, rank_map,
)
from .finetune import FinetuneSettings, finetune
from .subspaces import Measured, measure, measure_settings
from .thin_layers import parameter_count

PAIRED_EVAL = {"fashion-mnist:train": "fashion-mnist:test"}
"""Analysis dataset -> the held-out split evaluated by default."""

SWEEP_ENERGIES: tuple[float, ...] = (0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)


@dataclass(frozen=True)
class CompressionRequest:
    """What to compress and how. ``keep`` (a fraction of the counted layers' parameters) overrides energies."""

    model: str
    dataset: str = "fashion-mnist:train"
    eval_dataset: str | None = None
    samples: int | None = None
    eval_samples: int | None = None
    seed: int = 0
    energy_in: float = DEFAULT_ENERGY
    energy_out: float = DEFAULT_ENERGY
    keep: float | None = None
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    device: str = "cpu"
    batch_size: int | None = None

    def resolved_eval_dataset(self) -> str:
        return self.eval_dataset or PAIRED_EVAL.get(self.dataset, self.dataset)

    def as_dict(self) -> dict:
        """JSON-ready fields (``finetune`` as a nested dict); :meth:`from_dict` reads them back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> "CompressionRequest":
        """The request :meth:`as_dict` wrote; unknown or missing fields are a :class:`SettingsError`."""
        if not isinstance(data, dict):
            raise SettingsError("a compression request must be an object of its fields")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown or "model" not in data:
            raise SettingsError(f"compression request with unknown fields {', '.join(unknown)}" if unknown
                                else "compression request without a model")
        values = dict(data)
        finetune_fields = values.get("finetune") or {}
        if not isinstance(finetune_fields, dict) or set(finetune_fields) - {f.name for f in fields(FinetuneSettings)}:
            raise SettingsError(f"compression request with malformed fine-tuning settings {finetune_fields!r}")
        values["finetune"] = FinetuneSettings(**finetune_fields)
        return cls(**values)

    def analysis_settings(self) -> AnalysisSettings:
        """The settings of the analysis whose subspaces give the ranks (what :func:`measure` runs)."""
        return measure_settings(self.samples, self.seed, device=self.device, batch_size=self.batch_size)

    def validated(self) -> "CompressionRequest":
        check_energy(self.energy_in, "energy_in")
        check_energy(self.energy_out, "energy_out")
        if self.keep is not None and not (isinstance(self.keep, (int, float)) and 0 < self.keep <= 1):
            raise SettingsError(f"--keep must be a fraction in (0, 1], got {self.keep!r}")
        for label, value in (("samples", self.samples), ("eval samples", self.eval_samples)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise SettingsError(f"{label} must be a positive integer, got {value!r}")
        self.finetune.validated()
        return self


def job_key(request: CompressionRequest, analysis_key: str) -> str:
    """The content key of one compression: the request's fields plus the key of the analysis that gives its
    ranks (which fingerprints the model's weights and the analysed data). Equal keys, equal summaries."""
    return content_key({"kind": "compression", "analysis_key": analysis_key, "request": request.as_dict()})


def request_key(request: CompressionRequest) -> str:
    """:func:`job_key` of ``request``, planning its analysis (loads the model, reads no images). Bad ids or
    settings raise their :class:`~analysis.errors.AnalysisError` here."""
    request = request.validated()
    return job_key(request, plan(request.model, request.dataset, request.analysis_settings()).key)


@dataclass
class CompressionReport:
    """The summary (JSON-ready), the factorized model (CPU, eval mode), the per-layer decisions, and what an
    exported file needs to be loaded back (the base model's preprocessing and class names)."""

    summary: dict
    model: nn.Module
    ranks: list[LayerRank]
    data_config: dict = field(default_factory=dict)
    class_names: list[str] | None = None

    def _export_args(self) -> tuple:
        """What the file records besides the weights: base model, rank map, preprocessing, classes, summary."""
        return (self.summary["model"], rank_map(self.ranks), self.data_config, self.class_names,
                {k: v for k, v in self.summary.items() if k != "layers"})

    def export_bytes(self) -> bytes:
        """The factorized model as a safetensors file (see :mod:`analysis.compression.checkpoint`)."""
        return export_bytes(self.model, *self._export_args())

    def export_file(self, path: str | Path) -> Path:
        """Write that file (and its ``.ranks.json``) atomically to ``path``."""
        return export_file(self.model, path, *self._export_args())


@dataclass
class _Prepared:
    measured: Measured
    evaluator: Evaluator
    finetune_data: object | None


def _prepare(request: CompressionRequest, cache_dir: str | None, progress: ProgressCallback | None) -> _Prepared:
    analysis_progress = None
    if progress is not None:
        def analysis_progress(p: Progress) -> None:  # the analysis counts batches; compression shows images
            progress(Progress("analyse", p.items_done, p.items_total, p.items_done, p.items_total, p.elapsed_s))
    measured = measure(request.model, request.dataset, request.samples, request.seed, device=request.device,
                       batch_size=request.batch_size, cache_dir=cache_dir, progress=analysis_progress)
    loaded = measured.loaded
    eval_id = request.resolved_eval_dataset()
    eval_data = load_dataset(eval_id, data_config=loaded.data_config, samples=request.eval_samples, seed=request.seed)
    evaluator = Evaluator.for_model(loaded.class_names, eval_data, probe_data=measured.dataset, device=request.device)
    finetune_data = None  # fine-tuning reads the whole dataset: the analysed selection when that is all of it
    if request.finetune.steps:
        finetune_data = measured.dataset if request.samples is None else load_dataset(
            request.dataset, data_config=loaded.data_config, samples=None, seed=request.seed)
    return _Prepared(measured, evaluator, finetune_data)


def _energies(request: CompressionRequest, measured: Measured) -> tuple[float, float]:
    if request.keep is not None:
        energy = energy_for_budget(measured.subspaces, request.keep)
        return energy, energy
    return check_energy(request.energy_in, "energy_in"), check_energy(request.energy_out, "energy_out")


def _finetune_settings(request: CompressionRequest, evaluator: Evaluator) -> FinetuneSettings:
    """``labels`` needs the head method; with a linear probe there is no classifier to train: distil."""
    settings = request.finetune
    if settings.objective == "labels" and evaluator.method != "head":
        settings = FinetuneSettings(**{**settings.as_dict(), "objective": "distill"})
    return settings


def compress(request: CompressionRequest, *, cache_dir: str | None = None, export: str | Path | None = None,
             progress: ProgressCallback | None = None, should_stop: Callable[[], bool] | None = None) -> CompressionReport:
    """Run the whole compression of ``request`` (see the module docstring)."""
    request = request.validated()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    prepared = _prepare(request, cache_dir, progress)
    measured, evaluator = prepared.measured, prepared.evaluator
    timings["analysis_s"] = time.perf_counter() - start
    e_in, e_out = _energies(request, measured)
    ranks = choose_ranks(measured.subspaces, e_in, e_out)
    dense_model = measured.loaded.model

    start = time.perf_counter()
    compressed = factorize_model(dense_model, measured.subspaces, ranks)
    timings["factorize_s"] = time.perf_counter() - start
    start = time.perf_counter()
    acc_dense = evaluator.accuracy(dense_model, progress, "evaluate dense")
    acc_projected = evaluator.accuracy(compressed, progress, "evaluate factorized")
    timings["evaluate_s"] = time.perf_counter() - start

    ft_settings = _finetune_settings(request, evaluator)
    acc_finetuned, ft_log = None, {"steps": 0}
    if ft_settings.steps:
        ft_log = finetune(compressed, prepared.finetune_data, ft_settings, teacher=dense_model,
                          label_map=evaluator.label_map, device=request.device, progress=progress,
                          should_stop=should_stop)
        acc_finetuned = evaluator.accuracy(compressed, progress, "evaluate fine-tuned")
        timings["finetune_s"] = ft_log["seconds"]
    compressed.cpu()

    layers = []
    for decision in ranks:
        row = decision.as_dict()
        row["preservation_error"] = (preservation_error(measured.subspaces[decision.layer], decision.k_in, decision.k_out)
                                     if decision.factorized else 0.0)
        layers.append(row)
    params_dense = sum(r.params_dense for r in ranks)
    params_kept = sum(r.params_kept for r in ranks)
    summary = {
        "model": measured.loaded.model_id,
        "dataset": measured.result.meta.dataset_id or request.dataset,
        "eval_dataset": evaluator.eval_data.dataset_id,
        "evaluated_on_analysis_data": evaluator.eval_data.dataset_id == request.dataset,
        "evaluation_method": evaluator.method,
        "analysis_key": measured.result.key,
        "samples": request.samples,
        "eval_samples": len(evaluator.eval_data),
        "seed": request.seed,
        "energy_in": e_in,
        "energy_out": e_out,
        "keep_target": request.keep,
        "layers_counted": len(ranks),
        "layers_factorized": sum(r.factorized for r in ranks),
        "params_dense": params_dense,
        "params_kept": params_kept,
        "kept_fraction": kept_fraction(ranks) if params_dense else None,
        "analysis_images": measured.result.meta.n_images,
        "model_params_dense": parameter_count(dense_model),
        "model_params_compressed": parameter_count(compressed),
        "acc_dense": acc_dense,
        "acc_projected": acc_projected,
        "acc_finetuned": acc_finetuned,
        "drop_projected": acc_dense - acc_projected,
        "drop_finetuned": None if acc_finetuned is None else acc_dense - acc_finetuned,
        "finetune": {**ft_settings.as_dict(), **ft_log},
        "timings": timings,
        "layers": layers,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    report = CompressionReport(summary=summary, model=compressed, ranks=ranks,
                               data_config=dict(measured.loaded.data_config), class_names=measured.loaded.class_names)
    if export is not None:
        summary["export"] = str(report.export_file(export))
    return report


def sweep(request: CompressionRequest, energies: tuple[float, ...] = SWEEP_ENERGIES, *, cache_dir: str | None = None,
          progress: ProgressCallback | None = None) -> pd.DataFrame:
    """Accuracy against parameters kept for ``e_in = e_out = e`` over ``energies`` (one analysis, one dense
    evaluation). With ``request.finetune.steps > 0`` every point is also fine-tuned from its projection."""
    request = request.validated()
    energies = tuple(check_energy(e, "sweep energy") for e in energies)
    prepared = _prepare(request, cache_dir, progress)
    measured, evaluator = prepared.measured, prepared.evaluator
    ft_settings = _finetune_settings(request, evaluator)
    acc_dense = evaluator.accuracy(measured.loaded.model, progress, "evaluate dense")
    rows = []
    for energy in energies:
        ranks = choose_ranks(measured.subspaces, energy, energy)
        compressed = factorize_model(measured.loaded.model, measured.subspaces, ranks)
        row = {"energy": energy, "kept_fraction": kept_fraction(ranks),
               "params_kept": sum(r.params_kept for r in ranks), "params_dense": sum(r.params_dense for r in ranks),
               "layers_factorized": sum(r.factorized for r in ranks), "acc_dense": acc_dense,
               "acc_projected": evaluator.accuracy(compressed, progress, f"evaluate e={energy}"), "acc_finetuned": None}
        if ft_settings.steps:
            finetune(compressed, prepared.finetune_data, ft_settings, teacher=measured.loaded.model,
                     label_map=evaluator.label_map, device=request.device, progress=progress)
            row["acc_finetuned"] = evaluator.accuracy(compressed, progress, f"evaluate fine-tuned e={energy}")
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ stored summaries
def summaries_dir(cache_dir: str | Path | None = None) -> Path:
    root = Path(cache_dir).expanduser().resolve() if cache_dir is not None else cache_root()
    return root / "compressions"


def summary_name(summary: dict) -> str:
    """A file name derived only from a hash of the settings (never from user text: no path can escape)."""
    parts = {k: summary.get(k) for k in ("model", "dataset", "eval_dataset", "analysis_key", "energy_in", "energy_out",
                                         "keep_target", "finetune", "eval_samples", "seed")}
    parts["finetune"] = {k: v for k, v in (parts["finetune"] or {}).items() if k in asdict(FinetuneSettings())}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24] + ".json"


def store_summary(summary: dict, cache_dir: str | Path | None = None) -> Path:
    path = summaries_dir(cache_dir) / summary_name(summary)
    atomic_write_bytes(path, json.dumps(summary, indent=2, default=str).encode())
    return path


def stored_summaries(cache_dir: str | Path | None = None, model: str | None = None) -> list[dict]:
    """Stored summaries (newest first), optionally of one model; unreadable files are skipped."""
    folder = summaries_dir(cache_dir)
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and (model is None or data.get("model") == model):
            out.append(data)
    return sorted(out, key=lambda d: str(d.get("created", "")), reverse=True)
