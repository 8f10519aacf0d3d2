"""The embedded default experience: the zoo's supervised ViT on the embedded Fashion-MNIST test split,
and the comparison set of the three trained regimes plus random initialisation.

``ANALYSIS_DEFAULT_MODEL``, ``ANALYSIS_DEFAULT_DATASET`` and ``ANALYSIS_DEFAULT_SAMPLES`` override the
default (tests use a tiny model; a teaching server may pick its own demo).
"""

from __future__ import annotations

import os

DEFAULT_MODEL = os.environ.get("ANALYSIS_DEFAULT_MODEL", "zoo:vit-fmnist-supervised")
DEFAULT_DATASET = os.environ.get("ANALYSIS_DEFAULT_DATASET", "fashion-mnist:test")
DEFAULT_SAMPLES: int | None = int(os.environ["ANALYSIS_DEFAULT_SAMPLES"]) if os.environ.get("ANALYSIS_DEFAULT_SAMPLES") else None
DEFAULT_COMPARISON: tuple[str, ...] = tuple(
    os.environ.get(
        "ANALYSIS_DEFAULT_COMPARISON",
        "zoo:vit-fmnist-supervised,zoo:vit-fmnist-mae,zoo:vit-fmnist-dino,zoo:vit-fmnist-random",
    ).split(",")
)
