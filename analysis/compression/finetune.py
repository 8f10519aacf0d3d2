"""Short recovery fine-tuning of a factorized model.

Recipe (every parameter trained, the thin factors included; no augmentation; the model's own preprocessing):

- data: a seeded shuffle of the fine-tuning dataset, cycled until ``steps`` optimizer steps are done;
- objective ``labels`` (when the classifier's label space covers the dataset's classes): cross-entropy of the
  model's logits with the labels mapped into that space;
  objective ``distill`` (any model, no labels needed): mean squared error between the compressed model's
  pre-logit features and the dense model's, divided by the dense features' mean square (scale-free);
- AdamW (betas 0.9, 0.999, weight decay 0.01), learning rate warmed up linearly over the first 10 % of the
  steps, then cosine-decayed to 1 % of its peak; gradient-norm clipping at 1.0.

Defaults (``lr = 1e-4``, batch 64) are set for a recovery, not for training: the factorized model starts at
the projection of a trained one, so large steps would throw away what the projection kept.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from ..data.loader import collate, default_num_workers
from ..errors import SettingsError
from ..progress import ProgressCallback, StageClock
from .accuracy import pre_logits

OBJECTIVES = ("labels", "distill")


@dataclass(frozen=True)
class FinetuneSettings:
    steps: int = 0
    lr: float = 1e-4
    batch_size: int = 64
    weight_decay: float = 0.01
    objective: str = "labels"
    seed: int = 0

    def validated(self) -> "FinetuneSettings":
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise SettingsError(f"fine-tuning steps must be a whole number >= 0, got {self.steps!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise SettingsError(f"fine-tuning batch size must be a positive whole number, got {self.batch_size!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise SettingsError(f"fine-tuning learning rate must be in (0, 1), got {self.lr!r}")
        if self.objective not in OBJECTIVES:
            raise SettingsError(f"fine-tuning objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        return self

    def as_dict(self) -> dict:
        return asdict(self)


def _lr_at(step: int, total: int, peak: float) -> float:
    warmup = max(1, total // 10)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = 0.01 * peak
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def finetune(
    model: nn.Module,
    train_data,
    settings: FinetuneSettings,
    *,
    teacher: nn.Module | None = None,
    label_map=None,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Fine-tune ``model`` in place; returns ``{"steps", "loss_first", "loss_last", "seconds"}``.

    ``label_map`` (dataset label -> classifier index) is needed for ``labels``; ``teacher`` for ``distill``.
    """
    settings = settings.validated()
    if settings.steps == 0:
        return {"steps": 0, "loss_first": None, "loss_last": None, "seconds": 0.0}
    if settings.objective == "labels" and label_map is None:
        raise SettingsError("fine-tuning on labels needs a classifier whose classes cover the dataset's; "
                            "use the distill objective")
    if settings.objective == "distill" and teacher is None:
        raise SettingsError("the distill objective needs the dense model as teacher")
    dev = torch.device(device)
    model.to(dev).train()
    for p in model.parameters():
        p.requires_grad_(True)
    if teacher is not None:
        teacher.to(dev).eval()
    mapping = torch.as_tensor(label_map).to(dev) if label_map is not None else None
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr, betas=(0.9, 0.999))
    generator = torch.Generator().manual_seed(settings.seed)
    workers = min(default_num_workers(), 2)
    loader = DataLoader(train_data, batch_size=settings.batch_size, sampler=RandomSampler(train_data, generator=generator),
                        collate_fn=collate, num_workers=workers, drop_last=len(train_data) > settings.batch_size,
                        persistent_workers=False)
    start, step, losses = time.perf_counter(), 0, []
    clock = StageClock(progress, "fine-tune", total=settings.steps)
    while step < settings.steps:
        for images, labels in loader:
            if should_stop is not None and should_stop():
                from ..engine import Cancelled

                raise Cancelled("fine-tuning cancelled")
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, settings.steps, settings.lr)
            x = images.to(dev)
            if settings.objective == "labels":
                loss = F.cross_entropy(model(x), mapping[labels.to(dev)])
            else:
                with torch.no_grad():
                    target = pre_logits(teacher, x).float()
                loss = F.mse_loss(pre_logits(model, x).float(), target) / target.square().mean().clamp_min(1e-12)
            if not torch.isfinite(loss):
                raise SettingsError(f"fine-tuning diverged at step {step + 1} (loss {loss.item()}); lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
            clock.report(step)
            if step >= settings.steps:
                break
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    window = max(1, min(20, len(losses) // 5 or 1))
    return {"steps": step, "loss_first": float(sum(losses[:window]) / window),
            "loss_last": float(sum(losses[-window:]) / window), "seconds": time.perf_counter() - start}
