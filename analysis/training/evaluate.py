"""Evaluation of a zoo model on Fashion-MNIST: head top-1, linear-probe top-1, k-NN top-1.

Features are the CLS token after the final LayerNorm (``forward_head(forward_features(x), pre_logits=True)``).

- ``top1``: accuracy of the model's own ``head`` on the test split (for the supervised model, its classifier;
  for MAE/DINO/random, the linear-probe head stored in the checkpoint).
- Linear probe: multinomial logistic regression on frozen features of the train split, features standardised
  with train mean ``mu`` and std ``sigma``; minimises
  ``(1/N) sum_i -log softmax(A z_i + c)_{y_i} + (lam/2) ||A||_F^2`` with ``z = (f - mu) / sigma`` by full-batch
  L-BFGS (deterministic; ``lam = 1e-6``, up to 1000 iterations: with 60k samples and 96 features the
  probe cannot overfit, and stronger L2 or fewer iterations measurably under-fit random features). The standardisation is folded into a plain linear layer on raw features:
  ``W = A / sigma`` (column-wise), ``b = c - W mu``, so the result drops into the ViT's ``head``.
- k-NN (DINO's protocol): L2-normalised features, cosine similarity to every train feature, the ``k = 20``
  nearest vote with weights ``exp(sim / T)``, ``T = 0.07``; the class with the largest summed weight wins.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import common


@torch.inference_mode()
def features(model: torch.nn.Module, split: common.Split, batch_size: int = 500) -> torch.Tensor:
    """CLS features ``[N, D]`` (after the final norm) in eval mode, computed on the model's device, returned on
    the CPU."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(split), batch_size):
        x = common.to_input(split.images[i:i + batch_size].to(device))
        out.append(model.forward_head(model.forward_features(x), pre_logits=True).float().cpu())
    return torch.cat(out)


@torch.inference_mode()
def top1(model: torch.nn.Module, split: common.Split, batch_size: int = 500) -> float:
    """Top-1 accuracy of the model's own head on ``split``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(split), batch_size):
        logits = model(common.to_input(split.images[i:i + batch_size].to(device)))
        correct += int((logits.argmax(1).cpu() == split.labels[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, len(split))


def fit_linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, num_classes: int = 10, lam: float = 1e-6,
                     iters: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression (formula in the module docstring); returns ``(W [C, D], b [C])`` on raw features."""
    with torch.inference_mode(False), torch.enable_grad():
        f = train_f.double().clone()
        mu = f.mean(0)
        sigma = f.std(0).clamp_min(1e-6)
        z = (f - mu) / sigma
        y = train_y.clone()
        a = torch.zeros(num_classes, f.shape[1], dtype=torch.float64, requires_grad=True)
        c = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([a, c], lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(z @ a.T + c, y) + 0.5 * lam * (a * a).sum()
            loss.backward()
            return loss

        opt.step(closure)
        w = (a.detach() / sigma).float()
        b = (c.detach() - (a.detach() / sigma) @ mu).float()
    return w, b


def knn_top1(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
             k: int = 20, temperature: float = 0.07, num_classes: int = 10, chunk: int = 500) -> float:
    """Weighted k-NN accuracy with cosine similarity (see module docstring)."""
    tr = F.normalize(train_f.float(), dim=1)
    te = F.normalize(test_f.float(), dim=1)
    correct = 0
    for i in range(0, te.shape[0], chunk):
        sim = te[i:i + chunk] @ tr.T
        vals, idx = sim.topk(k, dim=1)
        weights = (vals / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes).scatter_add_(1, train_y[idx], weights)
        correct += int((votes.argmax(1) == test_y[i:i + chunk]).sum())
    return correct / max(1, te.shape[0])


def probe_head(model: torch.nn.Module, train: common.Split) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit a linear probe on ``train`` features and return its ``(W, b)`` for the model's ``head``."""
    return fit_linear_probe(features(model, train), train.labels)


def install_head(model: torch.nn.Module, w: torch.Tensor, b: torch.Tensor) -> None:
    with torch.no_grad():
        model.head.weight.copy_(w)
        model.head.bias.copy_(b)


def evaluate(model: torch.nn.Module, train: common.Split, test: common.Split) -> dict[str, float]:
    """``{"head_top1", "linear_probe_top1", "knn_top1"}`` on ``test`` (probe and k-NN fitted on ``train``)."""
    return evaluate_with_probe(model, train, test)[0]


def evaluate_with_probe(model: torch.nn.Module, train: common.Split,
                        test: common.Split) -> tuple[dict[str, float], tuple[torch.Tensor, torch.Tensor]]:
    """:func:`evaluate` and the fitted probe ``(W [C, D], b [C])`` (on the CPU), one feature pass each split."""
    train_f, test_f = features(model, train), features(model, test)
    w, b = fit_linear_probe(train_f, train.labels)
    probe = float(((test_f @ w.T + b).argmax(1) == test.labels).float().mean())
    return {
        "head_top1": round(top1(model, test), 4),
        "linear_probe_top1": round(probe, 4),
        "knn_top1": round(knn_top1(train_f, train.labels, test_f, test.labels), 4),
    }, (w, b)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.training.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("weights", type=Path, help="a zoo-architecture .safetensors file")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(evaluate_file(args.weights, args.train_limit, args.test_limit), indent=2))
    return 0


def evaluate_file(path: Path, train_limit: int | None = None, test_limit: int | None = None) -> dict[str, Any]:
    from ..models.checkpoints import load_into, read_state_dict
    from ..models.zoo import ARCH_NAME, build_vit

    model = build_vit()
    load_into(model, read_state_dict(path), Path(path).name, ARCH_NAME)
    return evaluate(model, common.load_split("train", train_limit), common.load_split("test", test_limit))


if __name__ == "__main__":
    sys.exit(main())
