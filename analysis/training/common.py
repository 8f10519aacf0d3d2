"""Shared pieces of the zoo recipes: data in memory, batched augmentation, schedules, resumable loop, outputs.

Data: Fashion-MNIST idx files are read with :func:`analysis.data.idx.read_idx` into one uint8 tensor
(60k x 28 x 28 is 47 MB), and every batch is augmented and normalised with tensor ops, so no data loader
workers are needed on a 2-core machine.

Determinism: every random choice of epoch ``e`` comes from ``torch.Generator().manual_seed(seed * 1000 + e)``
(permutation, crops, flips, masks), the model is built from ``seed``, and ``torch.use_deterministic_algorithms``
is on. Resuming from the epoch checkpoint therefore replays exactly the same remaining epochs.

Device: ``--device auto`` (the default) trains on the GPU when CUDA is available, else on the CPU. The random
draws always come from the CPU generator and are moved to the device, so a GPU run sees the same crops, flips,
masks and batches as a CPU run (its arithmetic differs only by floating-point order). Batches are moved to
the device one at a time; checkpoints and published weights are written from CPU copies.

Checkpoints during training (:class:`Checkpointer`): the backbone is saved at log-spaced points
(:func:`checkpoint_steps`): step 0 (before any update), after 1/8, 1/4 and 1/2 of the first epoch (where
early training moves fastest), then after epochs 1, 2, 4, 8, ... and after the last epoch (or the last step of
a ``--max-steps`` run), as ``<out>/checkpoints/step_<step:06d>.safetensors`` in float16 (``--checkpoint-dtype``), with the step,
epoch, regime, seed and accuracies in the safetensors metadata (so the folder is a ``folder-of-checkpoints:``
series for :func:`analysis.timeline`), and one record per checkpoint (file, step, epoch, sha256,
linear-probe and k-NN top-1) in ``<out>/checkpoints.json``. float16 keeps 10 mantissa bits: weights reload to
within a relative 2^-11 of the float32 values, which changes no analysed rank materially but is not an exact
reload (the published final model stays float32). A zoo ViT checkpoint is 0.92 MB in float16. The accuracies
at a checkpoint come from :func:`analysis.training.evaluate.evaluate` with the probe and k-NN fitted on the first
``--checkpoint-probe-limit`` training images (default 10000; 0 turns the evaluation off) and measured on the
first ``--checkpoint-test-limit`` test images (default all 10k); the self-supervised regimes store that
probe as the checkpoint's ``head``.

Schedule: linear warm-up from 0 to ``lr`` over ``warmup`` steps, then cosine decay to ``min_lr``:
``lr(t) = min_lr + (lr - min_lr) * (1 + cos(pi * (t - warmup) / (total - warmup))) / 2``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.idx import read_idx
from ..models.zoo import ARCH_KWARGS, FMNIST_MEAN, FMNIST_STD, build_vit

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_DIR = Path("/usr/share/datasets/fashion-mnist")
TEST_DIR = REPO_ROOT / "analysis" / "data" / "embedded" / "fashion-mnist"


@dataclass
class Split:
    """Images as uint8 ``[N, 28, 28]`` and labels as int64 ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, limit: int | None) -> "Split":
        if limit is None or limit >= len(self):
            return self
        return Split(self.images[:limit], self.labels[:limit])


