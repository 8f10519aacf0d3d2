"""``zoo:<name>``: the project's own small ViTs for 28x28 Fashion-MNIST, one architecture, four regimes.

The models (``vit-fmnist-supervised``, ``vit-fmnist-mae``, ``vit-fmnist-dino``, ``vit-fmnist-random``) are
trained by the recipes in :mod:`analysis.training` and published into ``analysis/models/zoo_weights/`` as
safetensors files with a ``manifest.json`` (recipe command, seed, epochs, architecture, sha256, measured
accuracies, wall time, hardware, date) written by ``python -m analysis.training.publish``.

Architecture (identical for every regime, so that utilization differences come from training only):
a timm ``VisionTransformer`` with ``img_size=28, patch_size=4`` (a 7x7 grid: 49 patch tokens + CLS),
``embed_dim=96, depth=6, num_heads=4, mlp_ratio=2`` (about 0.46 M parameters, 1.8 MB in float32) and
``num_classes=10``. Layer names are timm's (``blocks.N.attn.qkv``, ``blocks.N.attn.proj``,
``blocks.N.mlp.fc1``, ``blocks.N.mlp.fc2``, ``patch_embed.proj``, ``head``) so the product's ViT handling
applies unchanged.

Why this size: training runs on a shared 2-core CPU (niced). A measured training step (batch 128) ran at
roughly 180-380 images/s for width 96 against 60-240 images/s for width 128 (same depth, heavy contention
from other jobs), so width 96 buys about 1.6x more epochs in the same CPU time; six blocks keep 24 analysed
linear layers (4 per block) for per-depth utilization charts, and Fashion-MNIST does not need more capacity.

Why ``in_chans=3``: the product turns every grey image into 3 identical channels for every model (one data
pipeline for timm, packaged and zoo models). The zoo models are trained on exactly that input, so the
analysis sees what training saw. Consequence, reported honestly: ``patch_embed.proj`` has ``d_in = 48`` but its
inputs span at most 16 dimensions (the three channels are equal), so its input utilization is at most 1/3 by
construction; the patch embedding is a flagged layer in the MLU anyway (README, section Method).

Checkpoints during training: a manifest entry's ``checkpoints`` list (written by
``python -m analysis.training.publish``) names the points of its training series; ``zoo:<name>?step=<N>`` loads
the one at step ``N`` (float16 files under ``zoo_weights/checkpoints/<name>/``, or another zoo file when the
record says so: step 0 of a model published before checkpoints were kept is ``zoo:vit-fmnist-random``'s
file). Each record carries its own ``model_id``, the id the timeline analyses it under, so a point that is
another zoo model (the initialisation, the final model) reuses that model's cached analysis.

Loading verifies the file's sha256 against the manifest (:class:`CheckpointError` on mismatch); an unknown
name raises :class:`UnknownModelError` listing the zoo; a model in the manifest whose file is absent (or not
trained yet) raises :class:`ModelUnavailableError` with the command that trains and publishes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ..data.fashion_mnist import CLASS_NAMES as FASHION_MNIST_CLASSES
from ..errors import CheckpointError, ModelUnavailableError, UnknownModelError
from .checkpoints import load_into, read_state_dict
from .registry import CatalogueEntry, SourceModel, register_source

ZOO_DIR = Path(__file__).resolve().parent / "zoo_weights"
MANIFEST_PATH = ZOO_DIR / "manifest.json"

ARCH_NAME = "vit_fmnist_p4_d96"
"""Short architecture label used in descriptions and manifests (not a timm registry name)."""

ARCH_KWARGS: dict[str, Any] = {
    "img_size": 28,
    "patch_size": 4,
    "in_chans": 3,
    "num_classes": 10,
    "embed_dim": 96,
    "depth": 6,
    "num_heads": 4,
    "mlp_ratio": 2.0,
    "qkv_bias": True,
    "class_token": True,
    "global_pool": "token",
}
"""Keyword arguments of ``timm.models.vision_transformer.VisionTransformer`` for every zoo model."""

FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530

DATA_CONFIG: dict[str, Any] = {
    "input_size": (3, 28, 28),
    "mean": (FMNIST_MEAN,) * 3,
    "std": (FMNIST_STD,) * 3,
    "interpolation": "bilinear",
    "crop_pct": 1.0,
    "crop_mode": "center",
}
"""timm-style data config of every zoo model: grey repeated to 3 channels, Fashion-MNIST statistics, no resize."""

ZOO_NAMES: tuple[str, ...] = ("vit-fmnist-supervised", "vit-fmnist-mae", "vit-fmnist-dino", "vit-fmnist-random")


def build_vit(seed: int | None = None, **overrides: Any) -> torch.nn.Module:
    """The zoo architecture (``ARCH_KWARGS`` updated by ``overrides``), seeded when ``seed`` is given.

    ``overrides`` is for training-time options that do not change the state dict (``dynamic_img_size`` for
    DINO's small local crops, ``num_classes=0`` never: the head is always kept so every file has one layout).
    """
    from timm.models.vision_transformer import VisionTransformer

    from .sources import MODEL_INIT

    kwargs = {**ARCH_KWARGS, **overrides}
    with MODEL_INIT:  # the global RNG: no other thread's build while this one initialises
        if seed is None:
            return VisionTransformer(**kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return VisionTransformer(**kwargs)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path: str | Path = MANIFEST_PATH) -> dict[str, Any]:
    """The manifest as a dict (``{"models": {name: entry}}``); an absent file reads as an empty zoo."""
    path = Path(path)
    if not path.is_file():
        return {"models": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"zoo manifest {path} is unreadable ({exc}); restore it from git") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise CheckpointError(f"zoo manifest {path} has no 'models' mapping; restore it from git")
    return data


class ZooSource:
    """``zoo:<name>``: a committed checkpoint of the project's Fashion-MNIST ViT zoo, sha256-verified."""

    prefix = "zoo"

    def __init__(self, manifest_path: str | Path = MANIFEST_PATH, weights_dir: str | Path | None = None) -> None:
        self.manifest_path = Path(manifest_path)
        self.weights_dir = Path(weights_dir) if weights_dir is not None else self.manifest_path.parent

    def _entries(self) -> dict[str, dict[str, Any]]:
        return read_manifest(self.manifest_path)["models"]

    def load(self, name: str, options: Mapping[str, str]) -> SourceModel:
        entries = self._entries()
        entry = entries.get(name)
        if entry is None:
            known = ", ".join(f"zoo:{n}" for n in sorted(entries) or ZOO_NAMES)
            raise UnknownModelError(f"the zoo has no model {name!r}; zoo models: {known}")
        command = entry.get("recipe_command") or "see analysis/training"
        unknown = sorted(set(options) - {"step"})
        if unknown:
            raise UnknownModelError(f"zoo:{name} takes only the option step=<N>, not {', '.join(unknown)}")
        if "step" in options:
            return self._load_checkpoint(name, entry, options["step"])
        path = self.weights_dir / str(entry.get("file") or f"{name}.safetensors")
        if not entry.get("sha256") or not path.is_file():
            raise ModelUnavailableError(
                f"zoo:{name} is listed but its weights {path.name} are not here; train and publish it with: "
                f"{command} && python -m analysis.training.publish --run <that --out folder>"
            )
        return self._verified_model(f"zoo:{name}", path, entry["sha256"], entry, self._describe(name, entry))

    def _verified_model(self, label: str, path: Path, sha256: str, entry: Mapping[str, Any],
                        description: str) -> SourceModel:
        actual = sha256_file(path)
        if actual != sha256:
            raise CheckpointError(
                f"{label}: {path.name} has sha256 {actual[:12]}... but the manifest says "
                f"{str(sha256)[:12]}...; the file is damaged or was replaced, restore it from git"
            )
        state = read_state_dict(path)
        model = build_vit(**dict(entry.get("arch_kwargs") or {}))
        load_into(model, state, path.name, ARCH_NAME)  # float16 checkpoints are cast to the float32 model
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in (entry.get("data_config") or DATA_CONFIG).items()}
        return SourceModel(model, ARCH_NAME, description, config, list(FASHION_MNIST_CLASSES))

    def _load_checkpoint(self, name: str, entry: Mapping[str, Any], raw_step: str) -> SourceModel:
        """``zoo:<name>?step=<N>``: the listed checkpoint at step ``N``, sha256-verified."""
        try:
            step = int(raw_step)
        except ValueError:
            raise UnknownModelError(f"zoo:{name}?step={raw_step}: step must be an integer") from None
        records = [c for c in entry.get("checkpoints") or [] if isinstance(c, Mapping)]
        record = next((c for c in records if c.get("step") == step), None)
        if record is None:
            steps = ", ".join(str(c.get("step")) for c in records) or "none"
            raise UnknownModelError(f"zoo:{name} has no checkpoint at step {step}; its checkpoints: {steps}")
        path = self.weights_dir / str(record.get("file"))
        if not record.get("sha256") or not path.is_file():
            raise ModelUnavailableError(f"zoo:{name}?step={step}: its file {record.get('file')} is not here; "
                                        "restore analysis/models/zoo_weights from git")
        description = (f"{self._describe(name, entry)}; checkpoint at step {step} (epoch {record.get('epoch')}), "
                       f"{record.get('dtype', 'float32')} weights from {Path(str(record.get('file'))).name}")
        return self._verified_model(f"zoo:{name}?step={step}", path, record["sha256"], entry, description)

    @staticmethod
    def _describe(name: str, entry: Mapping[str, Any]) -> str:
        acc = entry.get("accuracy") or {}
        parts = [f"{k}={100 * v:.1f}%" for k, v in acc.items() if isinstance(v, (int, float))]
        regime = entry.get("regime", "?")
        return (
            f"project zoo ViT (patch 4, width {ARCH_KWARGS['embed_dim']}, depth {ARCH_KWARGS['depth']}) on "
            f"Fashion-MNIST, {regime} regime, seed {entry.get('seed')}, {entry.get('epochs')} epochs"
            + (f"; test-split {', '.join(parts)}" if parts else "")
            + (f"; head: {entry['head']}" if entry.get("head") else "")
        )

    def catalogue(self) -> Iterable[CatalogueEntry]:
        out = []
        for name, entry in sorted(self._entries().items()):
            path = self.weights_dir / str(entry.get("file") or f"{name}.safetensors")
            if entry.get("sha256") and path.is_file():
                out.append(CatalogueEntry(f"zoo:{name}", self._describe(name, entry), "project zoo (Fashion-MNIST)"))
        return out


register_source(ZooSource())
