"""What each model's training was: its regime, budget, accuracy and whether it reached its recipe's target.

The Compare page puts these facts beside each MLU, because utilization alone says little without them: a
self-supervised model trained for 4 CPU epochs is not evidence about self-supervised pre-training. The facts
come from data, never from page text:

- zoo models (``zoo:<name>``): ``analysis/models/zoo_weights/manifest.json`` (regime, epochs, steps, training
  time, hardware, accuracies measured on the Fashion-MNIST test split by ``python -m analysis.training.publish``);
- the target each training recipe aims at: :data:`RECIPE_TARGETS` (below), cited from the recipes;
- other sources: the regime implied by the id (``random:`` is untrained; timm's ``.dino`` / ``.mae`` tags are
  self-supervised; ``.in1k`` / ``.augreg`` / ``.in21k`` ones supervised), with no accuracy.

A model *falls short* when its measured metric is below its recipe's target: ``measured < target.value``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import AnalysisError
from .models.registry import ModelId
from .models.zoo import MANIFEST_PATH, read_manifest

REGIME_LABELS: dict[str, str] = {
    "supervised": "supervised",
    "mae": "self-supervised: MAE",
    "dino": "self-supervised: DINO",
    "dinov2": "self-supervised: DINOv2",
    "random": "untrained (random init)",
}
SHORT_LABELS: dict[str, str] = {
    "supervised": "supervised", "mae": "MAE", "dino": "DINO", "dinov2": "DINOv2", "random": "random init",
}
"""Regime names short enough for a chart's axis."""
ZOO_ACCURACY_DATASET = "fashion-mnist:test"
"""Where the zoo's accuracies were measured (the manifest's ``evaluation``: the Fashion-MNIST test split)."""
REGIME_FAMILIES: dict[str, str] = {
    "supervised": "supervised", "mae": "self-supervised", "dino": "self-supervised", "dinov2": "self-supervised",
    "random": "untrained",
}
REGIME_ORDER: tuple[str, ...] = ("supervised", "mae", "dino", "dinov2", "random")


@dataclass(frozen=True)
class RecipeTarget:
    """``metric`` (a key of a manifest entry's ``accuracy``) should reach ``value``; ``source`` says where the
    aim is stated."""

    metric: str
    value: float
    source: str


RECIPE_TARGETS: dict[str, RecipeTarget] = {
    "supervised": RecipeTarget("top1", 0.90, "the zoo's supervised aim in analysis/training/supervised.py and the README's 'The zoo'"),
    "mae": RecipeTarget("linear_probe_top1", 0.80, "the zoo's self-supervised aim in the README's 'The zoo'"),
    "dino": RecipeTarget("linear_probe_top1", 0.80, "the zoo's self-supervised aim in analysis/training/dino.py"),
}
"""What each zoo recipe aims at on the Fashion-MNIST test split. Random initialisation has no target."""

METRIC_LABELS: dict[str, str] = {"top1": "top-1", "linear_probe_top1": "linear-probe top-1", "knn_top1": "k-NN top-1"}


@dataclass(frozen=True)
class TrainingFacts:
    """The regime and training record of one model, as shown beside its MLU."""

    model_id: str
    regime: str
    """``supervised``, ``mae``, ``dino``, ``dinov2``, ``random`` or ``unknown``."""
    budget: str
    """Human-readable training budget in steps, images seen and hours, e.g. ``4 epochs (1,872 steps, 239,616 images
    seen) on CPU, 2.1 h wall-clock on 1 thread``: regimes compared at matched effort can be checked."""
    linear_probe: float | None = None
    """Linear-probe top-1 on the test split (comparable across regimes), when measured."""
    top1: float | None = None
    """The supervised head's top-1, when the model has one."""
    target: RecipeTarget | None = None
    measured: float | None = None
    """The value of ``target.metric`` (None when there is no target or it was not measured)."""
    accuracy_dataset: str | None = None
    """The dataset id the accuracies were measured on (None when no accuracy is recorded)."""

    @property
    def label(self) -> str:
        return REGIME_LABELS.get(self.regime, "regime not recorded")

    @property
    def short_label(self) -> str:
        return SHORT_LABELS.get(self.regime, "regime?")

    def measured_on(self, dataset_id: str) -> bool:
        """Whether the accuracies were measured on ``dataset_id`` (so they may be shown beside its analysis)."""
        return self.accuracy_dataset is not None and self.accuracy_dataset == dataset_id

    @property
    def family(self) -> str:
        return REGIME_FAMILIES.get(self.regime, "unknown")

    @property
    def falls_short(self) -> bool:
        return self.target is not None and self.measured is not None and self.measured < self.target.value

    def caveat(self) -> str | None:
        """One sentence when the training fell short of its recipe's target, else None."""
        if not self.falls_short:
            return None
        metric = METRIC_LABELS.get(self.target.metric, self.target.metric)
        return (f"{self.model_id} fell short of its recipe's target: {metric} {self.measured:.1%} against "
                f"{self.target.value:.0%}, {self.target.source}, after {self.budget}. Its utilization shows an "
                f"under-trained model ({self.label}), not what that regime reaches.")