def load_split(split: str, limit: int | None = None) -> Split:
    """``train`` (60k, from the Debian dataset package) or ``test`` (10k, embedded in the repository)."""
    if split == "train":
        folder, stem = TRAIN_DIR, "train"
    elif split == "test":
        folder, stem = TEST_DIR, "t10k"
    else:
        raise ValueError(f"unknown split {split!r}")
    images = read_idx(folder / f"{stem}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{stem}-labels-idx1-ubyte.gz")
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))).subset(limit)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 28, 28]`` -> float ``[B, 3, 28, 28]``: ``(x / 255 - mean) / std``, grey repeated 3 times."""
    x = (images.float().div_(255.0) - FMNIST_MEAN) / FMNIST_STD
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop of the original size after zero-padding by ``pad`` (in normalised space the pad value is the
    normalised black, i.e. ``-mean/std``), then a horizontal flip with probability 1/2."""
    b, c, h, w = x.shape
    fill = -FMNIST_MEAN / FMNIST_STD
    padded = F.pad(x, (pad, pad, pad, pad), value=fill)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dev = x.device
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(dev)  # [B, H]
    cols = (dx[:, None] + torch.arange(w)[None, :]).to(dev)  # [B, W]
    out = padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    flip = (torch.rand(b, generator=gen) < 0.5).to(dev)
    out[flip] = out[flip].flip(-1)
    return out


