"""Fashion-MNIST: ``fashion-mnist:test`` (embedded in the repository, the default) and ``fashion-mnist:train``.

The test split (10,000 images) ships inside the repository under ``analysis/data/embedded/fashion-mnist/``.
The training split (60,000 images) is looked for, in order, under:

1. ``$FASHION_MNIST_ROOT``: a torchvision-style root (``FashionMNIST/raw/``) or a folder holding the files;
2. ``/usr/share/datasets/fashion-mnist/`` (Debian/Ubuntu: ``apt-get install dataset-fashion-mnist``).

Files may be gzip-compressed (``train-images-idx3-ubyte.gz``) or not (``train-images-idx3-ubyte``).
The identity is the sha256 of the file contents (they are small; the hash is cached per path, size and
modification time).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .base import ArraySource, sha256_bytes
from .idx import read_idx
from .families import DatasetEntry, register_family

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded" / "fashion-mnist"
SYSTEM_DIRS: list[Path] = [Path("/usr/share/datasets/fashion-mnist")]
ENV_VAR = "FASHION_MNIST_ROOT"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SPLITS = {"test": ("t10k", 10_000), "train": ("train", 60_000)}


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


@lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=4)
def _read_idx_cached(path: str, size: int, mtime_ns: int) -> np.ndarray:
    return read_idx(path)


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def candidate_dirs(split: str) -> list[Path]:
    """Where the files of ``split`` are looked for, in order."""
    if split == "test":
        return [EMBEDDED_DIR]
    dirs: list[Path] = []
    root = os.environ.get(ENV_VAR)
    if root:
        root_path = Path(root).expanduser()
        dirs += [root_path / "FashionMNIST" / "raw", root_path / "raw", root_path]
    return dirs + list(SYSTEM_DIRS)


def locate(split: str) -> tuple[Path, Path] | None:
    """``(images file, labels file)`` of ``split``, or ``None`` when no candidate folder holds both."""
    prefix = SPLITS[split][0]
    for folder in candidate_dirs(split):
        images = _find_file(folder, f"{prefix}-images-idx3-ubyte")
        labels = _find_file(folder, f"{prefix}-labels-idx1-ubyte")
        if images is not None and labels is not None:
            return images, labels
    return None


def missing_reason(split: str) -> str:
    if split == "test":
        return f"the embedded Fashion-MNIST test split is missing from {EMBEDDED_DIR} (a damaged checkout?)"
    env = os.environ.get(ENV_VAR)
    env_text = f"${ENV_VAR}={env} (looked in FashionMNIST/raw/ and the folder itself)" if env else f"${ENV_VAR} (not set)"
    return (
        f"Fashion-MNIST training split not found: looked in {env_text} and in "
        f"{', '.join(str(d) for d in SYSTEM_DIRS)}; install it with 'apt-get install dataset-fashion-mnist' "
        f"or set {ENV_VAR} to a folder holding train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz"
    )


class FashionMNISTSource(ArraySource):
    """One split of Fashion-MNIST, read from IDX files into memory (28x28 grey, 10 classes)."""

    family = "fashion-mnist"

    def __init__(self, split: str):
        found = locate(split)
        if found is None:
            raise DatasetError(missing_reason(split))
        images_path, labels_path = found
        images = _read_idx_cached(*_stat_key(images_path))
        labels = _read_idx_cached(*_stat_key(labels_path))
        if images.ndim != 3:
            raise DatasetError(f"{images_path} holds an array of shape {images.shape}, expected (N, 28, 28)")
        if labels.ndim != 1:
            raise DatasetError(f"{labels_path} holds an array of shape {labels.shape}, expected (N,)")
        if len(images) != len(labels):
            raise DatasetError(f"{images_path} has {len(images):,} images but {labels_path} has {len(labels):,} labels")
        if len(labels) and int(labels.max()) >= len(CLASS_NAMES):
            raise DatasetError(f"{labels_path} holds label {int(labels.max())}; Fashion-MNIST labels are 0..9")
        identity = sha256_bytes("fashion-mnist", _file_sha256(*_stat_key(images_path)),
                                _file_sha256(*_stat_key(labels_path)))
        where = "embedded" if split == "test" else str(images_path.parent)
        name = "test split" if split == "test" else "training split"
        super().__init__(
            dataset_id=f"fashion-mnist:{split}",
            description=f"Fashion-MNIST {name} ({len(images):,} images, {where})",
            images=images, labels=labels, identity=identity, class_names=list(CLASS_NAMES),
        )

    @classmethod
    def open(cls, arg: str, options: dict[str, str]) -> "FashionMNISTSource":
        split = (arg or "test").strip().lower()
        if split not in SPLITS:
            raise DatasetError(f"Fashion-MNIST has splits 'test' and 'train', not {arg!r} (use fashion-mnist:test)")
        if options:
            raise DatasetError(f"fashion-mnist:{split} takes no options, got {', '.join(sorted(options))}")
        return cls(split)

    @classmethod
    def catalogue(cls) -> list[DatasetEntry]:
        rows = []
        for split, (_, count) in SPLITS.items():
            found = locate(split)
            name = "test split" if split == "test" else "training split"
            where = "embedded" if split == "test" else (str(found[0].parent) if found else "not installed")
            rows.append(DatasetEntry(f"fashion-mnist:{split}", f"Fashion-MNIST {name} ({count:,} images, {where})",
                                     found is not None, "" if found else missing_reason(split)))
        return rows


register_family("fashion-mnist", FashionMNISTSource)
