"""The dataset object every analysis reads: a seeded selection from an image source, with the model's transform.

An :class:`ImageSource` is an indexable collection of ``(raw image, label)`` pairs (raw image: PIL image or
``uint8`` array; label: ``int``, ``-1`` when unlabelled). Each source family (Fashion-MNIST, folders,
CIFAR, ...) implements one small subclass. :class:`AnalysisDataset` selects a seeded, sorted subset of a
source's indices, applies a model's own transform, and carries the identity the cache keys on:

``fingerprint = sha256(source identity, source size, selected indices)``

where the source identity is a content hash for small files and a hash of relative paths, sizes and
modification times for big folders (see each source).
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image

from ..errors import DatasetError, SettingsError
from .transforms import ImageTransform


class ImageSource:
    """An indexable collection of ``(raw image, label)``; subclasses fill in the attributes and methods.

    Attributes: ``dataset_id`` (canonical id), ``description`` (one line for UIs), ``class_names``
    (list of names indexed by label, or ``None`` when unlabelled).
    """

    dataset_id: str = ""
    description: str = ""
    class_names: list[str] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def image(self, index: int) -> Image.Image | np.ndarray:
        """The raw image at ``index``; raises :class:`DatasetError` naming the item if it cannot be read."""
        raise NotImplementedError

    def labels(self) -> np.ndarray:
        """All labels as an int64 array (``-1`` for unlabelled items), without reading any image."""
        raise NotImplementedError

    def identity(self) -> str:
        """A string that changes whenever the source's data changes (content hash or stat-based)."""
        raise NotImplementedError

    def item_name(self, index: int) -> str:
        """How to name item ``index`` in an error message (a file path for folders)."""
        return f"image {index} of {self.dataset_id}"


class ArraySource(ImageSource):
    """A source held in memory: ``images`` uint8 ``(N, H, W)`` or ``(N, H, W, 3)``, ``labels`` int ``(N,)``.

    ``identity`` is a sha256 of the given identity parts (typically the content hash of the files read).
    """

    def __init__(self, dataset_id: str, description: str, images: np.ndarray, labels: np.ndarray,
                 identity: str, class_names: list[str] | None = None):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] != 3):
            raise DatasetError(f"{dataset_id}: images must be uint8 (N, H, W[, 3]), got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise DatasetError(f"{dataset_id}: {len(images)} images but {len(labels)} labels")
        self.dataset_id = dataset_id
        self.description = description
        self.class_names = class_names
        self._images = images
        self._labels = np.asarray(labels, dtype=np.int64)
        self._identity = identity
        if class_names is not None and len(self._labels):
            low, high = int(self._labels.min()), int(self._labels.max())
            if low < 0 or high >= len(class_names):
                raise DatasetError(f"{dataset_id}: labels range {low}..{high} outside 0..{len(class_names) - 1}")

    def __len__(self) -> int:
        return len(self._images)

    def image(self, index: int) -> np.ndarray:
        return self._images[index]

    def labels(self) -> np.ndarray:
        return self._labels

    def identity(self) -> str:
        return self._identity


def sha256_bytes(*parts: bytes | str) -> str:
    """sha256 hex of the parts, each length-prefixed so that boundaries cannot be confused."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else bytes(part)
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def select_indices(source_size: int, samples: int | None, seed: int, dataset_id: str = "the dataset") -> np.ndarray:
    """The sorted source indices of a seeded subsample.

    ``samples=None`` selects everything; otherwise the first ``samples`` entries of
    ``np.random.default_rng(seed).permutation(source_size)``, sorted.
    """
    if samples is None:
        return np.arange(source_size, dtype=np.int64)
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)):
        raise SettingsError(f"samples must be a positive whole number or None, got {samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SettingsError(f"seed must be a non-negative whole number, got {seed!r}")
    if samples <= 0:
        raise SettingsError(f"samples must be at least 1, got {samples}")
    if samples > source_size:
        raise DatasetError(
            f"{dataset_id} has only {source_size:,} images; cannot draw {samples:,} samples "
            f"(ask for {source_size:,} images or fewer, or for every image)"
        )
    chosen = np.random.default_rng(int(seed)).permutation(source_size)[: int(samples)]
    return np.sort(chosen).astype(np.int64)


def dataset_fingerprint(source_identity: str, source_size: int, indices: np.ndarray) -> str:
    """sha256 over the source identity, its size and the selected indices (little-endian int64)."""
    return sha256_bytes(
        "analysis-dataset-v1", source_identity, str(int(source_size)),
        np.ascontiguousarray(indices, dtype="<i8").tobytes(),
    )


class AnalysisDataset(torch.utils.data.Dataset):
    """A seeded selection of a source's images, transformed with one model's own preprocessing.

    ``ds[i]`` is ``(image, label)``: ``image`` a float32 tensor ``(C, H, W)``, ``label`` an ``int``
    (``-1`` when unlabelled). Images are read lazily; an unreadable one raises :class:`DatasetError`
    naming it.
    """

    def __init__(self, source: ImageSource, indices: np.ndarray, data_config: Mapping[str, Any] | None = None,
                 seed: int | None = None):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.seed = seed
        self.data_config = dict(data_config) if data_config is not None else None
        self.transform = ImageTransform(data_config)
        self.dataset_id = source.dataset_id
        self.description = source.description
        self.class_names = list(source.class_names) if source.class_names is not None else None
        self.num_classes = len(self.class_names) if self.class_names is not None else None
        self.source_size = len(source)
        self.fingerprint = dataset_fingerprint(source.identity(), self.source_size, self.indices)
        self._labels = np.asarray(source.labels(), dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        """The labels of the selected images, in order (int64; ``-1`` when unlabelled). Reads no image."""
        return self._labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = int(self.indices[i])
        raw = self.source.image(index)
        try:
            tensor = self.transform(raw)
        except (OSError, ValueError, TypeError) as exc:
            raise DatasetError(f"cannot convert {self.source.item_name(index)}: {exc}") from None
        return tensor, int(self._labels[index])

    def __repr__(self) -> str:
        return (f"AnalysisDataset({self.dataset_id!r}, {len(self):,} of {self.source_size:,} images, "
                f"fingerprint {self.fingerprint[:12]})")
