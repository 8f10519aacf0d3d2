"""Supervised recipe: the zoo ViT trained with cross-entropy on Fashion-MNIST train (60k).

Loss: label-smoothed cross-entropy, ``L = -sum_c q_c log softmax(z)_c`` with ``q = (1 - eps) onehot(y) + eps / C``
(``eps = 0.1``). Augmentation: random 28x28 crop after zero-padding by 2, horizontal flip (p = 1/2).
Optimiser: AdamW (betas 0.9, 0.999; no decay on biases/norms/embeddings), linear warm-up then cosine decay of
the learning rate per step, gradient-norm clipping at 1.0.

Budget: 25 epochs of batch 256 (5850 steps). A first 10-epoch run of this recipe ended at 87.1 % test top-1 with
training accuracy no higher than test accuracy (under-fitted, not over-fitted), so the budget, not the recipe,
was raised. An epoch takes about 3 minutes on 2 quiet CPU threads (~350 images/s), 4.5 minutes on one. The
test-split top-1 is logged after every epoch for monitoring only: no choice is made on it, the last epoch is
what is published.

    python -m analysis.training.supervised --out zoo_logs/supervised --seed 0 --epochs 25
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from . import common
from .evaluate import top1


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser("supervised", __doc__.splitlines()[0], epochs=25, batch_size=256, lr=2e-3,
                           weight_decay=0.05, warmup_epochs=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--eval-every-epoch", type=int, default=1, help="1: log test top-1 after each epoch")
    args = common.parse(p, argv)
    common.setup(args)
    train = common.load_split("train", args.train_limit)
    test = common.load_split("test", None if args.train_limit is None else min(args.train_limit, 10000))
    model = common.build_model(args.seed, args.device)
    opt = torch.optim.AdamW(common.param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.999))
    warmup = int(args.warmup_epochs * max(1, len(train) // args.batch_size))

    def step(images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, t: int, total: int) -> dict:
        lr = common.cosine_lr(t, total, warmup, args.lr, args.lr * 0.01)
        common.set_lr(opt, lr)
        x = common.crop_flip(common.to_input(images), gen)
        logits = model(x)
        loss = F.cross_entropy(logits, labels, label_smoothing=args.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return {"loss": loss.item(), "acc": (logits.argmax(1) == labels).float().mean().item(), "lr": lr}

    def epoch_end(epoch: int) -> str:
        if not args.eval_every_epoch:
            return ""
        return f"test_top1={top1(model, test):.4f}"

    checkpointer = common.Checkpointer(args, "supervised", lambda: model, probe_as_head=False)
    loop = common.train_loop(args, train, {"model": model}, opt, step, epoch_end=epoch_end, checkpointer=checkpointer)
    model.eval()
    common.write_outputs(args, "supervised", model, loop, head="supervised classifier trained end-to-end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