def _hours(seconds: float | None, threads: int | None = None, shared: bool = False) -> str:
    """``, 1.5 h wall-clock on 2 threads``; ``shared``: the cores were shared with other work while it ran (its
    wall-clock then overstates the effort; steps and images seen are the comparable budget)."""
    if not seconds:
        return ""
    wall = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
    where = f" on {threads} thread{'s' if threads != 1 else ''}" if threads else ""
    return f", {wall} wall-clock{where}" + (" of a shared machine" if shared else "")


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n:,}"


def _zoo_facts(model_id: str, entry: dict) -> TrainingFacts:
    regime = str(entry.get("regime") or "unknown")
    epochs = entry.get("epochs") or 0
    hardware = str(entry.get("hardware") or "")
    on_cpu = "CPU" in hardware and "cuda" not in hardware.split("CPU")[-1].lower()
    if regime == "random" or not epochs:
        budget = "none (initialisation)"
    else:
        steps = entry.get("steps")
        hyper = entry.get("hyperparameters") or {}
        batch = hyper.get("batch_size")
        seen = f", {_count(steps * batch)} images seen" if steps and batch else ""
        budget = (f"{epochs} epochs" + (f" ({steps:,} steps{seen})" if steps else "") + (" on CPU" if on_cpu else " on GPU" if "(CUDA)" in hardware else "")
                  + _hours(entry.get("train_seconds"), hyper.get("threads") if on_cpu else None,
                           shared="shared" in hardware))
    accuracy = entry.get("accuracy") or {}
    target = RECIPE_TARGETS.get(regime)
    measured = accuracy.get(target.metric) if target is not None else None
    return TrainingFacts(model_id=model_id, regime=regime, budget=budget,
                         linear_probe=accuracy.get("linear_probe_top1"), top1=accuracy.get("top1"),
                         target=target, measured=measured,
                         accuracy_dataset=ZOO_ACCURACY_DATASET if accuracy else None)


def _regime_from_name(name: str) -> str:
    tag = name.lower()
    if "dinov2" in tag:
        return "dinov2"
    if ".dino" in tag or "_dino" in tag:
        return "dino"
    if ".mae" in tag or "_mae" in tag:
        return "mae"
    if any(t in tag for t in (".augreg", ".in1k", ".in21k", ".tv_in1k", "_in1k")):
        return "supervised"
    return "unknown"


def training_facts(model_id: str, manifest_path=MANIFEST_PATH) -> TrainingFacts:
    """What is known about how ``model_id`` was trained (never raises for a well-formed or odd id)."""
    try:
        parsed = ModelId.parse(model_id)
    except AnalysisError:
        return TrainingFacts(model_id=model_id, regime="unknown", budget="not recorded")
    if parsed.source == "zoo":
        entry = read_manifest(manifest_path).get("models", {}).get(parsed.name)
        if entry:
            return _zoo_facts(model_id, entry)
    if parsed.source == "random":
        return TrainingFacts(model_id=model_id, regime="random", budget="none (initialisation)")
    return TrainingFacts(model_id=model_id, regime=_regime_from_name(parsed.name), budget="not recorded")