def random_resized_crop(
    x: torch.Tensor,
    gen: torch.Generator,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> torch.Tensor:
    """Batched RandomResizedCrop with bilinear resampling via an affine sampling grid.

    Per image: area fraction ``s ~ U(scale)``, log aspect ``log r ~ U(log ratio)``; crop width/height (as fractions
    of the image) ``w = sqrt(s r)``, ``h = sqrt(s / r)`` clipped to 1; centre uniform such that the crop lies
    inside. The affine map sends output coordinates in [-1, 1] to ``centre + half-size * coords``.
    """
    b = x.shape[0]
    s = torch.empty(b).uniform_(scale[0], scale[1], generator=gen)
    logr = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    r = logr.exp()
    w = (s * r).sqrt().clamp(max=1.0)
    h = (s / r).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, generator=gen) * 2 - 1) * (1 - h)
    sx = w.clone()
    if flip:
        sx = torch.where(torch.rand(b, generator=gen) < 0.5, -sx, sx)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), [b, x.shape[1], size, size], align_corners=False)
    fill = -FMNIST_MEAN / FMNIST_STD
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def cosine_lr(step: int, total: int, warmup: int, lr: float, min_lr: float = 0.0) -> float:
    """Linear warm-up then cosine decay (formula in the module docstring)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_ramp(step: int, total: int, start: float, end: float) -> float:
    """``end - (end - start) * (1 + cos(pi t / T)) / 2``: from ``start`` at t=0 to ``end`` at t=T (EMA momentum)."""
    progress = min(1.0, step / max(1, total))
    return end - (end - start) * 0.5 * (1.0 + math.cos(math.pi * progress))


def base_parser(regime: str, description: str, *, epochs: int, batch_size: int, lr: float, weight_decay: float,
                warmup_epochs: float) -> argparse.ArgumentParser:
    """Arguments every recipe takes; ``--out`` holds ``last.pt`` (resume state), ``train.log``,
    ``model.safetensors`` and ``run.json``."""
    p = argparse.ArgumentParser(prog=f"python -m analysis.training.{regime}", description=description)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "zoo_logs" / regime)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--weight-decay", type=float, default=weight_decay)
    p.add_argument("--warmup-epochs", type=float, default=warmup_epochs)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when available, else cpu")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.add_argument("--train-limit", type=int, default=None, help="use the first N training images (smoke tests)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (smoke tests)")
    p.add_argument("--probe-limit", type=int, default=None,
                   help="images used to fit the linear-probe head (default: all training images)")
    p.add_argument("--checkpoint-probe-limit", type=int, default=10000,
                   help="training images for the probe / k-NN at intermediate checkpoints (0: no evaluation)")
    p.add_argument("--checkpoint-test-limit", type=int, default=None,
                   help="test images for the accuracies at intermediate checkpoints (default: all 10k)")
    p.add_argument("--checkpoint-dtype", choices=("float16", "bfloat16"), default="float16",
                   help="storage dtype of the intermediate checkpoints")
    return p


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv`` (default: the command line) and remember it for the recipe command in ``run.json``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    return args


def setup(args: argparse.Namespace) -> None:
    torch.set_num_threads(max(1, args.threads))
    if args.device == "cuda":  # cuBLAS needs a fixed workspace to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_loop(
    args: argparse.Namespace,
    data: Split,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    step_fn: Callable[[torch.Tensor, torch.Tensor, torch.Generator, int, int], dict[str, float]],
    extra_state: dict[str, torch.Tensor] | None = None,
    epoch_end: Callable[[int], str] | None = None,
    checkpointer: "Checkpointer | None" = None,
) -> dict[str, Any]:
    """Run ``args.epochs`` epochs of ``step_fn(images_uint8, labels, generator, step, total_steps)``.

    ``step_fn`` sets the learning rate, does forward/backward/step and returns scalars to log. After every
    epoch ``modules``, the optimizer, ``extra_state`` (buffers such as DINO's centre), the epoch and the
    accumulated training seconds go atomically to ``<out>/last.pt``; ``--resume`` restores them.
    ``checkpointer`` (optional) saves the backbone at the log-spaced steps of :func:`checkpoint_steps` and the last one
    (its evaluation time is not counted in ``train_seconds``).
    Returns ``{"epochs_done", "train_seconds", "steps"}``.
    """
    extra_state = extra_state if extra_state is not None else {}
    steps_per_epoch = max(1, len(data) // args.batch_size)
    total = steps_per_epoch * args.epochs
    start_epoch, seconds = 0, 0.0
    ckpt = args.out / "last.pt"
    if args.resume and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        for key, module in modules.items():
            module.load_state_dict(state["modules"][key])
        optimizer.load_state_dict(state["optimizer"])
        for key, tensor in extra_state.items():
            tensor.copy_(state["extra"][key])
        start_epoch, seconds = int(state["epoch"]), float(state["train_seconds"])
        log(f"resumed from {ckpt} at epoch {start_epoch}/{args.epochs}")
    elif args.resume:
        log(f"--resume given but {ckpt} does not exist; starting from scratch")
    step = start_epoch * steps_per_epoch
    if checkpointer is not None:
        checkpointer.plan(steps_per_epoch)
    if checkpointer is not None and step == 0:
        checkpointer.save(0, 0.0)
    for epoch in range(start_epoch, args.epochs):
        for m in modules.values():
            m.train()
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        perm = torch.randperm(len(data), generator=gen)
        t0, sums, n = time.time(), {}, 0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            out = step_fn(data.images[idx].to(args.device), data.labels[idx].to(args.device), gen, step, total)
            step += 1
            n += 1
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if checkpointer is not None and i + 1 < steps_per_epoch and checkpointer.wanted(step):
                checkpointer.save(step, round(step / steps_per_epoch, 4))  # a point inside the first epoch
            if i % 50 == 0:
                log(f"epoch {epoch + 1}/{args.epochs} step {i}/{steps_per_epoch} "
                    + " ".join(f"{k}={v:.4g}" for k, v in out.items())
                    + f" {(i + 1) * args.batch_size / (time.time() - t0):.0f} img/s")
            if args.max_steps is not None and step >= args.max_steps:
                break
        seconds += time.time() - t0
        msg = epoch_end(epoch) if epoch_end else ""
        stopped = args.max_steps is not None and step >= args.max_steps
        if checkpointer is not None and (checkpointer.wanted(step) or stopped or epoch + 1 == args.epochs):
            checkpointer.save(step, round(step / steps_per_epoch, 4))
        save_atomic({
            "modules": {k: m.state_dict() for k, m in modules.items()},
            "optimizer": optimizer.state_dict(),
            "extra": {k: t.clone() for k, t in extra_state.items()},
            "epoch": epoch + 1,
            "train_seconds": seconds,
        }, ckpt)
        log(f"epoch {epoch + 1} done in {time.time() - t0:.0f}s: "
            + " ".join(f"{k}={v / max(n, 1):.4g}" for k, v in sums.items()) + (f" {msg}" if msg else ""))
        if args.max_steps is not None and step >= args.max_steps:
            break
    return {"epochs_done": args.epochs, "train_seconds": seconds, "steps": step}


CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_RECORDS = "checkpoints.json"
CHECKPOINT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def checkpoint_epochs(epochs: int) -> list[int]:
    """The log-spaced epochs: ``[0, 1, 2, 4, 8, ..., epochs]`` (powers of two below ``epochs``, then ``epochs``)."""
    out, e = [0], 1
    while e < epochs:
        out.append(e)
        e *= 2
    if epochs > 0:
        out.append(epochs)
    return out


FIRST_EPOCH_FRACTIONS = (1 / 8, 1 / 4, 1 / 2)
"""Points inside the first epoch, as fractions of it: the schedule stays log-spaced in steps down to 1/8 epoch."""


def checkpoint_steps(steps_per_epoch: int, epochs: int) -> list[int]:
    """The log-spaced schedule in optimizer steps: 0, then ``FIRST_EPOCH_FRACTIONS`` of the first epoch
    (rounded down, at least step 1), then the ends of the epochs of :func:`checkpoint_epochs`.

    E.g. 234 steps per epoch, 25 epochs: ``[0, 29, 58, 117, 234, 468, 936, 1872, 3744, 5850]``."""
    inside = [max(1, int(steps_per_epoch * f)) for f in FIRST_EPOCH_FRACTIONS] if epochs > 0 else []
    ends = [e * steps_per_epoch for e in checkpoint_epochs(epochs)]
    return sorted(set([0] + [s for s in inside if s < steps_per_epoch] + ends))


class Checkpointer:
    """Saves the zoo-layout backbone at the schedule's points with its accuracies (module docstring).

    ``backbone()`` returns the module whose state dict is the zoo layout (the model; DINO's teacher);
    ``probe_as_head``: store the fitted linear probe as the checkpoint's ``head`` (self-supervised regimes,
    whose own head is never trained). Records survive ``--resume`` (``<out>/checkpoints.json``); a fresh run
    starts a new list.
    """

    def __init__(self, args: argparse.Namespace, regime: str, backbone: Callable[[], torch.nn.Module],
                 probe_as_head: bool) -> None:
        self.args, self.regime, self.backbone, self.probe_as_head = args, regime, backbone, probe_as_head
        self.dir = args.out / CHECKPOINT_DIR
        self.records_path = args.out / CHECKPOINT_RECORDS
        self.records: list[dict[str, Any]] = []
        if args.resume and self.records_path.is_file():
            self.records = json.loads(self.records_path.read_text())
        self._data: tuple[Split, Split] | None = None
        self.schedule: set[int] = set()

    def plan(self, steps_per_epoch: int) -> None:
        """Fix the schedule for a run of ``steps_per_epoch`` x ``args.epochs`` steps (:func:`checkpoint_steps`)."""
        self.schedule = set(checkpoint_steps(steps_per_epoch, self.args.epochs))

    def wanted(self, step: int) -> bool:
        return step in self.schedule

    def _eval_data(self) -> tuple[Split, Split]:
        if self._data is None:
            self._data = (load_split("train", self.args.checkpoint_probe_limit),
                          load_split("test", self.args.checkpoint_test_limit))
        return self._data

    def save(self, step: int, epoch: float) -> dict[str, Any]:
        """Evaluate (unless turned off) and write the checkpoint of ``step``; a step already recorded is kept."""
        from safetensors.torch import save_file

        from ..models.zoo import sha256_file
        from .evaluate import evaluate_with_probe, install_head

        for record in self.records:
            if record["step"] == step:
                return record
        model = build_vit(seed=0)  # seeded: building must not draw from the training's global RNG
        model.load_state_dict({k: v.detach().cpu() for k, v in self.backbone().state_dict().items()})
        model = model.to(self.args.device).eval()
        accuracy, evaluation, head = None, None, "the regime's own head"
        if self.args.checkpoint_probe_limit:
            train, test = self._eval_data()
            accuracy, (w, b) = evaluate_with_probe(model, train, test)
            evaluation = {"train_images": len(train), "test_images": len(test)}
            if self.probe_as_head:
                install_head(model, w.to(self.args.device), b.to(self.args.device))
                accuracy["head_top1"] = accuracy["linear_probe_top1"]
                head = f"linear probe fitted on {len(train)} train images"
        elif self.probe_as_head:
            head = "untrained (initialisation): no evaluation at this checkpoint"
        dtype = CHECKPOINT_DTYPES[self.args.checkpoint_dtype]
        state = {k: (v.detach().cpu().to(dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
                 for k, v in model.state_dict().items()}
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"step_{step:06d}.safetensors"
        tmp = path.with_name(path.name + ".tmp")
        save_file(state, str(tmp), metadata={"regime": self.regime, "seed": str(self.args.seed), "step": str(step),
                                             "epoch": str(epoch), "dtype": self.args.checkpoint_dtype,
                                             "arch": json.dumps(ARCH_KWARGS),
                                             **{k: str(v) for k, v in (accuracy or {}).items()}})
        os.replace(tmp, path)
        record = {"file": f"{CHECKPOINT_DIR}/{path.name}", "step": step, "epoch": epoch,
                  "sha256": sha256_file(path), "size_bytes": path.stat().st_size, "dtype": self.args.checkpoint_dtype,
                  "head": head, "accuracy": accuracy, "evaluation": evaluation}
        self.records = sorted(self.records + [record], key=lambda r: r["step"])
        tmp_json = self.records_path.with_name(self.records_path.name + ".tmp")
        tmp_json.write_text(json.dumps(self.records, indent=2) + "\n")
        os.replace(tmp_json, self.records_path)
        log(f"checkpoint step {step} (epoch {epoch:g}) -> {path.name}"
            + (f" probe={accuracy['linear_probe_top1']:.4f} knn={accuracy['knn_top1']:.4f}" if accuracy else ""))
        return record


def hardware(device: str = "cpu") -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    host = f"{cpu}, {os.cpu_count()} logical CPUs (shared, niced), torch {torch.__version__}"
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (CUDA), {host}"
    return f"{host} CPU, {torch.get_num_threads()} threads"


def write_outputs(args: argparse.Namespace, regime: str, model: torch.nn.Module, loop: dict[str, Any],
                  head: str, extra: dict[str, Any] | None = None, module: str | None = None) -> Path:
    """Write ``<out>/model.safetensors`` (the full zoo-architecture state dict) and ``<out>/run.json``."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    path = args.out / "model.safetensors"
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"regime": regime, "seed": str(args.seed), "arch": json.dumps(ARCH_KWARGS)})
    os.replace(tmp, path)
    argv = [a for a in getattr(args, "argv", sys.argv[1:]) if a != "--resume"]
    info = {
        "regime": regime,
        "seed": args.seed,
        "epochs": args.epochs,
        "recipe_command": f"python -m analysis.training.{module or regime} " + shlex.join(
            _relative_argv(argv)),
        "hyperparameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                            if k not in {"resume", "out", "argv"}},
        "train_seconds": round(loop["train_seconds"], 1),
        "steps": loop["steps"],
        "hardware": hardware(args.device),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "head": head,
        "checkpoints": CHECKPOINT_RECORDS if (args.out / CHECKPOINT_RECORDS).is_file() else None,
        **(extra or {}),
    }
    (args.out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"wrote {path} and run.json")
    return path


def _relative_argv(argv: list[str]) -> list[str]:
    out = []
    for a in argv:
        try:
            p = Path(a)
            if p.is_absolute() and REPO_ROOT in p.parents:
                a = str(p.relative_to(REPO_ROOT))
        except ValueError:
            pass
        out.append(a)
    return out


def build_model(seed: int, device: str | torch.device = "cpu", **overrides: Any) -> torch.nn.Module:
    """The zoo ViT, seeded (initialised on the CPU, so every device starts from the same weights)."""
    return build_vit(seed=seed, **overrides).to(device)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms, position embedding and tokens (1-D or embedding params)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "mask_token", "decoder_pos_embed")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
