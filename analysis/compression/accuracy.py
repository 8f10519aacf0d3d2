"""Top-1 accuracy of a model (dense, projected or fine-tuned) on a labelled dataset.

Two methods, chosen from what the model's classifier means (:attr:`LoadedModel.class_names`) and what the
dataset's classes are:

- ``head``: every class of the dataset is one of the classifier's classes (the zoo on Fashion-MNIST; an
  ImageNet-1k model on an image folder whose class sub-folders are WordNet ids such as ``n02123045``).
  Prediction = argmax over all classifier outputs; correct when it is the dataset label's class.
- ``linear-probe``: otherwise (no classifier, or another label space). Features are the pre-logits
  (``forward_head(forward_features(x), pre_logits=True)``); a multinomial logistic regression
  (:func:`analysis.training.evaluate.fit_linear_probe`) is fitted on the probe-training dataset's features of
  *each evaluated model* (so a compressed model is not judged with the dense model's probe), then scored
  on the evaluation dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data import make_loader
from ..errors import DatasetError, SettingsError
from ..progress import ProgressCallback, StageClock


def check_labelled(dataset, role: str) -> list[str]:
    """The dataset's class names; a clear error when it has none or has unlabelled items."""
    if not dataset.class_names or (dataset.labels < 0).any():
        raise DatasetError(
            f"{dataset.dataset_id} has no labels, so it cannot be the {role}; use a labelled dataset "
            f"(fashion-mnist:test, mnist, digits, cifar10:<root>, or a folder with one sub-folder per class)"
        )
    return list(dataset.class_names)


def head_label_map(model_classes: list[str] | None, dataset_classes: list[str]) -> np.ndarray | None:
    """``map[label] = classifier output index`` when every dataset class is a classifier class, else None."""
    if not model_classes:
        return None
    index = {name: i for i, name in enumerate(model_classes)}
    if not all(name in index for name in dataset_classes):
        return None
    return np.array([index[name] for name in dataset_classes], dtype=np.int64)


def pre_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features the classifier reads: ``forward_head(forward_features(x), pre_logits=True)`` (timm)."""
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise SettingsError(
            f"{type(model).__name__} has no timm feature interface (forward_features/forward_head), so no linear "
            f"probe or feature distillation is possible; evaluate it on a dataset in its classifier's label space"
        )
    return model.forward_head(model.forward_features(x), pre_logits=True)


@torch.inference_mode()
def _features(model: nn.Module, dataset, batch_size: int, device: torch.device,
              progress: ProgressCallback | None, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval().to(device)
    feats, labels, done = [], [], 0
    clock = StageClock(progress, stage, total=len(dataset), items_total=len(dataset))
    for images, y in make_loader(dataset, batch_size=batch_size):
        feats.append(pre_logits(model, images.to(device)).float().cpu())
        labels.append(y)
        done += len(y)
        clock.report(done, done)
    return torch.cat(feats), torch.cat(labels)


@dataclass
class Evaluator:
    """Scores models on ``eval_data`` by :attr:`method` (see the module docstring)."""

    eval_data: object
    method: str
    label_map: np.ndarray | None = None
    probe_data: object | None = None
    batch_size: int = 256
    device: str = "cpu"

    @classmethod
    def for_model(cls, class_names: list[str] | None, eval_data, probe_data=None, batch_size: int = 256,
                  device: str = "cpu") -> "Evaluator":
        dataset_classes = check_labelled(eval_data, "evaluation dataset")
        label_map = head_label_map(class_names, dataset_classes)
        if label_map is not None:
            return cls(eval_data, "head", label_map=label_map, batch_size=batch_size, device=device)
        if probe_data is None:
            raise SettingsError("a linear-probe evaluation needs a labelled dataset to fit the probe on")
        probe_classes = check_labelled(probe_data, "linear-probe training dataset")
        if probe_classes != dataset_classes:
            raise SettingsError(
                f"the probe is fitted on {probe_data.dataset_id} and scored on {eval_data.dataset_id}, whose classes "
                f"differ; use two splits of one dataset"
            )
        return cls(eval_data, "linear-probe", probe_data=probe_data, batch_size=batch_size, device=device)

    def accuracy(self, model: nn.Module, progress: ProgressCallback | None = None, stage: str = "evaluate") -> float:
        """Top-1 of ``model`` on the evaluation dataset (fraction in [0, 1])."""
        device = torch.device(self.device)
        if self.method == "head":
            return self._head_accuracy(model, device, progress, stage)
        from ..training.evaluate import fit_linear_probe

        train_f, train_y = _features(model, self.probe_data, self.batch_size, device, progress, f"{stage}: probe features")
        w, b = fit_linear_probe(train_f, train_y, num_classes=int(train_y.max()) + 1)
        test_f, test_y = _features(model, self.eval_data, self.batch_size, device, progress, stage)
        return float(((test_f @ w.T + b).argmax(1) == test_y).float().mean())

    @torch.inference_mode()
    def _head_accuracy(self, model: nn.Module, device: torch.device, progress: ProgressCallback | None, stage: str) -> float:
        model.eval().to(device)
        mapping = torch.as_tensor(self.label_map)
        correct = total = 0
        clock = StageClock(progress, stage, total=len(self.eval_data), items_total=len(self.eval_data))
        for images, labels in make_loader(self.eval_data, batch_size=self.batch_size):
            predicted = model(images.to(device)).argmax(1).cpu()
            correct += int((predicted == mapping[labels]).sum())
            total += len(labels)
            clock.report(total, total)
        return correct / total if total else float("nan")
