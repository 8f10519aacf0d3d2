"""The defaults: the method's energy (:data:`DEFAULT_ENERGY`), and the embedded default experience (the zoo's
supervised ViT on the embedded Fashion-MNIST test split, and the comparison set of the three trained regimes
plus random initialisation).

``ANALYSIS_DEFAULT_MODEL``, ``ANALYSIS_DEFAULT_DATASET``, ``ANALYSIS_DEFAULT_SAMPLES`` (a positive integer)
and ``ANALYSIS_DEFAULT_COMPARISON`` (comma-separated model ids) override the default (tests use a tiny
model; a teaching server may pick its own demo). They are read when used: the functions below, or the
module attributes ``DEFAULT_MODEL``, ``DEFAULT_DATASET``, ``DEFAULT_SAMPLES`` and ``DEFAULT_COMPARISON``,
which call them on every access. A malformed value is a :class:`~analysis.errors.SettingsError`.
"""

from __future__ import annotations

from typing import Callable

from .environment import env_int, env_text

DEFAULT_ENERGY = 0.99
"""The default energy of the method, ``e_in = e_out`` (README, section Method): the one place it is written."""

BUILTIN_MODEL = "zoo:vit-fmnist-supervised"
BUILTIN_DATASET = "fashion-mnist:test"
BUILTIN_COMPARISON = "zoo:vit-fmnist-supervised,zoo:vit-fmnist-mae,zoo:vit-fmnist-dino,zoo:vit-fmnist-random"


def default_model() -> str:
    return env_text("ANALYSIS_DEFAULT_MODEL", BUILTIN_MODEL)


def default_dataset() -> str:
    return env_text("ANALYSIS_DEFAULT_DATASET", BUILTIN_DATASET)


def default_samples() -> int | None:
    """None: every image of the default dataset."""
    return env_int("ANALYSIS_DEFAULT_SAMPLES", None, minimum=1)


def default_comparison() -> tuple[str, ...]:
    return tuple(m.strip() for m in env_text("ANALYSIS_DEFAULT_COMPARISON", BUILTIN_COMPARISON).split(",") if m.strip())


_READERS: dict[str, Callable[[], object]] = {
    "DEFAULT_MODEL": default_model,
    "DEFAULT_DATASET": default_dataset,
    "DEFAULT_SAMPLES": default_samples,
    "DEFAULT_COMPARISON": default_comparison,
}


def __getattr__(name: str) -> object:
    """``defaults.DEFAULT_MODEL`` and the others: read from the environment at each access."""
    reader = _READERS.get(name)
    if reader is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return reader()
