"""DINO recipe: self-distillation without labels of the zoo ViT on Fashion-MNIST train.

Student ``g_s`` and teacher ``g_t`` are each the zoo ViT (CLS feature after the final norm, built with
``dynamic_img_size=True`` so 16x16 crops work; the state dict is the same as the plain zoo model) followed by a
projection head: MLP 96 -> 256 -> 256 -> 64 (GELU), L2-normalisation, then a linear layer to ``K = 1024``
prototypes whose weight rows are L2-normalised in every forward (weight normalisation with unit gain).

Multi-crop adapted to 28x28: 2 global crops (RandomResizedCrop to 28, scale (0.4, 1), flip) and 4 local crops
(RandomResizedCrop to 16, scale (0.1, 0.4), flip: a 4x4 token grid, position embeddings resampled by timm).
The teacher sees the global crops only; the student sees all six.

Loss, with centre ``c``, teacher temperature ``tau_t`` and student temperature ``tau_s = 0.1``:
``P_t(x) = softmax((g_t(x) - c) / tau_t)`` (centring + sharpening), ``log P_s(x) = log_softmax(g_s(x) / tau_s)``,
``L = mean over pairs (i global, j any crop, j != i) of -sum_k P_t(x_i)_k log P_s(x_j)_k``.
``tau_t`` rises linearly from 0.04 to 0.07 over the first 30 % of steps (sharper targets early avoid collapse).
Centre (prevents one prototype from dominating): ``c <- m_c c + (1 - m_c) mean_batch g_t(x)``, ``m_c = 0.9``.
Teacher (EMA of the student, no gradients):
``theta_t <- lam theta_t + (1 - lam) theta_s`` after every student step, ``lam`` following a cosine from 0.99 to
1.0 over training. The prototype layer's gradient is zeroed during the first epoch (stabilises the start).
AdamW, warm-up + cosine learning rate, gradient-norm clipping at 3.0. 4 epochs by default: one DINO step costs
about 4 supervised steps (student on 2 global + 4 local crops, teacher forward on 2), and the budget was set by
the 2-core CPU, not by convergence. Measured on that CPU (one thread: 58 images/s, 17 minutes per epoch; two
threads: about 100 images/s, 10 minutes per epoch, when the cores are free). The published run (2026-12-05; epoch 1
on one thread, epochs 2-4 resumed with ``--resume --threads 2``, which replays the interrupted epoch exactly:
loss 3.697 at its first step both times) kept float16 checkpoints at steps 58, 117, 234, 468, 936 and 1872; the
teacher's linear-probe top-1 at each (probe fitted on 10k train images, all 10k test images) was 67.5, 67.8,
69.7, 70.8, 72.4 and 73.2 %, and the final model's 74.5 % under the zoo's protocol (60k / 10k; k-NN 68.2 %;
random initialisation 68.6 %; the run before checkpointing reached 74.3 %): still rising, but slower with every doubling of
the steps (+1.6 points from epoch 1 to 2, +0.8 from epoch 2 to 4). At that pace the 80 % the zoo aims at is out
of reach of any CPU budget here: a job for a GPU (``--epochs N``, and recipe changes measured there; not run, no
GPU was available).

The published checkpoint is the teacher backbone plus a linear-probe ``head`` (logistic regression on its frozen
CLS features of the 60k training images), so the model's top-1 is its linear-probe top-1.

    python -m analysis.training.dino --out zoo_logs/dino --seed 0
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.nn.functional as F
from torch import nn

from . import common
from .evaluate import install_head, probe_head


class DinoHead(nn.Module):
    """Projection head: MLP -> L2-normalise -> weight-normalised linear layer to ``out_dim`` prototypes."""

    def __init__(self, in_dim: int, out_dim: int = 1024, hidden: int = 256, bottleneck: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.prototypes = nn.Linear(bottleneck, out_dim, bias=False)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(self.prototypes.weight, dim=-1))


def cls_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


def dino_loss(student_out: list[torch.Tensor], teacher_out: list[torch.Tensor], center: torch.Tensor,
              tau_s: float, tau_t: float) -> torch.Tensor:
    """Cross-entropy between centred/sharpened teacher and student distributions over crop pairs (docstring)."""
    targets = [F.softmax((t - center) / tau_t, dim=-1) for t in teacher_out]
    logps = [F.log_softmax(s / tau_s, dim=-1) for s in student_out]
    total, pairs = 0.0, 0
    for i, t in enumerate(targets):
        for j, lp in enumerate(logps):
            if i == j:
                continue
            total = total + (-(t * lp).sum(-1)).mean()
            pairs += 1
    return total / pairs


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, lam: float) -> None:
    """``theta_t <- lam theta_t + (1 - lam) theta_s`` for every parameter."""
    for pt, ps in zip(teacher.parameters(), student.parameters()):
        pt.mul_(lam).add_(ps.detach(), alpha=1.0 - lam)


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser("dino", __doc__.splitlines()[0], epochs=4, batch_size=128, lr=5e-4,
                           weight_decay=0.04, warmup_epochs=1.0)
    p.add_argument("--local-crops", type=int, default=4)
    p.add_argument("--out-dim", type=int, default=1024)
    args = common.parse(p, argv)
    common.setup(args)
    train = common.load_split("train", args.train_limit)
    student = common.build_model(args.seed, args.device, dynamic_img_size=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed + 1)
        s_head = DinoHead(student.embed_dim, args.out_dim).to(args.device)
    teacher, t_head = copy.deepcopy(student), copy.deepcopy(s_head)
    for m in (teacher, t_head):
        m.requires_grad_(False)
    center = torch.zeros(1, args.out_dim, device=args.device)
    params = [g for m in (student, s_head) for g in common.param_groups(m, args.weight_decay)]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999))
    steps_per_epoch = max(1, len(train) // args.batch_size)
    warmup = int(args.warmup_epochs * steps_per_epoch)
    tau_s, tau_t0, tau_t1, m_center = 0.1, 0.04, 0.07, 0.9

    def step(images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, t: int, total: int) -> dict:
        lr = common.cosine_lr(t, total, warmup, args.lr, args.lr * 0.01)
        common.set_lr(opt, lr)
        x = common.to_input(images)
        globals_ = [common.random_resized_crop(x, gen, 28, (0.4, 1.0)) for _ in range(2)]
        locals_ = [common.random_resized_crop(x, gen, 16, (0.1, 0.4)) for _ in range(args.local_crops)]
        b = x.shape[0]
        with torch.no_grad():
            t_out = t_head(cls_features(teacher, torch.cat(globals_))).chunk(2)
        s_out = list(s_head(cls_features(student, torch.cat(globals_))).chunk(2))
        if locals_:
            s_out += list(s_head(cls_features(student, torch.cat(locals_))).split(b))
        tau_t = tau_t0 + (tau_t1 - tau_t0) * min(1.0, t / max(1, int(0.3 * total)))
        loss = dino_loss(s_out, list(t_out), center, tau_s, tau_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t < steps_per_epoch:
            s_head.prototypes.weight.grad = None
        torch.nn.utils.clip_grad_norm_(list(student.parameters()) + list(s_head.parameters()), 3.0)
        opt.step()
        lam = common.cosine_ramp(t, total, 0.99, 1.0)
        ema_update(teacher, student, lam)
        ema_update(t_head, s_head, lam)
        with torch.no_grad():
            center.mul_(m_center).add_(torch.cat(t_out).mean(0, keepdim=True), alpha=1 - m_center)
            entropy = -(F.softmax((torch.cat(t_out) - center) / tau_t, -1).mean(0).clamp_min(1e-12).log()
                        * F.softmax((torch.cat(t_out) - center) / tau_t, -1).mean(0)).sum()
        return {"loss": loss.item(), "lr": lr, "tau_t": tau_t, "ema": lam, "teacher_batch_entropy": entropy.item()}

    checkpointer = common.Checkpointer(args, "dino", lambda: teacher, probe_as_head=True)  # the published backbone
    loop = common.train_loop(args, train, {"student": student, "student_head": s_head, "teacher": teacher,
                                           "teacher_head": t_head}, opt, step, extra_state={"center": center},
                             checkpointer=checkpointer)
    model = common.build_model(args.seed, args.device)
    model.load_state_dict(teacher.state_dict())
    model.eval()
    common.log("fitting the linear-probe head on frozen CLS features of the teacher")
    install_head(model, *probe_head(model, train.subset(args.probe_limit)))
    common.write_outputs(args, "dino", model, loop,
                         head="linear probe (logistic regression on frozen CLS features of the 60k train images), "
                              "backbone = DINO teacher",
                         extra={"local_crops": args.local_crops, "out_dim": args.out_dim})
    return 0


if __name__ == "__main__":
    sys.exit(main())
