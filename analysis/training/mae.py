"""MAE recipe: masked-autoencoder pre-training of the zoo ViT encoder on Fashion-MNIST train (labels unused).

Per image, the 49 patch tokens get the encoder's position embedding, a uniformly random 75 % of them are
dropped (12 kept), the CLS token is prepended and the encoder's blocks + final norm run on the 13 tokens.
A light decoder (linear 96 -> 64, learned mask token and position embedding, 2 timm ``Block``s of width 64,
4 heads, MLP ratio 2, LayerNorm, linear 64 -> 16) predicts every patch's 4x4 grey pixels (the 3 input
channels are identical, so one channel is the whole target).

Loss (normalised pixels): for patch ``i`` with pixels ``t_i`` (16 values in [0, 1]),
``t_hat_i = (t_i - mean(t_i)) / sqrt(var(t_i) + 1e-6)`` and
``L = (1 / |M|) sum_{i in M} mean_j (p_ij - t_hat_ij)^2`` over the masked set ``M`` only.
Augmentation: RandomResizedCrop 28 with scale (0.5, 1), horizontal flip. AdamW (betas 0.9, 0.95), warm-up +
cosine. 10 epochs by default: the masked encoder sees 13 of 50 tokens, so an MAE epoch costs about 0.4 of a
supervised one; the budget was set by the shared 2-core CPU, not by convergence.

The published checkpoint is the encoder plus a linear-probe ``head``: logistic regression on the frozen CLS
features of the 60k training images (:func:`analysis.training.evaluate.fit_linear_probe`), so the model's top-1
is its linear-probe top-1. The decoder is dropped (kept in ``<out>/last.pt`` for resuming).

    python -m analysis.training.mae --out zoo_logs/mae --seed 0
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from . import common
from .evaluate import install_head, probe_head

PATCH = 4


class MaeDecoder(nn.Module):
    """Light MAE decoder (see module docstring); ``num_patches`` tokens + CLS."""

    def __init__(self, enc_dim: int, num_patches: int, dim: int = 64, depth: int = 2, heads: int = 4,
                 out_dim: int = PATCH * PATCH) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio=2.0, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, out_dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos_embed, std=0.02)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """``latent`` [B, 1 + keep, D_enc] (CLS first), ``ids_restore`` [B, N] -> predictions [B, N, out_dim]."""
        y = self.embed(latent)
        b, n = ids_restore.shape
        masked = self.mask_token.expand(b, n - (y.shape[1] - 1), -1)
        tokens = torch.cat([y[:, 1:], masked], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, y.shape[2]))
        y = torch.cat([y[:, :1], tokens], dim=1) + self.decoder_pos_embed
        return self.pred(self.norm(self.blocks(y)))[:, 1:]


def encode_masked(model: nn.Module, x: torch.Tensor, keep: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encoder on a random subset of ``keep`` patches per image.

    Returns ``latent`` [B, 1 + keep, D], ``mask`` [B, N] (1 = dropped) and ``ids_restore`` [B, N].
    """
    tokens = model.patch_embed(x)  # [B, N, D]
    b, n, d = tokens.shape
    tokens = tokens + model.pos_embed[:, 1:]
    ids_shuffle = torch.rand(b, n, generator=gen).argsort(dim=1).to(tokens.device)  # drawn on the CPU generator
    ids_restore = ids_shuffle.argsort(dim=1)
    kept = torch.gather(tokens, 1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
    cls = (model.cls_token + model.pos_embed[:, :1]).expand(b, -1, -1)
    h = model.norm(model.blocks(model.norm_pre(torch.cat([cls, kept], dim=1))))
    mask = torch.ones(b, n, device=tokens.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return h, mask, ids_restore


def patchify_grey(x: torch.Tensor) -> torch.Tensor:
    """[B, 28, 28] -> [B, 49, 16]: row-major 4x4 patches (same order as the patch embedding's tokens)."""
    b, h, w = x.shape
    g = h // PATCH
    return x.reshape(b, g, PATCH, g, PATCH).permute(0, 1, 3, 2, 4).reshape(b, g * g, PATCH * PATCH)


def mae_loss(pred: torch.Tensor, grey: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Normalised-pixel MSE over masked patches (formula in the module docstring)."""
    target = patchify_grey(grey)
    mean = target.mean(-1, keepdim=True)
    var = target.var(-1, keepdim=True, unbiased=False)
    target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = ((pred - target) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser("mae", __doc__.splitlines()[0], epochs=10, batch_size=256, lr=1e-3,
                           weight_decay=0.05, warmup_epochs=1.0)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    args = common.parse(p, argv)
    common.setup(args)
    train = common.load_split("train", args.train_limit)
    model = common.build_model(args.seed, args.device)
    num_patches = model.patch_embed.num_patches
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed + 1)
        decoder = MaeDecoder(model.embed_dim, num_patches).to(args.device)
    keep = max(1, int(round(num_patches * (1 - args.mask_ratio))))
    params = [g for m in (model, decoder) for g in common.param_groups(m, args.weight_decay)]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95))
    warmup = int(args.warmup_epochs * max(1, len(train) // args.batch_size))

    def step(images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, t: int, total: int) -> dict:
        lr = common.cosine_lr(t, total, warmup, args.lr, args.lr * 0.01)
        common.set_lr(opt, lr)
        x = common.random_resized_crop(common.to_input(images), gen, 28, (0.5, 1.0))
        grey = (x[:, 0] * common.FMNIST_STD + common.FMNIST_MEAN).clamp(0, 1)  # pixels of the augmented view
        latent, mask, ids_restore = encode_masked(model, x, keep, gen)
        loss = mae_loss(decoder(latent, ids_restore), grey, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(decoder.parameters()), 3.0)
        opt.step()
        return {"loss": loss.item(), "lr": lr}

    checkpointer = common.Checkpointer(args, "mae", lambda: model, probe_as_head=True)
    loop = common.train_loop(args, train, {"model": model, "decoder": decoder}, opt, step, checkpointer=checkpointer)
    model.eval()
    common.log("fitting the linear-probe head on frozen CLS features")
    install_head(model, *probe_head(model, train.subset(args.probe_limit)))
    common.write_outputs(args, "mae", model, loop,
                         head="linear probe (logistic regression on frozen CLS features of the 60k train images)",
                         extra={"mask_ratio": args.mask_ratio})
    return 0


if __name__ == "__main__":
    sys.exit(main())
